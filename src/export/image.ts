// What an export serves: a point read as a disk (chunks through the cache, zero chunks as holes), and the
// block-status map (base:allocation) derived from the chunk table without fetching any chunk.
import { ErrorCodes, RnodeError } from '../errors.js';
import type { ChunkCache } from './chunk-cache.js';
import type { ChunkIndex } from './chunk-index.js';
import type { ChunkEntry } from '../format/table.js';
import { STATE_HOLE, STATE_ZERO, type StatusExtent } from './wire.js';

/** A run of bytes in a read: data (a view of a cached chunk or an overlay read) or, without data, zeros. */
export interface Piece { offset: number; length: number; data?: Buffer }

export interface ExportImage {
  readonly size: number;
  readonly point: number;
  readonly writable: boolean;
  /** Pieces covering [offset, offset+length) in order. Fails (EIO) when any chunk in the range cannot be read. */
  read(offset: number, length: number): Promise<Piece[]>;
  /** The caller is done with what read() returned (its reply is on the wire): an image may reuse that memory now. */
  done?(pieces: Piece[]): void;
  /** base:allocation extents from offset, covering at most length (a prefix of it is allowed), at least one. */
  extents(offset: number, length: number): Promise<StatusExtent[]>;
  write?(offset: number, data: Buffer): Promise<void>;
  writeZeroes?(offset: number, length: number): Promise<void>;
  flush?(): Promise<void>;
  close?(): Promise<void>;
}

/** Chunks looked at per BLOCK_STATUS reply; a client asks again from where the reply stopped. */
const STATUS_CHUNKS = 16384;
/** Chunks fetched ahead of a sequential reader. */
const READ_AHEAD = 8;

export class PointImage implements ExportImage {
  readonly size: number;
  readonly writable = false;
  private readonly chunkSize: number;
  /** The last chunk of recent reads: a read that starts right after one is sequential and triggers read-ahead. */
  private readonly recent: number[] = [];
  /** The cached buffers each read() result holds pinned in the cache, until done(). */
  private readonly held = new WeakMap<Piece[], Buffer[]>();

  constructor(private readonly index: ChunkIndex, private readonly cache: ChunkCache) {
    this.size = index.diskSize;
    this.chunkSize = index.chunkSize;
  }

  get point(): number { return this.index.point; }

  async read(offset: number, length: number): Promise<Piece[]> {
    checkRange(offset, length, this.size);
    if (length === 0) return [];
    const first = Math.floor(offset / this.chunkSize);
    const last = Math.floor((offset + length - 1) / this.chunkSize);
    const held: Buffer[] = [];
    const served: Array<[ChunkEntry, number]> = [];
    const jobs: Array<Promise<Piece>> = [];
    for (let i = first; i <= last; i++) {
      const start = Math.max(offset, i * this.chunkSize);
      const end = Math.min(offset + length, (i + 1) * this.chunkSize);
      jobs.push(this.chunkPiece(i, start, end, held, served));
    }
    const settled = await Promise.allSettled(jobs);
    this.noteAccess(first, last);
    const failed = settled.find((s) => s.status === 'rejected');
    if (failed) {
      for (const b of held) this.cache.release(b);
      throw (failed as PromiseRejectedResult).reason;
    }
    const pieces = mergeHoles(settled.map((s) => (s as PromiseFulfilledResult<Piece>).value));
    this.held.set(pieces, held);
    for (const [e, n] of served) this.cache.served(e, n);
    return pieces;
  }

  done(pieces: Piece[]): void {
    const held = this.held.get(pieces);
    this.held.delete(pieces);
    for (const b of held ?? []) this.cache.release(b);
  }

  private async chunkPiece(i: number, start: number, end: number, held: Buffer[], served: Array<[ChunkEntry, number]>): Promise<Piece> {
    const e = await this.index.lookup(i);
    if (!e) return { offset: start, length: end - start };
    const plain = await this.cache.get(e, this.point);
    held.push(plain);
    const base = i * this.chunkSize;
    if (end - base > plain.length) {
      throw new RnodeError(ErrorCodes.CHUNK_CORRUPT, `chunk ${i} holds ${plain.length} bytes, fewer than the disk needs there`);
    }
    served.push([e, end - start]);
    return { offset: start, length: end - start, data: plain.subarray(start - base, end - base) };
  }

  private noteAccess(first: number, last: number): void {
    const sequential = last > first || this.recent.includes(first - 1);
    this.recent.push(last);
    if (this.recent.length > 32) this.recent.shift();
    if (!sequential) return;
    for (let i = last + 1; i <= last + READ_AHEAD && i < this.index.chunks; i++) {
      this.index.lookup(i).then((e) => { if (e) this.cache.prefetch(e, this.point); }, () => undefined);
    }
  }

  async extents(offset: number, length: number): Promise<StatusExtent[]> {
    checkRange(offset, length, this.size);
    const out: StatusExtent[] = [];
    const end = offset + length;
    let pos = offset;
    for (let n = 0; pos < end && n < STATUS_CHUNKS; n++) {
      const i = Math.floor(pos / this.chunkSize);
      const stop = Math.min(end, (i + 1) * this.chunkSize);
      const e = await this.index.lookup(i);
      pushExtent(out, stop - pos, e ? 0 : STATE_HOLE | STATE_ZERO);
      pos = stop;
    }
    return out;
  }
}

export function checkRange(offset: number, length: number, size: number): void {
  if (!(offset >= 0 && length >= 0 && offset + length <= size)) {
    throw new RnodeError(ErrorCodes.USAGE, `range ${offset}+${length} is outside the ${size}-byte disk`);
  }
}

/** Appends an extent, merging it into the previous one when the flags agree (lengths stay under 4 GiB). */
export function pushExtent(out: StatusExtent[], length: number, flags: number): void {
  const last = out[out.length - 1];
  if (last && last.flags === flags && last.length + length <= 0xffffffff) last.length += length;
  else out.push({ length, flags });
}

function mergeHoles(pieces: Piece[]): Piece[] {
  const out: Piece[] = [];
  for (const p of pieces) {
    const last = out[out.length - 1];
    if (last && !last.data && !p.data) last.length += p.length;
    else out.push({ ...p });
  }
  return out;
}
