// Turns a chunk's plaintext into a stored chunk object and back. Decoding checks everything the table and
// the header promise (index, writer, lengths, both digests), so a wrong or damaged chunk never restores.
// With a ChunkSeal the object is encrypted (chunk format version 2) and its digests are keyed.
import type { ChunkSeal, EncryptionKey } from '../crypto/keys.js';
import { ErrorCodes, RnodeError } from '../errors.js';
import { CHUNK_HEADER_BYTES, CHUNK_VERSION_ENCRYPTED, ChunkFlag, decodeChunkHeader, encodeChunkHeader, type ChunkHeader } from '../format/chunk.js';
import { Codec, type CodecId, isKnownCodec } from '../format/codecs.js';
import { SEAL_OVERHEAD } from '../format/seal.js';
import type { ChunkEntry } from '../format/table.js';
import type { Domain } from '../repository/domain.js';
import type { BlobEntry } from '../repository/pack.js';
import { codecWorkers, maxObjectBytes, type EncodeResult, type SealedFields } from './codec-workers.js';
import { recycleShared, takeShared } from './shared-slots.js';

/** How a disk's chunks are encrypted: the key, and the disk id the objects are bound to (part of the AAD). */
export type { ChunkSeal } from '../crypto/keys.js';

/**
 * Runs fn while the codec workers hold key's subkeys: they are sent once (and to any replacement worker), chunks
 * then name the key by id, and the workers drop the subkeys when the last user is done.
 */
export async function withWorkerKey<T>(key: EncryptionKey | undefined, fn: () => Promise<T>): Promise<T> {
  if (!key) return fn();
  const workers = codecWorkers();
  const id = `key:${key.keyId}`;
  workers.retainSetup(id, { op: 'seal:key', key: key.keyId, ...key.subkeys() });
  try {
    return await fn();
  } finally {
    workers.releaseSetup(id, { op: 'seal:forget', key: key.keyId });
  }
}

/** The 'seal:*' fields naming the key and the AAD of chunk (writer, index) of a disk (header fields come from the worker). */
function sealedFields(seal: ChunkSeal, index: number, writer: number, h?: ChunkHeader): SealedFields {
  return {
    key: seal.key.keyId,
    disk: seal.disk,
    version: CHUNK_VERSION_ENCRYPTED,
    index,
    writer,
    ...(h ? { plainDigest64: h.plainXxh64, payloadXxh64: h.payloadXxh64 } : {}),
  };
}

/** Worker milliseconds one encode spent hashing, compressing and sealing (see StageClock). */
export type EncodeCost = Pick<EncodeResult, 'hashMs' | 'packMs' | 'sealMs'>;

/**
 * Digests and encodes a chunk on the codec workers. plain and out are SharedArrayBuffer views; the object is
 * built in out (header, then payload) and returned as a view of it, valid until out is reused. plain is not
 * touched once this resolves. onCost hears what the worker spent, unchanged chunks included.
 */
export async function encodeChunkInto(
  plain: Buffer,
  out: Buffer,
  index: number,
  writer: number,
  codec: CodecId,
  unchangedIf?: { xxh64: bigint; strong: Buffer },
  seal?: ChunkSeal,
  onCost?: (c: EncodeCost) => void,
): Promise<{ object: Buffer; entry: ChunkEntry } | undefined> {
  const r = await codecWorkers().encode(plain, out, codec, unchangedIf, seal && sealedFields(seal, index, writer));
  onCost?.(r);
  if (r.unchanged) return undefined; // same xxh64 and BLAKE3 (keyed, when sealed) as unchangedIf: nothing to store
  encodeChunkHeader({
    codec: r.codec,
    flags: seal ? ChunkFlag.ENCRYPTED : 0,
    plainLength: plain.length,
    payloadLength: r.payloadLength,
    plainXxh64: r.xxh64,
    payloadXxh64: r.payloadXxh64,
    index,
    writer,
  }).copy(out, 0);
  const object = out.subarray(0, CHUNK_HEADER_BYTES + r.payloadLength);
  return {
    object,
    entry: { index, xxh64: r.xxh64, strong: r.strong, writer, plainLength: plain.length, storedLength: object.length, flags: 0, codec: r.codec },
  };
}

/** Buffers a verified read works in: the stored object and the decoded plaintext (both shared with workers). */
export interface ReadSlot {
  object: Buffer;
  plain: Buffer;
}

export function newReadSlot(chunkSize: number): ReadSlot {
  return { object: takeShared(maxObjectBytes(chunkSize)), plain: takeShared(chunkSize) };
}

/** Returns a slot's buffers for later runs (see shared-slots.ts); the slot must not be used afterwards. */
export function recycleReadSlot(slot: ReadSlot): void {
  recycleShared(slot.object);
  recycleShared(slot.plain);
}

/**
 * Checks a stored object (already copied into slot.object[0..length)) against its table entry and decodes it
 * on the codec workers; returns a view of slot.plain holding the verified plaintext. seal says how the point
 * is encrypted (undefined: it is not); an object that disagrees is corrupt, whatever its own header claims.
 */
export function decodeChunkInto(slot: ReadSlot, length: number, expect: ChunkEntry, where: string, seal?: ChunkSeal): Promise<Buffer> {
  return decodeChecked(slot, length, expect, where, seal, expect.strong);
}

/**
 * What a receiving node checks of a plain chunk object it is given (slot.object[0..length)): the same as
 * decodeChunkInto, against the chunk its key names and the plaintext digest its writer labelled it with. Only the
 * BLAKE3 digest is left out: it lives in the point's table, which the node does not have when the chunk arrives.
 */
export function checkArrivingChunkInto(
  slot: ReadSlot,
  length: number,
  expect: Pick<ChunkEntry, 'index' | 'writer' | 'plainLength' | 'xxh64'>,
  where: string,
): Promise<Buffer> {
  return decodeChecked(slot, length, expect, where, undefined, undefined);
}

async function decodeChecked(
  slot: ReadSlot,
  length: number,
  expect: Pick<ChunkEntry, 'index' | 'writer' | 'plainLength' | 'xxh64'>,
  where: string,
  seal: ChunkSeal | undefined,
  strong: Buffer | undefined,
): Promise<Buffer> {
  const fail = corruption(expect, where);
  const object = slot.object.subarray(0, length);
  const h = checkHeader(object, expect, where, slot.plain.length, seal !== undefined);
  if (!isKnownCodec(h.codec)) {
    throw new RnodeError(
      ErrorCodes.FORMAT_CODEC,
      `unknown codec id ${h.codec} in chunk ${where}; it was written by a newer rnode, upgrade to read it`,
    );
  }
  let r;
  try {
    r = await codecWorkers().decode(
      object.subarray(CHUNK_HEADER_BYTES),
      h.codec,
      h.plainLength,
      slot.plain,
      seal && sealedFields(seal, h.index, h.writer, h),
    );
  } catch (err) {
    throw fail((err as Error).message);
  }
  if (r.payloadXxh64 !== h.payloadXxh64) throw fail('payload checksum mismatch');
  const kind = seal ? 'keyed ' : '';
  if (r.xxh64 !== expect.xxh64 || h.plainXxh64 !== expect.xxh64) throw fail(`plaintext ${kind}64-bit digest mismatch`);
  if (strong && !r.strong.equals(strong)) throw fail(`plaintext ${kind}BLAKE3 mismatch`);
  return slot.plain.subarray(0, h.plainLength);
}

/**
 * What can be checked of an encrypted object without its key: the header against the table entry, and the
 * payload's xxh64 as stored (on a worker). Neither decrypts nor proves the plaintext; the key does that.
 */
export async function checkStoredChunkInto(
  slot: ReadSlot,
  length: number,
  expect: Pick<ChunkEntry, 'index' | 'writer' | 'plainLength'>,
  where: string,
): Promise<void> {
  const object = slot.object.subarray(0, length);
  const h = checkHeader(object, expect, where, slot.plain.length, true);
  if ((await storedPayloadDigest(object.subarray(CHUNK_HEADER_BYTES))) !== h.payloadXxh64)
    throw corruption(expect, where)('payload checksum mismatch');
}

/** xxh64 of a stored payload (a SharedArrayBuffer view), computed on a codec worker. */
export function storedPayloadDigest(payload: Uint8Array): Promise<bigint> {
  return codecWorkers().storedDigest(payload);
}

/** Where a chunk is, for an error message: a string, or a function that builds it only when an error needs it. */
export type ChunkWhere = string | (() => string);

export function corruption(expect: Pick<ChunkEntry, 'index' | 'writer'>, where: ChunkWhere): (why: string) => RnodeError {
  return (why) =>
    new RnodeError(ErrorCodes.CHUNK_CORRUPT, `chunk ${typeof where === 'string' ? where : where()} is corrupt: ${why}`, {
      details: { index: expect.index, writer: expect.writer },
    });
}

/**
 * The header checks every decode path shares (recover, verify, export, and a receiving node): it must name this
 * chunk, agree on every length, and be encrypted exactly when its point is. Exported for the tests' main-thread
 * decoder (test/helpers/chunks.ts).
 */
export function checkHeader(
  object: Buffer,
  expect: Pick<ChunkEntry, 'index' | 'writer' | 'plainLength'>,
  where: string,
  maxPlain: number,
  encrypted: boolean,
): ChunkHeader {
  const fail = corruption(expect, where);
  let h: ChunkHeader;
  try {
    h = decodeChunkHeader(object);
  } catch (err) {
    if (err instanceof RnodeError && err.code === ErrorCodes.FORMAT_VERSION) throw err;
    throw fail((err as Error).message);
  }
  if (h.index !== expect.index || h.writer !== expect.writer) throw fail(`it holds chunk ${h.index} of point ${h.writer}`);
  if (h.plainLength !== expect.plainLength || h.plainLength > maxPlain)
    throw fail(`plaintext length ${h.plainLength}, expected ${expect.plainLength}`);
  if (object.length !== CHUNK_HEADER_BYTES + h.payloadLength)
    throw fail(`object is ${object.length} bytes, header says ${CHUNK_HEADER_BYTES + h.payloadLength}`);
  if (h.codec === Codec.NONE && h.payloadLength !== h.plainLength + (encrypted ? SEAL_OVERHEAD : 0))
    throw fail('uncompressed payload length differs from the plaintext length');
  if (((h.flags & ChunkFlag.ENCRYPTED) !== 0) !== encrypted) {
    throw fail(
      encrypted
        ? 'it is not encrypted but its point is (an unencrypted object in an encrypted disk is never trusted)'
        : 'it is encrypted but its point is not',
    );
  }
  return h;
}

// ---- Repository v2 blobs (src/repository/pack.ts) ----

/**
 * Runs fn while the codec workers hold the domain's chunk-id key: the plain domain's is public and always there; an
 * encrypted domain's travels with its cipher subkeys (withWorkerKey) and is dropped with them.
 */
export function withWorkerDomain<T>(domain: Domain, fn: () => Promise<T>): Promise<T> {
  return withWorkerKey(domain.key, fn);
}

/**
 * Decodes a blob (in slot.object[0..length)) located for table entry `expect` and checks it is that chunk: the id of
 * what it decodes to must be expect.id (32 bytes; an encrypted blob's AAD binds the id too). Returns a view of
 * slot.plain. Nothing shorter than the full id ever decides identity.
 */
export async function decodeBlobInto(
  slot: ReadSlot,
  length: number,
  expect: ChunkEntry,
  blob: BlobEntry,
  domain: Domain,
  where: ChunkWhere,
): Promise<Buffer> {
  const fail = corruption(expect, where);
  if (!expect.id || !blob.id.equals(expect.id)) throw fail('its index entry names another chunk id');
  if (blob.plainLength !== expect.plainLength || blob.plainLength > slot.plain.length)
    throw fail(`plaintext length ${blob.plainLength}, expected ${expect.plainLength}`);
  if (length !== blob.length) throw fail(`blob is ${length} bytes, its index entry says ${blob.length} (a truncated pack?)`);
  if (!isKnownCodec(blob.codec)) {
    throw new RnodeError(
      ErrorCodes.FORMAT_CODEC,
      `unknown codec id ${blob.codec} in chunk ${where}; it was written by a newer rnode, upgrade to read it`,
    );
  }
  let r;
  try {
    r = await codecWorkers().decodeBlob(slot.object.subarray(0, length), slot.plain, {
      codec: blob.codec,
      plainLength: blob.plainLength,
      chunkId: expect.id,
      idName: domain.name,
      keyId: domain.key?.keyId,
      payloadXxh64: blob.payloadXxh64,
    });
  } catch (err) {
    throw fail((err as Error).message);
  }
  if (!r.id.equals(expect.id)) throw fail('its plaintext is not the chunk its id names (chunk id mismatch)');
  return slot.plain.subarray(0, blob.plainLength);
}
