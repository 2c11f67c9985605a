// The encrypted payload of a chunk (chunk format version 2, layout in chunk.ts) and of a repository v2 blob:
// nonce || AES-256-GCM ciphertext || tag, bound to the one chunk or blob it was written as by the AAD. The codec
// worker threads (src/pipeline/codec-ops.ts) seal and open with these; `rnode check` opens on the main thread.
import crypto from 'node:crypto';

export const NONCE_BYTES = 12;
export const TAG_BYTES = 16;
/** Bytes an encrypted payload has beyond the packed (compressed) one: the nonce in front, the tag behind. */
export const SEAL_OVERHEAD = NONCE_BYTES + TAG_BYTES;
const ALG = 'aes-256-gcm';
const AAD_MAGIC = Buffer.from('RNCK-AAD', 'latin1');

export interface ChunkAadFields {
  disk: string;
  version: number;
  codec: number;
  plainLength: number;
  plainDigest64: bigint;
  index: number;
  writer: number;
}

/**
 * The associated data of a chunk: every header field fixed when the object is written (the chunk index and
 * writer point are the object's identity, which later points keep referring to unchanged), plus the disk id.
 * The payload length is authenticated by GCM itself; the payload xxh64 is computed over the ciphertext, so it
 * cannot be part of it.
 *
 *   "RNCK-AAD" | u8 version | u8 codec | u32 plain length | u64 keyed plaintext digest | u64 index | u32 writer |
 *   u8 disk id length | disk id (UTF-8)
 */
export function chunkAad(f: ChunkAadFields): Buffer {
  const disk = Buffer.from(f.disk, 'utf8');
  if (disk.length === 0 || disk.length > 255) throw new Error(`disk id of ${disk.length} bytes cannot be bound to a chunk`);
  const b = Buffer.alloc(AAD_MAGIC.length + 1 + 1 + 4 + 8 + 8 + 4 + 1 + disk.length);
  let o = AAD_MAGIC.copy(b, 0);
  o = b.writeUInt8(f.version, o);
  o = b.writeUInt8(f.codec, o);
  o = b.writeUInt32LE(f.plainLength, o);
  o = b.writeBigUInt64LE(f.plainDigest64, o);
  o = b.writeBigUInt64LE(BigInt(f.index), o);
  o = b.writeUInt32LE(f.writer, o);
  o = b.writeUInt8(disk.length, o);
  disk.copy(b, o);
  return b;
}

const BLOB_AAD_MAGIC = Buffer.from('rnode blob v2', 'latin1');
const CHUNK_ID_BYTES = 32;

/**
 * The associated data of a v2 blob (a chunk's stored bytes inside a pack): its chunk id, codec and plaintext length.
 * Nothing about where the blob sits (pack, offset, disk, point) is bound: the same blob serves every point of every
 * disk of its domain, and a repack copies it byte for byte. The id is a keyed hash of the plaintext, checked again
 * after decoding, so a blob can only ever be read as the chunk it is.
 *
 *   "rnode blob v2" | id (32) | u8 codec | u32 LE plain length
 */
export function blobAad(id: Uint8Array, codec: number, plainLength: number): Buffer {
  if (id.length !== CHUNK_ID_BYTES) throw new Error(`a chunk id is ${CHUNK_ID_BYTES} bytes, not ${id.length}`);
  const b = Buffer.alloc(BLOB_AAD_MAGIC.length + CHUNK_ID_BYTES + 1 + 4);
  let o = BLOB_AAD_MAGIC.copy(b, 0);
  o += Buffer.from(id.buffer, id.byteOffset, id.byteLength).copy(b, o);
  o = b.writeUInt8(codec, o);
  b.writeUInt32LE(plainLength, o);
  return b;
}

/** Encrypts out[offset+NONCE, +packedLength) in place, writes the nonce before it and the tag after; returns the payload length. */
export function sealInPlace(cipherKey: Buffer, out: Buffer, offset: number, packedLength: number, aad: Buffer): number {
  // A random 96-bit nonce per chunk: safe for 2^32 chunks under one key (4 PiB of 1 MiB chunks).
  const nonce = crypto.randomBytes(NONCE_BYTES);
  nonce.copy(out, offset);
  const c = crypto.createCipheriv(ALG, cipherKey, nonce, { authTagLength: TAG_BYTES });
  c.setAAD(aad);
  const body = offset + NONCE_BYTES;
  const ct = c.update(out.subarray(body, body + packedLength));
  const rest = c.final();
  if (ct.length + rest.length !== packedLength) throw new Error('AES-GCM changed the payload length');
  ct.copy(out, body);
  rest.copy(out, body + ct.length);
  c.getAuthTag().copy(out, body + packedLength);
  return packedLength + SEAL_OVERHEAD;
}

/** Checks and decrypts nonce || ciphertext || tag; returns the packed (compressed) payload. */
export function openSealed(cipherKey: Buffer, payload: Buffer, aad: Buffer): Buffer {
  if (payload.length < SEAL_OVERHEAD) throw new Error('encrypted payload is shorter than its nonce and tag');
  const d = crypto.createDecipheriv(ALG, cipherKey, payload.subarray(0, NONCE_BYTES), { authTagLength: TAG_BYTES });
  d.setAAD(aad);
  d.setAuthTag(payload.subarray(payload.length - TAG_BYTES));
  const packed = d.update(payload.subarray(NONCE_BYTES, payload.length - TAG_BYTES));
  try {
    d.final();
  } catch {
    throw new Error(
      'ciphertext does not authenticate (AES-GCM tag mismatch): its bytes were altered, it belongs to another chunk or disk, or the key is not the one it was written with',
    );
  }
  return packed;
}
