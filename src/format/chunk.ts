// A stored chunk: a fixed 48-byte header followed by the (compressed, and maybe encrypted) payload.
// The header names the chunk it holds, so a chunk read from the wrong key is caught, not restored.
//
//   off size field
//    0   4   magic "RNCK"
//    4   1   format version: 1 plain (CHUNK_VERSION), 2 encrypted (CHUNK_VERSION_ENCRYPTED)
//    5   1   codec id (codecs.ts)
//    6   1   flags (ChunkFlag): 0 in version 1, ENCRYPTED in version 2
//    7   1   header length (48)
//    8   4   plaintext length, u32 LE
//   12   4   payload length, u32 LE
//   16   8   plaintext digest, u64 LE: v1 its xxh64; v2 a keyed digest (see below), never an unkeyed one
//   24   8   xxh64 of the payload as stored, u64 LE (lets a receiver check bytes without decoding or a key)
//   32   8   chunk index on the disk grid, u64 LE
//   40   4   sequence number of the point that wrote it, u32 LE
//   44   4   reserved, zero
//
// Version 2 (encrypted, AES-256-GCM; code in seal.ts, keys in src/crypto/keys.ts):
//   payload = nonce (12 random bytes) || AES-256-GCM(codec payload) || tag (16 bytes)
//   The codec payload is what version 1 stores (compression runs first). The key is the chunk subkey derived
//   from the user's master key. The AAD binds the ciphertext to this object: version, codec, plaintext length,
//   plaintext digest, chunk index, writer point and disk id (all fixed once the object is written; later points
//   refer to it by writer and index and never rewrite it). The plaintext digest is bytes 16-23 of keyed BLAKE3
//   (digest subkey) of the plaintext, and the table's strong digest bytes 0-15 of it: nothing stored or sent is a
//   function of the plaintext alone. Zero chunks are still not stored, so which chunks are zero, the chunk count
//   and the compressed sizes remain visible; contents and their digests do not.
import { ErrorCodes, RnodeError } from '../errors.js';
import { SEAL_OVERHEAD } from './seal.js';

export const CHUNK_MAGIC = 0x4b434e52; // "RNCK" read as u32 LE
export const CHUNK_VERSION = 1;
export const CHUNK_VERSION_ENCRYPTED = 2;
export const CHUNK_HEADER_BYTES = 48;
/** A chunk's strong digest: the 128-bit prefix of BLAKE3, collision-resistant at 2^64 work, enough to confirm identity. */
export const STRONG_DIGEST_BYTES = 16;
/** Largest chunk the grid allows; bounds every length read from untrusted bytes. */
export const MAX_CHUNK_BYTES = 16 * 1024 * 1024;
/** LZ4 worst case for MAX_CHUNK_BYTES plus its size prefix, plus the nonce and tag of an encrypted payload. */
export const MAX_PAYLOAD_BYTES = MAX_CHUNK_BYTES + Math.ceil(MAX_CHUNK_BYTES / 255) + 16 + 4 + SEAL_OVERHEAD;

export const ChunkFlag = {
  ENCRYPTED: 1,
} as const;

export interface ChunkHeader {
  version: number;
  codec: number;
  flags: number;
  plainLength: number;
  payloadLength: number;
  plainXxh64: bigint;
  payloadXxh64: bigint;
  index: number;
  writer: number;
}

/** The version a header with these flags is written as. */
export function chunkVersionFor(flags: number): number {
  return (flags & ChunkFlag.ENCRYPTED) !== 0 ? CHUNK_VERSION_ENCRYPTED : CHUNK_VERSION;
}

export function encodeChunkHeader(h: Omit<ChunkHeader, 'version'>): Buffer {
  const b = Buffer.alloc(CHUNK_HEADER_BYTES);
  b.writeUInt32LE(CHUNK_MAGIC, 0);
  b.writeUInt8(chunkVersionFor(h.flags), 4);
  b.writeUInt8(h.codec, 5);
  b.writeUInt8(h.flags, 6);
  b.writeUInt8(CHUNK_HEADER_BYTES, 7);
  b.writeUInt32LE(h.plainLength, 8);
  b.writeUInt32LE(h.payloadLength, 12);
  b.writeBigUInt64LE(h.plainXxh64, 16);
  b.writeBigUInt64LE(h.payloadXxh64, 24);
  b.writeBigUInt64LE(BigInt(h.index), 32);
  b.writeUInt32LE(h.writer, 40);
  return b;
}

/** Parses and bounds-checks a header from untrusted bytes; never trusts a length it has not checked. */
export function decodeChunkHeader(b: Uint8Array): ChunkHeader {
  const buf = Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  if (buf.length < CHUNK_HEADER_BYTES) {
    throw new RnodeError(ErrorCodes.CHUNK_CORRUPT, `chunk is ${buf.length} bytes, shorter than its ${CHUNK_HEADER_BYTES}-byte header`);
  }
  if (buf.readUInt32LE(0) !== CHUNK_MAGIC) throw new RnodeError(ErrorCodes.CHUNK_CORRUPT, 'chunk header magic is wrong');
  const version = buf.readUInt8(4);
  if (version !== CHUNK_VERSION && version !== CHUNK_VERSION_ENCRYPTED) {
    throw new RnodeError(
      ErrorCodes.FORMAT_VERSION,
      `chunk format version ${version} is not supported (this rnode reads versions ${CHUNK_VERSION} and ${CHUNK_VERSION_ENCRYPTED}); upgrade rnode`,
    );
  }
  if (buf.readUInt8(7) !== CHUNK_HEADER_BYTES) throw new RnodeError(ErrorCodes.CHUNK_CORRUPT, 'chunk header length is wrong');
  const h: ChunkHeader = {
    version,
    codec: buf.readUInt8(5),
    flags: buf.readUInt8(6),
    plainLength: buf.readUInt32LE(8),
    payloadLength: buf.readUInt32LE(12),
    plainXxh64: buf.readBigUInt64LE(16),
    payloadXxh64: buf.readBigUInt64LE(24),
    index: Number(buf.readBigUInt64LE(32)),
    writer: buf.readUInt32LE(40),
  };
  if (h.plainLength === 0 || h.plainLength > MAX_CHUNK_BYTES || h.payloadLength > MAX_PAYLOAD_BYTES) {
    throw new RnodeError(ErrorCodes.CHUNK_CORRUPT, `chunk header lengths out of range (plain ${h.plainLength}, payload ${h.payloadLength})`);
  }
  if (!Number.isSafeInteger(h.index)) throw new RnodeError(ErrorCodes.CHUNK_CORRUPT, 'chunk header index out of range');
  // Bytes 44-47 are reserved and written as zero: anything else is damage (and would let two objects share a header).
  if (buf.readUInt32LE(44) !== 0) throw new RnodeError(ErrorCodes.CHUNK_CORRUPT, 'chunk header reserved bytes are not zero');
  // Version 1 has no flags; version 2 is exactly ENCRYPTED. A flag this rnode does not know is damage, not a feature.
  if (h.flags !== (version === CHUNK_VERSION_ENCRYPTED ? ChunkFlag.ENCRYPTED : 0)) {
    throw new RnodeError(ErrorCodes.CHUNK_CORRUPT, `chunk header flags ${h.flags} do not fit format version ${version}`);
  }
  return h;
}
