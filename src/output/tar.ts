// GNU tar ("oldgnu") headers for one sparse member: the header with the first four map entries, then extension
// blocks of 21. GCE's image import reads this layout (its own docs make it with `tar --format=oldgnu -S`). Pure.
import type { Extent } from './sink.js';

export const TAR_BLOCK = 512;
/** GNU tar writes in records of 20 blocks; the archive is padded to one so every reader is content. */
export const TAR_RECORD = 20 * TAR_BLOCK;
const HEADER_ENTRIES = 4;
const EXTENSION_ENTRIES = 21;

export interface SparseMember {
  name: string;
  /** The file's size when extracted (holes included). */
  realSize: number;
  /** Bytes stored in the archive: the sum of the map's lengths. */
  storedSize: number;
  /** Map entries in the header and extension blocks (see sparseEntryCount). */
  entries: number;
  mtime?: Date;
}

/**
 * Entries of the map for these data extents: one per extent, plus a zero-length one at realSize when the file
 * ends in a hole (or holds no data), which is how GNU tar records the size of the trailing hole.
 */
export function sparseEntryCount(extents: number, lastEnd: number, realSize: number): number {
  return extents + (extents === 0 || lastEnd < realSize ? 1 : 0);
}

/** The member's header block; `first` holds up to four map entries (the rest go in extension blocks). */
export function sparseHeader(m: SparseMember, first: Extent[]): Buffer {
  const h = Buffer.alloc(TAR_BLOCK);
  h.write(m.name, 0, 100, 'utf8');
  octal(h, 100, 8, 0o644);
  octal(h, 108, 8, 0);
  octal(h, 116, 8, 0);
  number(h, 124, 12, m.storedSize);
  number(h, 136, 12, Math.floor((m.mtime ?? new Date()).getTime() / 1000));
  h.write('S', 156, 'latin1'); // GNU sparse file
  h.write('ustar  \0', 257, 'latin1'); // oldgnu magic and version
  for (let i = 0; i < first.length; i++) entry(h, 386 + i * 24, first[i]);
  h[482] = m.entries > HEADER_ENTRIES ? 1 : 0; // isextended
  number(h, 483, 12, m.realSize);
  checksum(h);
  return h;
}

/** An extension block with up to 21 entries; `more` says whether another block follows. */
export function sparseExtension(entries: Extent[], more: boolean): Buffer {
  const b = Buffer.alloc(TAR_BLOCK);
  for (let i = 0; i < entries.length; i++) entry(b, i * 24, entries[i]);
  b[504] = more ? 1 : 0;
  return b;
}

export const SPARSE_HEADER_ENTRIES = HEADER_ENTRIES;
export const SPARSE_EXTENSION_ENTRIES = EXTENSION_ENTRIES;

function entry(b: Buffer, at: number, e: Extent): void {
  number(b, at, 12, e.offset);
  number(b, at + 12, 12, e.length);
}

function octal(b: Buffer, at: number, len: number, v: number): void {
  b.write(v.toString(8).padStart(len - 1, '0'), at, len - 1, 'latin1');
  b[at + len - 1] = 0;
}

/** Octal when it fits in len-1 digits, else GNU's base-256 form (first byte 0x80, big-endian value), as GNU tar does. */
function number(b: Buffer, at: number, len: number, v: number): void {
  if (v < 8 ** (len - 1)) {
    octal(b, at, len, v);
    return;
  }
  b.fill(0, at, at + len);
  b[at] = 0x80;
  let x = BigInt(v);
  for (let i = at + len - 1; i > at && x > 0n; i--, x >>= 8n) b[i] = Number(x & 0xffn);
}

/** Sum of the header's bytes with the checksum field read as spaces; six octal digits, NUL, space. */
function checksum(h: Buffer): void {
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const x of h) sum += x;
  h.write(sum.toString(8).padStart(6, '0'), 148, 6, 'latin1');
  h[154] = 0;
  h[155] = 0x20;
}
