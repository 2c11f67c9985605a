// Fetches a chunk named by a table entry and returns its verified plaintext, with errors that name the
// chunk, its disk offset and its object key.
import { ErrorCodes, RnodeError, isRnodeError } from '../errors.js';
import { copyBytes } from '../native/index.js';
import type { ChunkEntry } from '../format/table.js';
import {
  checkStoredChunkInto,
  corruption,
  decodeBlobInto,
  decodeChunkInto,
  storedPayloadDigest,
  type ChunkSeal,
  type ChunkWhere,
  type ReadSlot,
} from './chunk-codec.js';
import type { ByteRange, ObjectStore } from '../store/types.js';
import { Domain } from '../repository/domain.js';
import { damagedIndexes, locateChunk } from '../repository/index-cache.js';
import type { ChunkLocation } from '../repository/index-file.js';
import { layout, r2 } from '../repository/names.js';

/**
 * Fetches and verifies a chunk into slot; returns a view of slot.plain, valid until the slot is reused.
 * seal: the point is encrypted and this is its key (src/repository/encryption.ts decides).
 */
export async function readChunk(
  store: ObjectStore,
  disk: string,
  chunkSize: number,
  e: ChunkEntry,
  point: number,
  slot: ReadSlot,
  seal?: ChunkSeal,
): Promise<Buffer> {
  if (e.id) {
    const domain = Domain.of(seal?.key);
    return fetchBlob(store, domain, chunkSize, e, point, slot, async (where, length, l) => {
      const plain = await decodeBlobInto(slot, length, e, l.entry, domain, where);
      e.storedLength = l.entry.length; // what was fetched, for the callers' byte counts
      return plain;
    });
  }
  return fetchChecked(store, disk, chunkSize, e, point, slot, (where, length) => decodeChunkInto(slot, length, e, where, seal));
}

/** What verify checks of an encrypted chunk without the key: its header and the xxh64 of its stored bytes. */
export async function checkStoredChunk(
  store: ObjectStore,
  disk: string,
  chunkSize: number,
  e: ChunkEntry,
  point: number,
  slot: ReadSlot,
  domain?: Domain,
): Promise<void> {
  if (e.id) {
    await fetchBlob(store, domain ?? Domain.of(undefined), chunkSize, e, point, slot, async (where, length, l) => {
      if (length !== l.entry.length || (await storedPayloadDigest(slot.object.subarray(0, length))) !== l.entry.payloadXxh64) {
        throw corruption(e, where)('stored blob checksum mismatch');
      }
    });
    return;
  }
  await fetchChecked(store, disk, chunkSize, e, point, slot, (where, length) => checkStoredChunkInto(slot, length, e, where));
}

/**
 * Where a chunk's stored bytes are: today one object per chunk, read whole. A format that packs several chunks in
 * one object answers with the pack's key and the chunk's byte range, and every reader (restore, verify, the NBD
 * export) follows through the store's ranged get.
 */
export function chunkObject(disk: string, e: ChunkEntry): { key: string; range?: ByteRange } {
  return { key: layout.chunk(disk, e.writer, e.index) };
}

/**
 * A v2 chunk: its blob is found through the domain's ChunkIndex (pack key and byte range) and read with one ranged
 * get. An id may have several locations (a repack in progress, two writers); a missing pack moves on to the next, and
 * when none is left the index is reloaded once (a repack may have moved the blob since it was loaded).
 */
async function fetchBlob<T>(
  store: ObjectStore,
  domain: Domain,
  chunkSize: number,
  e: ChunkEntry,
  point: number,
  slot: ReadSlot,
  check: (where: ChunkWhere, length: number, l: ChunkLocation) => Promise<T>,
): Promise<T> {
  const offset = e.index * chunkSize;
  const idHex = () => e.id!.toString('hex');
  // A chunk stored more than once (a pack rewritten, two writers) is read from the next copy when one is damaged.
  let corrupt: RnodeError | undefined;
  for (let attempt = 0; attempt < 2 && !corrupt; attempt++) {
    const locations = await locateChunk(store, domain, e.id!, { reload: attempt > 0 });
    for (const l of locations) {
      const key = r2.pack(domain.name, l.packId);
      // Built only for an error message: the hex of every chunk's id cost more main-thread time than its fetch.
      const where = () =>
        `${e.index} (disk offset ${offset}, id ${idHex().slice(0, 16)}…, pack ${key} at ${l.entry.offset}+${l.entry.length}` +
        `${l.indexId ? `, index ${r2.index(domain.name, l.indexId)}` : ''}) of point ${point}`;
      const details = { index: e.index, offset, key, point };
      if (l.entry.length > slot.object.length) {
        throw new RnodeError(
          ErrorCodes.CHUNK_CORRUPT,
          `chunk ${where()} is corrupt: its index entry says ${l.entry.length} bytes, more than a chunk can take; run "rnode check"`,
          { details },
        );
      }
      let object: Buffer;
      try {
        object = await store.get(key, { offset: l.entry.offset, length: l.entry.length }, slot.object);
      } catch (err) {
        if (isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) continue;
        throw err;
      }
      if (object.length > slot.object.length) object = object.subarray(0, slot.object.length);
      if (object.buffer !== slot.object.buffer || object.byteOffset !== slot.object.byteOffset) copyBytes(object, slot.object);
      try {
        return await check(where, object.length, l);
      } catch (err) {
        if (!isRnodeError(err, ErrorCodes.CHUNK_CORRUPT)) throw err;
        // Every point that holds this chunk reads the same copy, and a replicate reuses it rather than store it again:
        // another point helps only where it holds other data here.
        corrupt ??= new RnodeError(
          ErrorCodes.CHUNK_CORRUPT,
          `${err.message}; restore another point, and run "rnode check --read-data --repair", then "rnode replicate --full" of the disk, to store it anew`,
          { details },
        );
      }
    }
  }
  if (corrupt) throw corrupt;
  // Found in no intact index: where an index object was left out as damaged, that is the likely cause.
  const damaged = await damagedIndexes(store, domain);
  if (damaged.length) {
    const first = damaged[0];
    throw new RnodeError(
      first.code,
      `chunk ${e.index} (disk offset ${offset}, id ${idHex().slice(0, 16)}…) of point ${point} is in no intact index of repository ${domain.name}, ` +
        `and ${damaged.length === 1 ? 'one index object is' : `${damaged.length} index objects are`} left out: ${first.message}`,
      { details: { index: e.index, offset, point, ...first.details } },
    );
  }
  throw new RnodeError(
    ErrorCodes.CHUNK_MISSING,
    `chunk ${e.index} (disk offset ${offset}, id ${idHex().slice(0, 16)}…) of point ${point} is in no pack of repository ${domain.name}; restore another point or re-replicate`,
    { details: { index: e.index, offset, point } },
  );
}

/** Fetches a chunk object into slot.object and runs check on it, with errors that name the chunk, offset and key. */
async function fetchChecked<T>(
  store: ObjectStore,
  disk: string,
  chunkSize: number,
  e: ChunkEntry,
  point: number,
  slot: ReadSlot,
  check: (where: string, length: number) => Promise<T>,
): Promise<T> {
  const { key, range } = chunkObject(disk, e);
  const where = `${e.index} (disk offset ${e.index * chunkSize}, object ${key}) of point ${point}`;
  let object: Buffer;
  try {
    object = await store.get(key, range, slot.object);
  } catch (err) {
    if (isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) {
      throw new RnodeError(ErrorCodes.CHUNK_MISSING, `chunk ${where} is missing from the store; restore another point or re-replicate`, {
        details: { index: e.index, offset: e.index * chunkSize, key, point },
      });
    }
    throw err;
  }
  if (object.length > slot.object.length) {
    throw new RnodeError(
      ErrorCodes.CHUNK_CORRUPT,
      `chunk ${where} is corrupt: object is ${object.length} bytes, more than a chunk can take; restore another point or re-replicate`,
      { details: { index: e.index, offset: e.index * chunkSize, key, point } },
    );
  }
  // Backends that read into the slot return a view of it; the others' bytes are copied in.
  if (object.buffer !== slot.object.buffer || object.byteOffset !== slot.object.byteOffset) copyBytes(object, slot.object);
  try {
    return await check(where, object.length);
  } catch (err) {
    if (isRnodeError(err, ErrorCodes.CHUNK_CORRUPT)) {
      throw new RnodeError(ErrorCodes.CHUNK_CORRUPT, `${err.message}; restore another point or re-replicate`, {
        details: { index: e.index, offset: e.index * chunkSize, key, point },
      });
    }
    throw err;
  }
}
