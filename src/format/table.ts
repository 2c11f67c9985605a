// A point's chunk table: fixed 64-byte records sorted by chunk index, stored in segments of at most
// TABLE_SEGMENT_RECORDS records so that writing, merging and restoring never hold a whole disk's table.
//
// Record (little-endian):
//    0   8   chunk index
//    8   8   xxh64 of the plaintext
//   16  16   BLAKE3-128 of the plaintext (zeros when the chunk is a zero chunk)
//   32   4   writer: sequence number of the point whose chunk object holds the data (0 for a zero chunk)
//   36   4   plaintext length
//   40   4   stored object length (header + payload; 0 for a zero chunk)
//   44   1   flags (TableFlag)
//   45   1   codec id
//   46  18   reserved, zero
//
// Segment object: magic "RNTB", u8 version, 3 reserved, u32 record count, records, then xxh64 of all
// preceding bytes (u64 LE), so a torn or bit-flipped segment is detected before it is used.
import { ErrorCodes, RnodeError } from '../errors.js';
import { STRONG_DIGEST_BYTES, xxh64 } from './checksum.js';

export const TABLE_RECORD_BYTES = 64;
export const TABLE_SEGMENT_RECORDS = 4096;
const SEGMENT_MAGIC = 0x42544e52; // "RNTB"
const SEGMENT_VERSION = 1;
const SEGMENT_HEADER_BYTES = 12;

export const TableFlag = {
  ZERO: 1,
} as const;

export interface ChunkEntry {
  index: number;
  xxh64: bigint;
  strong: Buffer;
  writer: number;
  plainLength: number;
  storedLength: number;
  flags: number;
  codec: number;
}

export function isZeroEntry(e: ChunkEntry): boolean {
  return (e.flags & TableFlag.ZERO) !== 0;
}

export function encodeSegment(entries: readonly ChunkEntry[]): Buffer {
  const b = Buffer.alloc(SEGMENT_HEADER_BYTES + entries.length * TABLE_RECORD_BYTES + 8);
  b.writeUInt32LE(SEGMENT_MAGIC, 0);
  b.writeUInt8(SEGMENT_VERSION, 4);
  b.writeUInt32LE(entries.length, 8);
  let o = SEGMENT_HEADER_BYTES;
  for (const e of entries) {
    b.writeBigUInt64LE(BigInt(e.index), o);
    b.writeBigUInt64LE(e.xxh64, o + 8);
    e.strong.copy(b, o + 16, 0, STRONG_DIGEST_BYTES);
    b.writeUInt32LE(e.writer, o + 32);
    b.writeUInt32LE(e.plainLength, o + 36);
    b.writeUInt32LE(e.storedLength, o + 40);
    b.writeUInt8(e.flags, o + 44);
    b.writeUInt8(e.codec, o + 45);
    o += TABLE_RECORD_BYTES;
  }
  b.writeBigUInt64LE(xxh64(b.subarray(0, o)), o);
  return b;
}

export function decodeSegment(b: Buffer, what: string): ChunkEntry[] {
  const bad = (why: string) => new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `chunk table ${what} is corrupt (${why}); run "rnode verify" and restore from another point`);
  if (b.length < SEGMENT_HEADER_BYTES + 8 || b.readUInt32LE(0) !== SEGMENT_MAGIC) throw bad('bad header');
  if (b.readUInt8(4) !== SEGMENT_VERSION) {
    throw new RnodeError(ErrorCodes.FORMAT_VERSION, `chunk table ${what} has format version ${b.readUInt8(4)}; upgrade rnode to read it`);
  }
  // Reserved bytes (header 5-7, record 46-63) are written as zero; set ones are damage the checksum did not catch.
  if (b.readUIntLE(5, 3) !== 0) throw bad('reserved header bytes are not zero');
  const count = b.readUInt32LE(8);
  const end = SEGMENT_HEADER_BYTES + count * TABLE_RECORD_BYTES;
  if (b.length !== end + 8) throw bad('length does not match its record count');
  if (b.readBigUInt64LE(end) !== xxh64(b.subarray(0, end))) throw bad('checksum mismatch');
  const out: ChunkEntry[] = new Array(count);
  let prev = -1;
  for (let i = 0, o = SEGMENT_HEADER_BYTES; i < count; i++, o += TABLE_RECORD_BYTES) {
    const index = Number(b.readBigUInt64LE(o));
    // Above 2^53 a Number rounds: two records could name one chunk, or a chunk the table never held.
    if (!Number.isSafeInteger(index)) throw bad(`record ${i} has an index out of range`);
    if (!(index > prev)) throw bad('records out of order');
    if (b.subarray(o + 46, o + TABLE_RECORD_BYTES).some((x) => x !== 0)) throw bad(`record ${i} has reserved bytes set`);
    prev = index;
    out[i] = {
      index,
      xxh64: b.readBigUInt64LE(o + 8),
      strong: Buffer.from(b.subarray(o + 16, o + 16 + STRONG_DIGEST_BYTES)),
      writer: b.readUInt32LE(o + 32),
      plainLength: b.readUInt32LE(o + 36),
      storedLength: b.readUInt32LE(o + 40),
      flags: b.readUInt8(o + 44),
      codec: b.readUInt8(o + 45),
    };
  }
  return out;
}
