// The chunk pipeline of a replicate run: chunks are read in index order, encoded on the codec workers (id, then
// compression and sealing only for a chunk that is probably new), appended to packs, and settled back in index order
// into the point's table. Memory is fixed: a few chunk buffers per codec worker, and a window of how far the reader
// may run ahead of the oldest unsettled chunk.
import { ErrorCodes, RnodeError } from '../../errors.js';
import { STRONG_DIGEST_BYTES } from '../../format/chunk.js';
import { Codec, type CodecId } from '../../format/codecs.js';
import { isZeroEntry, TableFlag, type ChunkEntry } from '../../format/table.js';
import { isZero } from '../../native/index.js';
import { BufferPool } from '../../pipeline/buffer-pool.js';
import { codecWorkers, maxObjectBytes, type IdEncoded } from '../../pipeline/codec-workers.js';
import type { IdFilter } from '../../pipeline/id-filter.js';
import { recycleShared, takeShared } from '../../pipeline/shared-slots.js';
import { StageClock } from '../../pipeline/stages.js';
import type { ChunkLocation } from '../../repository/index-file.js';
import type { Lease } from '../../repository/lease.js';
import { v2Entry } from '../../repository/point-format.js';
import type { BatchCursor } from '../../repository/view.js';
import { pipelineDepths } from './budget.js';
import type { Delta, ReplicateOptions } from './options.js';
import type { PackWriter } from './packs.js';
import { candidates, type Candidate, type PointPlan, type ResumeFrom } from './plan.js';
import { zeroChunkHash, type ChangeHashReader, type ChangeHashWriter } from './change-hashes.js';
import { hashPrescanned, prescanned, type Decided } from './prescan.js';
import type { RunState } from './run-state.js';
import { sourceEnded, workerReadFailed } from './source-errors.js';
import type { TableWriter } from './table.js';

export interface ChunkScanOptions {
  opts: ReplicateOptions;
  codec: CodecId;
  plan: PointPlan;
  from: ResumeFrom;
  packs: PackWriter;
  table: TableWriter;
  known: IdFilter;
  run: RunState;
  lease: Lease | undefined;
  /**
   * The change hashes this run takes for the next (writer, with their seed), and the parent's when this node holds
   * them (an incremental scan then compares chunks by those first: prescan.ts hashPrescanned).
   */
  changes?: { seed: bigint; writer: ChangeHashWriter; parent?: ChangeHashReader };
}

/** What one candidate chunk became: its table record (null: nothing to record), what it cost, its change hash. */
interface Outcome {
  entry: ChunkEntry | null;
  delta: Delta;
  /** Undefined: not known (or not taken); 'parent': as the parent's (a tracked source's chunk it did not read). */
  change?: Uint8Array | 'parent';
}

export class ChunkScan {
  readonly clock: StageClock;
  /** Chunks settled, in index order. */
  settledCount = 0;
  /** The index after the last settled chunk: a checkpoint written now covers every chunk before it. */
  nextIndex: number;
  /** How an incremental scan found its unchanged chunks, when it did (ReplicateResult.comparedBy). */
  comparedBy: 'change-hashes' | 'chunk-ids' | undefined;
  private started = 0;
  /** Disk offset of the last chunk handed to the pipeline. */
  private position = 0;
  /** Settled out of order, waiting for the chunks before them (bounded by the window). */
  private readonly done = new Map<number, Outcome>();
  private readonly indexOf = new Map<number, number>();
  /** Chunks waiting for an object buffer or a pack buffer: then the store is what holds the reader up. */
  private waitingForStore = 0;
  private readonly workers = codecWorkers();
  private readonly plainPool: BufferPool<Buffer>;
  private readonly outPool: BufferPool<Buffer>;
  private readonly reorderWindow: number;

  constructor(private readonly o: ChunkScanOptions) {
    this.clock = new StageClock(o.opts.onStage);
    this.nextIndex = o.from.nextIndex;
    // A durable put waits for the device far longer than a chunk takes to read and encode. With one buffer pair per
    // chunk held from read to the end of its put, the puts held every pair and the workers sat idle (issue 13). Now
    // chunk buffers are held only until a chunk's blob is copied into its pack, and the pack buffers wait for the store.
    const { encodeDepth, reorderWindow } = pipelineDepths(o.plan.grid.chunkSize, o.opts.concurrency, o.opts.bufferBytes);
    this.reorderWindow = reorderWindow;
    // One trip to a worker per chunk (its id and, when it is probably new, its blob): a plaintext buffer is held from
    // read to the end of that trip, an object buffer across the trip and the blob's append to its pack.
    this.plainPool = new BufferPool(encodeDepth, () => takeShared(o.plan.grid.chunkSize));
    this.outPool = new BufferPool(encodeDepth, () => takeShared(maxObjectBytes(o.plan.grid.chunkSize)));
  }

  /** Runs every candidate through the pipeline; ends when all are settled, or at the run's first failure. */
  async run(parentView: BatchCursor<ChunkEntry> | undefined): Promise<void> {
    const { opts, plan, from, run, lease } = this.o;
    const { grid } = plan;
    const inflight = new Set<Promise<void>>();
    await this.workers.anyReady(); // chunks go only to lanes that have started: none waits behind a worker starting
    // An incremental scan compares most chunks on the workers, reading them there (prescan.ts); a full point's workers
    // read each chunk themselves (processChunk).
    const lent = (plan.scan && parentView) || plan.full ? opts.source.lendFd?.() : undefined;
    // A full point's chunks are read on the codec workers through this fd, not through source.read().
    const readFd = plan.full ? lent?.fd : undefined;
    // A stop is heard at once, also by a reader waiting for a buffer: it read one more chunk when the buffer came
    // back (a slow NBD server's read after SIGTERM doubled the stop).
    const stop = () => run.fail(new RnodeError(ErrorCodes.CANCELLED, 'replication was cancelled; the point was not committed'));
    opts.signal?.addEventListener('abort', stop, { once: true });
    try {
      stream: for await (const batch of this.stream(parentView, plan.full ? undefined : lent?.fd))
        for (const c of batch) {
          if (run.failed) break stream;
          if (opts.signal?.aborted) throw new RnodeError(ErrorCodes.CANCELLED, 'replication was cancelled; the point was not committed');
          if (lease?.signal.aborted) throw lease.signal.reason;
          if (c.index < from.nextIndex) continue; // already in the checkpoint
          const position = grid.offset(c.index);
          const ordinal = this.started++;
          this.indexOf.set(ordinal, c.index);
          if ('delta' in c) {
            // Found unchanged on a worker. The window also holds these: a chunk in a slow put must not let them pile up.
            while (this.started - this.settledCount > this.reorderWindow && !run.failed) await run.change();
            if (run.failed) break stream;
            run.live.bytesRead += c.delta.bytesRead ?? 0;
            this.settle(ordinal, { entry: null, delta: c.delta, change: c.change });
            this.position = position;
            continue;
          }
          if (!c.read) {
            // Unread chunks the parent has data for: zero now on a scan (unallocated), unchanged on a tracked read.
            const zeroNow = plan.scan && c.parent && !isZeroEntry(c.parent);
            // A scan's unread chunk reads as zeros; a tracked source's is unchanged: the writer keeps the parent's hash.
            const change = plan.scan ? this.zeroHash(grid.length(c.index)) : 'parent';
            this.settle(
              ordinal,
              zeroNow ? { entry: zeroEntry(c.index, grid.length(c.index)), delta: { chunksChanged: 1 }, change } : { entry: null, delta: {}, change },
            );
            continue;
          }
          // The reader stands still here when the pipeline is full; whoever holds the buffers is the bottleneck.
          const stalledFor = this.waitingForStore > 0 ? 'write' : 'encode';
          const waitStart = performance.now();
          while (this.started - this.settledCount > this.reorderWindow && !run.failed) await run.change();
          const plainSlot = await this.plainPool.acquire();
          this.clock.waited(stalledFor, performance.now() - waitStart);
          if (run.failed) {
            this.plainPool.release(plainSlot);
            break stream;
          }
          let plainHeld = true;
          const releasePlain = () => {
            if (plainHeld) {
              plainHeld = false;
              this.plainPool.release(plainSlot);
            }
          };
          const p: Promise<void> = this.processChunk(c, plainSlot, releasePlain, readFd)
            .then(
              (e) => {
                this.settle(ordinal, e);
                // Also as chunks are stored, not only as they are read: the reader runs ahead by the pipeline's depth,
                // and a small or throttled disk is read whole long before its writes end.
                this.progress();
              },
              (err) => run.fail(err),
            )
            .finally(() => {
              releasePlain();
              inflight.delete(p);
            });
          inflight.add(p);
          this.position = position;
          this.progress();
        }
    } catch (err) {
      run.fail(err);
    } finally {
      // Heard until the chunks in flight settle too: a source read whole within the write budget left nothing listening,
      // and a stop on a slow link waited for every queued pack, then committed.
      await Promise.all(inflight);
      opts.signal?.removeEventListener('abort', stop);
      // Every chunk is settled and stored: the buffers go back for the next run.
      this.plainPool.close(recycleShared);
      this.outPool.close(recycleShared);
      await parentView?.close();
      lent?.release();
    }
  }

  /** The candidates in order, in batches; with a lent fd, those the workers found unchanged come as Decided. */
  private stream(parentView: BatchCursor<ChunkEntry> | undefined, fd: number | undefined): AsyncIterable<Array<Candidate | Decided>> {
    const { opts, plan, from } = this.o;
    const all = storeMissingAgain(candidates(plan.toRead, parentView), (id) => this.o.packs.holds(id));
    const changes = this.o.changes;
    if (fd !== undefined && changes?.parent && plan.scan) {
      // Only the chunks that changed reach the codec lanes: the main thread's lane takes them unless it falls behind
      // (CodecWorkers starts its deferred workers then).
      this.comparedBy = 'change-hashes';
      return hashPrescanned(fromIndex(all, from.nextIndex), {
        fd,
        grid: plan.grid,
        parent: changes.parent,
        seed: changes.seed,
        location: opts.source.location,
        onScanned: (ms, unchangedBytes) => {
          this.clock.readOnWorker(0, ms);
          opts.source.readElsewhere?.(unchangedBytes);
          this.progress();
        },
      });
    }
    // Any other way, every chunk read reaches the codec lanes: the workers the process deferred start now.
    this.workers.start();
    if (fd === undefined) return all;
    this.comparedBy = 'chunk-ids';
    return prescanned(fromIndex(all, from.nextIndex), {
      fd,
      grid: plan.grid,
      idName: plan.domain.name,
      workers: this.workers,
      location: opts.source.location,
      changeSeed: changes?.seed,
      onScanned: (r, unchangedBytes) => {
        this.clock.readOnWorker(r.readMs, r.hashMs);
        opts.source.readElsewhere?.(unchangedBytes);
        this.progress();
      },
    });
  }

  /** Takes a chunk's outcome; the outcomes of every chunk up to the first missing one go into the table, in order. */
  private settle(ordinal: number, outcome: Outcome): void {
    const { run, table, changes } = this.o;
    this.done.set(ordinal, outcome);
    while (this.done.has(this.settledCount)) {
      const { entry: e, delta, change } = this.done.get(this.settledCount)!;
      this.done.delete(this.settledCount);
      const index = this.indexOf.get(this.settledCount)!;
      // Before the chunk's figures count: a checkpoint cut at its record holds the figures of the chunks before it.
      table.settle(index, e);
      for (const k of Object.keys(delta) as Array<keyof Delta>) run.stats[k] += delta[k] ?? 0;
      this.nextIndex = index + 1;
      this.indexOf.delete(this.settledCount);
      this.settledCount++;
      if (change !== 'parent') changes?.writer.put(index, change);
      if (table.due) table.flush(this.nextIndex);
    }
    run.wake();
  }

  /** The change hash of a zero chunk of this length. */
  private zeroHash(length: number): Buffer | undefined {
    const seed = this.o.changes?.seed;
    return seed === undefined ? undefined : zeroChunkHash(seed, length);
  }

  private progress(): void {
    const { opts, run, plan } = this.o;
    opts.onProgress?.({
      phase: 'scan',
      bytesRead: run.live.bytesRead,
      bytesWritten: run.live.bytesWritten,
      chunksDone: this.settledCount,
      position: this.position,
      diskSize: plan.grid.diskSize,
    });
  }

  private async storeWait<T>(p: Promise<T>): Promise<T> {
    this.waitingForStore++;
    try {
      return await p;
    } finally {
      this.waitingForStore--;
    }
  }

  /**
   * Reads, encodes and stores chunk c; releasePlain gives its plaintext buffer back as soon as the encode is done. With
   * fd (a full point's lent source fd) the codec worker reads the chunk in the same trip.
   */
  private async processChunk(c: Candidate, plainSlot: Buffer, releasePlain: () => void, fd: number | undefined): Promise<Outcome> {
    const {
      opts: { source },
      plan,
      packs,
      run,
      codec,
    } = this.o;
    const { grid, domain } = plan;
    const clock = this.clock;
    const offset = grid.offset(c.index);
    const length = grid.length(c.index);
    const plain = plainSlot.subarray(0, length);
    const shortRead = (n: number) => sourceEnded(source.location, offset + n, grid.diskSize);
    const zeroChunk = (n: number): Outcome => {
      const delta: Delta = { bytesRead: n, chunksZero: plan.scan ? 0 : 1 };
      const change = this.zeroHash(length);
      if (!c.parent || isZeroEntry(c.parent)) return { entry: null, delta, change };
      return { entry: zeroEntry(c.index, length), delta: { ...delta, chunksChanged: 1 }, change };
    };
    if (fd === undefined) {
      const n = await clock.time(c.index, 'read', () => source.read(offset, plainSlot, length));
      if (n !== length) throw shortRead(n);
      run.live.bytesRead += n;
      if (isZero(plain)) return zeroChunk(n);
    }
    let change: Uint8Array | undefined;
    const dedupHit = (l: ChunkLocation, entry: ChunkEntry): Outcome => {
      packs.reuse(l);
      return {
        entry,
        delta: { bytesRead: length, chunksData: 1, chunksChanged: 1, chunksDeduplicated: 1, bytesDeduplicated: length },
        change,
      };
    };
    // Unchanged when the 32-byte ids agree (never a shorter digest): nothing to record or store.
    const parentId = c.parent?.id && c.parent.plainLength === length ? c.parent.id : undefined;
    const out = await this.storeWait(this.outPool.acquire(c.index)); // the earliest chunk first: a checkpoint covers chunks in index order
    try {
      const start = performance.now();
      const f = { idName: domain.name, keyId: domain.key?.keyId, parentId, known: this.o.known.words, changeSeed: this.o.changes?.seed };
      let r: IdEncoded;
      if (fd === undefined) r = await this.workers.idEncodeBlob(plain, out, codec, f);
      else {
        const read = await this.workers.readIdEncodeBlob(fd, offset, plain, out, codec, f).catch((err: unknown) => {
          throw workerReadFailed(source.location, err);
        });
        clock.readOnWorker(read.readMs, 0);
        source.readElsewhere?.(read.got);
        if (read.got !== length) throw shortRead(read.got);
        run.live.bytesRead += length;
        if (read.id === undefined) return zeroChunk(length);
        r = read;
      }
      const { id, hashMs } = r;
      change = r.change;
      if (parentId?.equals(id)) {
        clock.encoded(c.index, start, { hashMs, packMs: 0 });
        return { entry: null, delta: { bytesRead: length, chunksData: 1 }, change };
      }
      const entry = v2Entry(c.index, id, length, plan.seq);
      const hit = packs.reusable(id);
      if (hit) {
        clock.encoded(c.index, start, { hashMs, packMs: r.skipped ? 0 : r.packMs, sealMs: r.skipped ? 0 : r.sealMs });
        return dedupHit(hit, entry);
      }
      // Skipped on a false hint (the filter, or copies only in packs prune marked): this chunk is stored after all.
      const encoded = r.skipped ? await this.workers.encodeBlob(plain, out, codec, id, domain.key?.keyId) : r;
      clock.encoded(c.index, start, { hashMs, packMs: encoded.packMs, sealMs: encoded.sealMs });
      releasePlain(); // the next chunks' reads and encodes now overlap this one's append
      const blob = out.subarray(0, encoded.payloadLength);
      // A chunk's write is its append to the open pack, with any wait for a pack buffer (the store's pace).
      const late = await this.storeWait(
        clock.time(c.index, 'write', () =>
          packs.append(c.index, id, blob, { plainLength: length, codec: encoded.codec, payloadXxh64: encoded.payloadXxh64 }),
        ),
      );
      // Another chunk with the same content was stored while this one was encoded.
      if (late) return dedupHit(late, entry);
      return { entry, delta: { bytesRead: length, chunksData: 1, chunksChanged: 1 }, change };
    } finally {
      this.outPool.release(out);
    }
  }
}

/**
 * A parent's chunk the repository no longer holds (check --repair dropped it as damaged) is read and stored again,
 * not inherited: an incremental that named it was as broken as its parent (CHUNK_MISSING on restore), and only a
 * --full run healed the disk. Stored again, it is found by its id for the older points too.
 */
async function* storeMissingAgain(all: AsyncIterable<Candidate[]>, holds: (id: Buffer) => boolean): AsyncIterable<Candidate[]> {
  for await (const batch of all) yield batch.map((c) => (c.parent?.id && !holds(c.parent.id) ? { index: c.index, read: true } : c));
}

/** The candidates from index `first` on: a resumed run's workers read nothing its checkpoint covers. */
async function* fromIndex(all: AsyncIterable<Candidate[]>, first: number): AsyncIterable<Candidate[]> {
  for await (const batch of all) {
    const from = batch[0].index >= first ? batch : batch.filter((c) => c.index >= first);
    if (from.length) yield from;
  }
}

function zeroEntry(index: number, length: number): ChunkEntry {
  return {
    index,
    xxh64: 0n,
    strong: Buffer.alloc(STRONG_DIGEST_BYTES),
    writer: 0,
    plainLength: length,
    storedLength: 0,
    flags: TableFlag.ZERO,
    codec: Codec.NONE,
  };
}
