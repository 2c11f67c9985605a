// Packs: many chunks' stored bytes (blobs) in one object, so a point costs about one PUT per pack size, not one per
// chunk. A pack is written once (one put) and never changed:
//
//   blob | blob | ... | trailer envelope (PACK_TRAILER, context = domain + pack id) | u32 LE trailer length | "RNPK"
//
// Trailer body: u32 LE count | count entries of 64 bytes (BlobEntry), in blob order:
//   id(32) | u32 offset | u32 length | u32 plainLength | u8 codec | u8 flags | u16 reserved | u64 payloadXxh64 | u64 reserved
// A blob has no header: `plain` domain, the codec payload; encrypted, nonce | AES-256-GCM(codec payload) | tag with
// AAD blobAad(id, codec, plainLength) (src/format/seal.ts). payloadXxh64 is the xxh64 of the blob as stored, so a node
// without the key can still check stored bytes against an (unsealed) entry.
import crypto from 'node:crypto';
import { CHUNK_ID_BYTES, type EncryptionKey } from '../crypto/keys.js';
import { ErrorCodes, RnodeError } from '../errors.js';
import { xxh64 } from '../format/checksum.js';
import { isKnownCodec } from '../format/codecs.js';
import { MAX_CHUNK_BYTES, MAX_PAYLOAD_BYTES } from '../format/chunk.js';
import { allocAlignedUnsafe, copyBytes, FILE_DIRECT_ALIGNMENT } from '../native/index.js';
import type { ObjectStore } from '../store/types.js';
import { ENVELOPE_MAX_OVERHEAD_BYTES, EnvelopeKind, envelopeContext, openEnvelope, sealEnvelope } from './envelope.js';
import { OBJECT_ID_BYTES, r2, type ObjectId } from './names.js';

export const PACK_MAGIC = Buffer.from('RNPK', 'latin1');
/** The fixed tail of a pack: u32 trailer length and the magic. */
export const PACK_TAIL_BYTES = 8;
export const BLOB_ENTRY_BYTES = 64;
/** A trailer larger than this is damage (a 256 MiB pack of 4 KiB chunks has 64 Ki entries: ~4 MiB). */
export const MAX_TRAILER_BYTES = 64 * 1024 * 1024;

export const BlobFlag = {
  /** The blob is sealed (encrypted domain). */
  SEALED: 1,
} as const;

/** Where one chunk's blob sits in its pack, and what it is. */
export interface BlobEntry {
  /** 32-byte chunk id: keyed BLAKE3-256 of the plaintext; the only thing identity is decided by. */
  id: Buffer;
  offset: number;
  length: number;
  plainLength: number;
  codec: number;
  flags: number;
  /** xxh64 of the blob as stored: a damage check, never identity. */
  payloadXxh64: bigint;
}

/** A fresh random 128-bit object id (packs and indexes): writers on many nodes never collide. */
export function newObjectId(): ObjectId {
  return crypto.randomBytes(OBJECT_ID_BYTES).toString('hex');
}

export function writeBlobEntry(e: BlobEntry, b: Buffer, o: number): void {
  if (e.id.length !== CHUNK_ID_BYTES) throw new RnodeError(ErrorCodes.INTERNAL, `a chunk id is ${CHUNK_ID_BYTES} bytes, not ${e.id.length}`);
  e.id.copy(b, o);
  b.writeUInt32LE(e.offset, o + 32);
  b.writeUInt32LE(e.length, o + 36);
  b.writeUInt32LE(e.plainLength, o + 40);
  b.writeUInt8(e.codec, o + 44);
  b.writeUInt8(e.flags, o + 45);
  b.writeUInt16LE(0, o + 46);
  b.writeBigUInt64LE(e.payloadXxh64, o + 48);
  b.writeBigUInt64LE(0n, o + 56);
}

/** Reads and checks one entry (fields in range, reserved zero); `bad` builds the error for what is wrong. */
export function readBlobEntry(b: Buffer, o: number, bad: (why: string) => Error): BlobEntry {
  checkBlobEntry(b, o, bad);
  return blobEntryAt(b, o);
}

/** One entry as it is, for bytes checkBlobEntry has passed. */
export function blobEntryAt(b: Buffer, o: number): BlobEntry {
  return {
    id: Buffer.from(b.subarray(o, o + 32)),
    offset: b.readUInt32LE(o + 32),
    length: b.readUInt32LE(o + 36),
    plainLength: b.readUInt32LE(o + 40),
    codec: b[o + 44],
    flags: b[o + 45],
    payloadXxh64: b.readBigUInt64LE(o + 48),
  };
}

/** Checks one entry in place (what readBlobEntry checks, without building it); returns its flags. */
export function checkBlobEntry(b: Buffer, o: number, bad: (why: string) => Error): number {
  const length = b.readUInt32LE(o + 36);
  const plainLength = b.readUInt32LE(o + 40);
  const codec = b[o + 44];
  const flags = b[o + 45];
  if (b.readUInt16LE(o + 46) !== 0 || b.readBigUInt64LE(o + 56) !== 0n) throw bad('reserved bytes are set');
  if (plainLength === 0 || plainLength > MAX_CHUNK_BYTES || length === 0 || length > MAX_PAYLOAD_BYTES) throw bad('lengths out of range');
  if (!isKnownCodec(codec)) throw bad(`unknown codec ${codec}`);
  if ((flags & ~BlobFlag.SEALED) !== 0) throw bad(`unknown flags ${flags}`);
  return flags;
}

export function encodeTrailerBody(entries: readonly BlobEntry[]): Buffer {
  const b = Buffer.alloc(4 + entries.length * BLOB_ENTRY_BYTES);
  b.writeUInt32LE(entries.length, 0);
  entries.forEach((e, i) => writeBlobEntry(e, b, 4 + i * BLOB_ENTRY_BYTES));
  return b;
}

/**
 * Decodes a trailer body; blobLimit is where the blobs end (the trailer's start): every blob must lie before it,
 * in order, without overlap. Sealed flags must match the domain (sealed exactly when encrypted).
 */
export function decodeTrailerBody(body: Buffer, blobLimit: number, sealed: boolean, what: string): BlobEntry[] {
  const bad = (why: string) =>
    new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `pack ${what} trailer is corrupt (${why}); run "rnode check"`, { details: { key: what } });
  if (body.length < 4) throw bad('truncated');
  const count = body.readUInt32LE(0);
  if (body.length !== 4 + count * BLOB_ENTRY_BYTES) throw bad('length does not match its entry count');
  const out: BlobEntry[] = new Array(count);
  let end = 0;
  for (let i = 0; i < count; i++) {
    const e = readBlobEntry(body, 4 + i * BLOB_ENTRY_BYTES, (why) => bad(`entry ${i}: ${why}`));
    if (e.offset < end || e.offset + e.length > blobLimit) throw bad(`entry ${i} lies outside the blob area or overlaps another`);
    if (((e.flags & BlobFlag.SEALED) !== 0) !== sealed) throw bad(`entry ${i} is ${sealed ? 'not ' : ''}sealed`);
    end = e.offset + e.length;
    out[i] = e;
  }
  return out;
}

/**
 * Assembles one pack in memory: blobs are copied in as they come (callers reuse their buffers at once), the trailer
 * is added by finish(). Memory: one buffer of the target size, grown only for a single blob bigger than it.
 */
export class PackBuilder {
  readonly id: ObjectId;
  readonly entries: BlobEntry[] = [];
  #buf: Buffer;
  #used = 0;

  constructor(
    readonly domain: string,
    readonly target: number,
    readonly key?: EncryptionKey,
    id = newObjectId(),
    buffer?: Buffer,
  ) {
    this.id = id;
    // Room for the trailer too, so finish() writes it in place instead of copying the pack once more. Page-aligned, so
    // the fs store writes the pack with O_DIRECT: from malloc a buffer started 16 bytes past a page, and every pack
    // went through the page cache (that copy was 31% of the CPU samples of a full replicate).
    this.#buf = buffer && buffer.length >= target ? buffer : allocAlignedUnsafe(packBufferBytes(target), FILE_DIRECT_ALIGNMENT);
  }

  /** The buffer the pack is built in (to be reused for a later pack once this one is stored). */
  get buffer(): Buffer {
    return this.#buf;
  }

  get size(): number {
    return this.#used;
  }
  get count(): number {
    return this.entries.length;
  }

  /**
   * True when adding `length` more bytes would take the pack past its target, or the finished pack object past
   * `maxObject` (a store's object limit: many small blobs make a large trailer). An empty pack takes anything.
   */
  wouldOverflow(length: number, maxObject = Infinity): boolean {
    return this.#used > 0 && (this.#used + length > this.target || this.objectBytesWith(length) > maxObject);
  }

  /** The size of the finished pack object (at most) if a blob of `length` bytes were added now. */
  objectBytesWith(length: number): number {
    return this.#used + length + ENVELOPE_MAX_OVERHEAD_BYTES + 4 + (this.entries.length + 1) * BLOB_ENTRY_BYTES + PACK_TAIL_BYTES;
  }

  /** Appends a blob; returns its entry. */
  add(blob: Uint8Array, meta: { id: Buffer; plainLength: number; codec: number; payloadXxh64?: bigint }): BlobEntry {
    if (this.#used + blob.length > this.#buf.length) this.#grow(packBufferBytes(this.#used + blob.length)); // with room for the trailer
    // Blobs come from the codec workers' shared memory, which Buffer.copy walks word by word (~0.4 GB/s here).
    copyBytes(blob, this.#buf.subarray(this.#used));
    const e: BlobEntry = {
      id: Buffer.from(meta.id),
      offset: this.#used,
      length: blob.length,
      plainLength: meta.plainLength,
      codec: meta.codec,
      flags: this.key ? BlobFlag.SEALED : 0,
      payloadXxh64: meta.payloadXxh64 ?? xxh64(blob),
    };
    this.entries.push(e);
    this.#used += blob.length;
    return e;
  }

  /** The whole pack object. The builder's buffer backs it: do not add after finish. */
  finish(): Buffer {
    const trailer = sealEnvelope(EnvelopeKind.PACK_TRAILER, envelopeContext.pack(this.domain, this.id), encodeTrailerBody(this.entries), this.key);
    const tail = Buffer.alloc(PACK_TAIL_BYTES);
    tail.writeUInt32LE(trailer.length, 0);
    PACK_MAGIC.copy(tail, 4);
    const end = this.#used + trailer.length + PACK_TAIL_BYTES;
    if (end > this.#buf.length) this.#grow(end); // a trailer of many small blobs past the room left for it
    trailer.copy(this.#buf, this.#used);
    tail.copy(this.#buf, this.#used + trailer.length);
    return this.#buf.subarray(0, end);
  }

  /** Moves the pack so far into a larger buffer, page-aligned like the first (O_DIRECT). */
  #grow(bytes: number): void {
    const bigger = allocAlignedUnsafe(bytes, FILE_DIRECT_ALIGNMENT);
    copyBytes(this.#buf.subarray(0, this.#used), bigger);
    this.#buf = bigger;
  }
}

/** Bytes of a pack buffer for a target size: the target, a blob past it, and a trailer (64 bytes per entry). */
export function packBufferBytes(target: number): number {
  return target + Math.ceil(target / 1024) + 64 * 1024;
}

/**
 * The pack size to write to `store`: `wanted`, or less when the store takes smaller objects (a ws node's limit): the
 * largest multiple of 64 KiB, at least `min`, whose pack buffer fits its limit.
 */
export function packSizeFor(store: ObjectStore, wanted: number, min: number): number {
  const limit = store.maxPutBytes;
  if (limit === undefined) return wanted;
  const step = 64 * 1024;
  const fits = Math.floor(((limit - 64 * 1024) * 1024) / 1025 / step) * step;
  return Math.min(wanted, Math.max(min, fits));
}

/** The trailer's place in a pack of packSize bytes, from its last PACK_TAIL_BYTES. */
export function trailerPlace(tail: Buffer, packSize: number, what: string): { start: number; length: number } {
  const bad = (why: string) =>
    new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `pack ${what} is corrupt (${why}); it was truncated or damaged; run "rnode check"`, {
      details: { key: what },
    });
  if (packSize < PACK_TAIL_BYTES || tail.length !== PACK_TAIL_BYTES || !tail.subarray(4).equals(PACK_MAGIC)) throw bad('no pack magic at its end');
  const length = tail.readUInt32LE(0);
  if (length > MAX_TRAILER_BYTES || length > packSize - PACK_TAIL_BYTES) throw bad('trailer length out of range');
  return { start: packSize - PACK_TAIL_BYTES - length, length };
}

/** Decodes a whole pack object's trailer (the blobs are not checked). */
export function decodePack(pack: Buffer, domain: string, packId: ObjectId, key?: EncryptionKey): BlobEntry[] {
  const what = r2.pack(domain, packId);
  const { start, length } = trailerPlace(pack.subarray(pack.length - PACK_TAIL_BYTES), pack.length, what);
  const body = openEnvelope(pack.subarray(start, start + length), EnvelopeKind.PACK_TRAILER, envelopeContext.pack(domain, packId), what, key);
  return decodeTrailerBody(body, start, key !== undefined, what);
}

/** Reads a stored pack's trailer with two ranged gets (tail, then trailer): what check, prune and repack need. */
export async function readPackTrailer(
  store: ObjectStore,
  domain: string,
  packId: ObjectId,
  key?: EncryptionKey,
): Promise<{ entries: BlobEntry[]; size: number }> {
  const what = r2.pack(domain, packId);
  const { size } = await store.head(what);
  if (size < PACK_TAIL_BYTES) trailerPlace(Buffer.alloc(0), size, what);
  const tail = await store.get(what, { offset: size - PACK_TAIL_BYTES, length: PACK_TAIL_BYTES });
  const { start, length } = trailerPlace(Buffer.from(tail), size, what);
  const t = await store.get(what, { offset: start, length });
  if (t.length !== length) trailerPlace(Buffer.alloc(0), size, what);
  const body = openEnvelope(Buffer.from(t), EnvelopeKind.PACK_TRAILER, envelopeContext.pack(domain, packId), what, key);
  return { entries: decodeTrailerBody(body, start, key !== undefined, what), size };
}
