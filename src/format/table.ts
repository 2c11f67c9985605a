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
// Version 2 (encrypted points, manifest version 3) appends an HMAC-SHA256 of all preceding bytes (checksum
// included) under the metadata subkey, bound to disk, point, parent, generation and segment number: without the key
// a segment can be checked for damage (xxh64) but not forged, dropped into another place, or swapped for an older one.
import { META_MAC_BYTES, type EncryptionKey, type MetaContext } from '../crypto/keys.js';
import { ErrorCodes, RnodeError } from '../errors.js';
import { xxh64 } from './checksum.js';
import { STRONG_DIGEST_BYTES } from './chunk.js';

export const TABLE_RECORD_BYTES = 64;
export const TABLE_SEGMENT_RECORDS = 4096;
const SEGMENT_MAGIC = 0x42544e52; // "RNTB"
const SEGMENT_VERSION = 1;
const SEGMENT_VERSION_AUTHENTICATED = 2;
const SEGMENT_HEADER_BYTES = 12;

/** Where a segment belongs; its MAC binds all of it. */
export interface SegmentPlace {
  disk: string;
  point: number;
  parent: number | null;
  generation: number;
  segment: number;
}

/** How an authenticated segment is sealed and checked: the disk's key and the segment's place. */
export interface SegmentAuth {
  key: EncryptionKey;
  place: SegmentPlace;
}

const macContext = (p: SegmentPlace): MetaContext => ({ kind: 'table', ...p });

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
  /**
   * Repository v2 points (src/repository/point-format.ts): the 32-byte chunk id, the only identity of the chunk's
   * data; the blob is found through the domain's ChunkIndex. Absent for legacy points (their data is the object
   * (writer, index)). For v2 entries writer is the point whose table holds the record, xxh64/strong are derived from
   * the id (never used as identity) and codec/storedLength are 0 (the index knows them).
   */
  id?: Buffer;
}

export function isZeroEntry(e: ChunkEntry): boolean {
  return (e.flags & TableFlag.ZERO) !== 0;
}

/** Encodes a segment; with auth, as version 2 with its MAC (the MAC is also `segmentMac` of the result). */
export function encodeSegment(entries: readonly ChunkEntry[], auth?: SegmentAuth): Buffer {
  const b = Buffer.alloc(SEGMENT_HEADER_BYTES + entries.length * TABLE_RECORD_BYTES + 8 + (auth ? META_MAC_BYTES : 0));
  b.writeUInt32LE(SEGMENT_MAGIC, 0);
  b.writeUInt8(auth ? SEGMENT_VERSION_AUTHENTICATED : SEGMENT_VERSION, 4);
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
  if (auth) auth.key.metaMac(macContext(auth.place), b.subarray(0, o + 8)).copy(b, o + 8);
  return b;
}

/** The MAC (hex) an authenticated segment carries, as its manifest's segment ref records it; undefined for version 1. */
export function segmentMac(b: Buffer): string | undefined {
  return b.length >= SEGMENT_HEADER_BYTES && b.readUInt8(4) === SEGMENT_VERSION_AUTHENTICATED && b.length >= META_MAC_BYTES
    ? b.subarray(b.length - META_MAC_BYTES).toString('hex')
    : undefined;
}

/**
 * Decodes a segment. `expect` says what the point's manifest promises: 'plain' (manifest versions 1 and 2: the
 * segment must be version 1), or an authenticated point's segment, with `mac` from the manifest's ref and, when the
 * key is at hand, `auth` to recompute it; 'any' (a receiving node, which holds no key) checks damage only. A version mismatch either way is a forgery (METADATA_FORGED), never a
 * format to fall back to: an encrypted disk never accepts a down-versioned object.
 */
export function decodeSegment(b: Buffer, what: string, expect: 'plain' | 'any' | { mac: string; auth?: SegmentAuth } = 'plain'): ChunkEntry[] {
  const bad = (why: string) =>
    new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `chunk table ${what} is corrupt (${why}); run "rnode verify" and restore from another point`);
  const forged = (why: string) =>
    new RnodeError(
      ErrorCodes.METADATA_FORGED,
      `chunk table ${what} ${why}: it was modified, moved from another point or disk, or forged; restore from another point or store`,
      { details: { key: what } },
    );
  if (b.length < SEGMENT_HEADER_BYTES + 8 || b.readUInt32LE(0) !== SEGMENT_MAGIC) throw bad('bad header');
  const version = b.readUInt8(4);
  if (version !== SEGMENT_VERSION && version !== SEGMENT_VERSION_AUTHENTICATED) {
    throw new RnodeError(ErrorCodes.FORMAT_VERSION, `chunk table ${what} has format version ${version}; upgrade rnode to read it`);
  }
  // Reserved bytes (header 5-7, record 46-63) are written as zero; set ones are damage the checksum did not catch.
  if (b.readUIntLE(5, 3) !== 0) throw bad('reserved header bytes are not zero');
  const authenticated = version === SEGMENT_VERSION_AUTHENTICATED;
  if (expect === 'plain' && authenticated) throw forged('is authenticated but its manifest is not (a downgraded manifest)');
  if (typeof expect === 'object' && !authenticated) throw forged('is not authenticated on a disk whose metadata is');
  const count = b.readUInt32LE(8);
  const end = SEGMENT_HEADER_BYTES + count * TABLE_RECORD_BYTES;
  if (b.length !== end + 8 + (authenticated ? META_MAC_BYTES : 0)) throw bad('length does not match its record count');
  if (b.readBigUInt64LE(end) !== xxh64(b.subarray(0, end))) throw bad('checksum mismatch');
  if (typeof expect === 'object') {
    const mac = b.subarray(end + 8);
    if (mac.toString('hex') !== expect.mac) throw forged('is not the segment its manifest names');
    if (expect.auth && !mac.equals(expect.auth.key.metaMac(macContext(expect.auth.place), b.subarray(0, end + 8)))) throw forged('fails its MAC');
  }
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
