// What an export serves: a point read as a disk (chunks through the cache, zero chunks as holes), and the
// block-status map (base:allocation) derived from the chunk table without fetching any chunk.
import { ErrorCodes, RnodeError } from '../errors.js';
import { isZero } from '../native/index.js';
import type { ChunkCache } from './chunk-cache.js';
import type { ChunkIndex } from './chunk-index.js';
import type { ChunkEntry } from '../format/table.js';
import { STATE_HOLE, STATE_ZERO, type StatusExtent } from './wire.js';

/** A run of bytes in a read: data (a view of a cached chunk or an overlay read) or, without data, zeros. */
export interface Piece {
  offset: number;
  length: number;
  data?: Buffer;
}

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
/** Zero runs of this size, aligned in their chunk (the LZ4 block codec's sub-block), are served as holes. */
const ZERO_RUN = 64 * 1024;
/** Chunks fetched ahead of a sequential reader. */
const READ_AHEAD = 8;
/** Sequential readers followed at once (a multi-conn copy runs one per connection); the oldest is forgotten. */
const MAX_STREAMS = 32;

/**
 * A sequential reader: the chunk it started at, the last chunk it asked for, and the last chunk read-ahead was
 * started for. Read-ahead only moves forward from `ahead`, and stops where another reader started: a chunk behind
 * either was fetched already (and maybe served whole and retired since). Fetching those again cost an nbdcopy of
 * the export 6% more fetches and decodes, and left the chunks past each of its 128 MiB ranges cached, unread.
 */
interface Stream {
  first: number;
  last: number;
  ahead: number;
}

export class PointImage implements ExportImage {
  readonly size: number;
  readonly writable = false;
  private readonly chunkSize: number;
  /** Recent readers, newest last: a read that continues one (or spans several chunks) is sequential. */
  private readonly streams: Stream[] = [];
  /** The cached buffers each read() result holds pinned in the cache, until done(). */
  private readonly held = new WeakMap<Piece[], Buffer[]>();

  constructor(
    private readonly index: ChunkIndex,
    private readonly cache: ChunkCache,
  ) {
    this.size = index.diskSize;
    this.chunkSize = index.chunkSize;
  }

  get point(): number {
    return this.index.point;
  }

  async read(offset: number, length: number): Promise<Piece[]> {
    checkRange(offset, length, this.size);
    if (length === 0) return [];
    const first = Math.floor(offset / this.chunkSize);
    const last = Math.floor((offset + length - 1) / this.chunkSize);
    const held: Buffer[] = [];
    const served: Array<[ChunkEntry, number]> = [];
    // A chunk whose table segment is loaded and whose plaintext is cached (most reads of a copy: a chunk serves
    // several requests) becomes its piece at once; only the others take a promise, all fetched in parallel.
    const parts: Array<Piece[] | Promise<Piece[]>> = [];
    let waiting = false;
    for (let i = first; i <= last; i++) {
      const start = Math.max(offset, i * this.chunkSize);
      const end = Math.min(offset + length, (i + 1) * this.chunkSize);
      const e = this.index.lookupLoaded(i);
      const plain = e ? this.cache.peek(e) : undefined;
      let part: Piece[] | Promise<Piece[]>;
      if (e === null) part = [{ offset: start, length: end - start }];
      else if (e && plain) part = this.settle(() => this.piece(i, start, end, e, plain, held, served));
      else part = this.chunkPiece(i, start, end, held, served);
      if (part instanceof Promise) waiting = true;
      parts.push(part);
    }
    // Read-ahead starts as the request arrives, in the client's order, behind this request's own fetches.
    this.readAhead(first, last);
    let whole: Piece[];
    if (waiting) {
      const settled = await Promise.allSettled(parts.map((p) => Promise.resolve(p)));
      const failed = settled.find((s) => s.status === 'rejected');
      if (failed) {
        for (const b of held) this.cache.release(b);
        throw await this.index.explainMissing((failed as PromiseRejectedResult).reason);
      }
      whole = settled.flatMap((s) => (s as PromiseFulfilledResult<Piece[]>).value);
    } else {
      whole = parts.length === 1 ? (parts[0] as Piece[]) : (parts as Piece[][]).flat();
    }
    const pieces = mergeHoles(whole);
    this.held.set(pieces, held);
    for (const [e, n] of served) this.cache.served(e, n);
    return pieces;
  }

  done(pieces: Piece[]): void {
    const held = this.held.get(pieces);
    this.held.delete(pieces);
    for (const b of held ?? []) this.cache.release(b);
  }

  private async chunkPiece(i: number, start: number, end: number, held: Buffer[], served: Array<[ChunkEntry, number]>): Promise<Piece[]> {
    const e = await this.index.lookup(i);
    if (!e) return [{ offset: start, length: end - start }];
    return this.piece(i, start, end, e, await this.cache.get(e, this.point), held, served);
  }

  /** The pieces of a chunk's plaintext (pinned: held until done()) that cover [start, end) of the disk. */
  private piece(i: number, start: number, end: number, e: ChunkEntry, plain: Buffer, held: Buffer[], served: Array<[ChunkEntry, number]>): Piece[] {
    held.push(plain);
    const base = i * this.chunkSize;
    if (end - base > plain.length) {
      throw new RnodeError(ErrorCodes.CHUNK_CORRUPT, `chunk ${i} holds ${plain.length} bytes, fewer than the disk needs there`);
    }
    served.push([e, end - start]);
    return dataAndHoles(plain, base, start, end);
  }

  /** A piece, or the promise of its failure: a chunk that fails at once fails its read like one that fails later. */
  private settle(make: () => Piece[]): Piece[] | Promise<Piece[]> {
    try {
      return make();
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /**
   * Follows sequential readers and keeps READ_AHEAD chunks ahead of each. A read joins the reader whose last chunk
   * it continues or falls just behind (requests of one reader arrive a little out of order across chunks).
   */
  private readAhead(first: number, last: number): void {
    const at = this.streams.findIndex((s) => first >= s.last - READ_AHEAD && first <= s.last + 1);
    let s: Stream;
    if (at >= 0) {
      s = this.streams[at];
      if (at !== this.streams.length - 1) this.streams.push(...this.streams.splice(at, 1));
      if (last <= s.last) return; // still inside the chunk it read last: nothing new to fetch ahead of
      s.last = last;
    } else {
      s = { first, last, ahead: last };
      this.streams.push(s);
      if (this.streams.length > MAX_STREAMS) this.streams.shift();
      if (last === first) return; // a lone read of one chunk: not (yet) sequential
    }
    let to = Math.min(s.last + READ_AHEAD, this.index.chunks - 1);
    for (const o of this.streams) if (o.first > s.last && o.first <= to) to = o.first - 1;
    for (let i = Math.max(s.ahead, s.last) + 1; i <= to; i++) {
      this.index.lookup(i).then(
        (e) => {
          if (e) this.cache.prefetch(e, this.point);
        },
        () => undefined,
      );
    }
    s.ahead = Math.max(s.ahead, to);
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

/**
 * [start, end) of a chunk's plaintext (at disk offset base) as data pieces, with its all-zero blocks of ZERO_RUN
 * bytes (aligned in the chunk) as holes. A structured reply sends a hole as 12 bytes: a third of a mixed disk's
 * 64 KiB blocks are zeros, which both ends of the copy otherwise pushed through the socket byte by byte.
 */
function dataAndHoles(plain: Buffer, base: number, start: number, end: number): Piece[] {
  const out: Piece[] = [];
  let from = start;
  let zeros: boolean | undefined;
  const push = (to: number) => {
    out.push(zeros ? { offset: from, length: to - from } : { offset: from, length: to - from, data: plain.subarray(from - base, to - base) });
  };
  for (let at = start; at < end;) {
    const stop = Math.min(end, base + (Math.floor((at - base) / ZERO_RUN) + 1) * ZERO_RUN);
    const zero = isZero(plain.subarray(at - base, stop - base));
    if (zeros !== undefined && zero !== zeros) {
      push(at);
      from = at;
    }
    zeros = zero;
    at = stop;
  }
  push(end);
  return out;
}

/** Joins neighbouring holes; the pieces are read()'s own objects, so a hole is grown in place. */
function mergeHoles(pieces: Piece[]): Piece[] {
  if (pieces.length === 1) return pieces;
  const out: Piece[] = [];
  for (const p of pieces) {
    const last = out[out.length - 1];
    if (last && !last.data && !p.data) last.length += p.length;
    else out.push(p);
  }
  return out;
}
