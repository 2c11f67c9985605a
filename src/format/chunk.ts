// A stored chunk: a fixed 48-byte header followed by the (compressed) payload.
// The header names the chunk it holds, so a chunk read from the wrong key is caught, not restored.
//
//   off size field
//    0   4   magic "RNCK"
//    4   1   format version (CHUNK_VERSION)
//    5   1   codec id (codecs.ts)
//    6   1   flags (ChunkFlag)
//    7   1   header length (48)
//    8   4   plaintext length, u32 LE
//   12   4   payload length, u32 LE
//   16   8   xxh64 of the plaintext, u64 LE
//   24   8   xxh64 of the payload as stored, u64 LE (lets a receiver check bytes without decoding)
//   32   8   chunk index on the disk grid, u64 LE
//   40   4   sequence number of the point that wrote it, u32 LE
//   44   4   reserved, zero
import { ErrorCodes, RnodeError } from '../errors.js';

export const CHUNK_MAGIC = 0x4b434e52; // "RNCK" read as u32 LE
export const CHUNK_VERSION = 1;
export const CHUNK_HEADER_BYTES = 48;
/** Largest chunk the grid allows; bounds every length read from untrusted bytes. */
export const MAX_CHUNK_BYTES = 16 * 1024 * 1024;
/** LZ4 worst case for MAX_CHUNK_BYTES plus its size prefix. */
export const MAX_PAYLOAD_BYTES = MAX_CHUNK_BYTES + Math.ceil(MAX_CHUNK_BYTES / 255) + 16 + 4;

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

export function encodeChunkHeader(h: Omit<ChunkHeader, 'version'>): Buffer {
  const b = Buffer.alloc(CHUNK_HEADER_BYTES);
  b.writeUInt32LE(CHUNK_MAGIC, 0);
  b.writeUInt8(CHUNK_VERSION, 4);
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
  if (version !== CHUNK_VERSION) {
    throw new RnodeError(ErrorCodes.FORMAT_VERSION, `chunk format version ${version} is not supported (this rnode reads version ${CHUNK_VERSION}); upgrade rnode`);
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
  return h;
}
