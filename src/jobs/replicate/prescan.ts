// The scan of an incremental point from a source without change tracking reads the whole disk to find the few chunks
// that changed. Chunk by chunk through the pipeline (a read, a trip to a worker, a settle on the main thread), an
// unchanged 1.5 GiB image took several times what hashing it costs (issue 13). Here runs of chunks are read through
// the source's fd off the main thread and compared with the parent point, and only the chunks that changed come back
// to the pipeline, which reads them again and stores them. Two ways: prescanned() by chunk ids on the codec workers
// (keyed BLAKE3), and hashPrescanned() by this node's change hashes of the parent on the libuv pool (XXH3-128, at
// memory speed: change-hashes.ts), taken when the node holds them.
import { isZeroEntry } from '../../format/table.js';
import { changeHashes } from '../../native/index.js';
import type { CodecWorkers, ScanReply } from '../../pipeline/codec-workers.js';
import { ScanParent, ScanState } from '../../pipeline/codec-ops.js';
import type { ChunkGrid } from '../../pipeline/grid.js';
import type { Delta } from './options.js';
import { CHANGE_HASH_BYTES, zeroChunkHash, type ChangeHashReader } from './change-hashes.js';
import type { Candidate } from './plan.js';
import { sourceEnded, workerReadFailed } from './source-errors.js';

/** A chunk the workers found unchanged (or still zero): nothing to record, only what reading it cost. */
export interface Decided {
  index: number;
  delta: Delta;
  /** Its change hash, when the scan took one. */
  change?: Uint8Array;
}

export interface PrescanOptions {
  fd: number;
  grid: ChunkGrid;
  /** The domain whose chunk ids the parent's table holds. */
  idName: string;
  workers: CodecWorkers;
  /** The source, for messages. */
  location: string;
  /** Also take each chunk's change hash under this seed (for the cache the run writes: change-hashes.ts). */
  changeSeed?: bigint;
  /**
   * Each run's reply, as it arrives (the stage clock), with the bytes of its chunks found unchanged: what the source
   * gave only through the fd. A changed chunk's bytes count once, when the pipeline reads it again (from page cache).
   */
  onScanned: (r: ScanReply, unchangedBytes: number) => void;
}

/** Bytes of chunks per trip (a few milliseconds of a worker, so an abort or a failure is heard soon), and chunks. */
const RUN_BYTES = 16 * 1024 * 1024;
const RUN_CHUNKS = 64;
/** Runs in flight per worker: one being scanned and one queued, so a worker never waits for the main thread. */
const RUNS_PER_WORKER = 2;
/** Past this share of changed chunks the double read costs more than it saves: the rest goes through the pipeline. */
const GIVE_UP_CHANGED = 0.25;
const GIVE_UP_AFTER_CHUNKS = 256;

/**
 * Candidates in order, as candidates() gives them, with the read ones that the workers found unchanged turned into
 * Decided. The fd must stay open until this generator ends (its finally waits for every run in flight).
 */
export function prescanned(cands: AsyncIterable<Candidate[]>, o: PrescanOptions): AsyncIterable<Array<Candidate | Decided>> {
  return inRuns(cands, {
    perRun: Math.max(1, Math.min(RUN_CHUNKS, Math.floor(RUN_BYTES / o.grid.chunkSize))),
    maxRuns: RUNS_PER_WORKER * o.workers.size,
    start: (run) => o.workers.scanChunks(o.fd, o.idName, describe(run, o.grid), parentIds(run), o.changeSeed),
    async decide(run, reply) {
      const r = await reply.catch((err: unknown) => {
        throw workerReadFailed(o.location, err);
      });
      let unchangedBytes = 0;
      for (let i = 0; i < r.states.length; i++) if (r.states[i] !== ScanState.CHANGED) unchangedBytes += o.grid.length(run[i].index);
      o.onScanned(r, unchangedBytes);
      if (r.short !== undefined) throw sourceEnded(o.location, o.grid.offset(run[r.short].index) + r.got!, o.grid.diskSize);
      return run.map((c, i) => {
        const bytesRead = o.grid.length(c.index);
        const change = r.changes?.subarray(16 * i, 16 * i + 16);
        if (r.states[i] === ScanState.UNCHANGED) return { index: c.index, delta: { bytesRead, chunksData: 1 }, change };
        if (r.states[i] === ScanState.ZERO) return { index: c.index, delta: { bytesRead }, change };
        return c;
      });
    },
  });
}

/** How one way of prescanning reads a run of chunks off the main thread, and what it makes of each. */
interface RunScan<R> {
  /** Chunks per run, and runs in flight at once. */
  perRun: number;
  maxRuns: number;
  start(run: Candidate[]): Promise<R>;
  /** The run's chunks in order: Decided, or the candidate itself (changed: the pipeline takes it). Throws its failure. */
  decide(run: Candidate[], reply: Promise<R>): Promise<Array<Candidate | Decided>>;
}

/**
 * The candidates in order, in batches: the read ones in runs started as they fill (up to maxRuns at once), each run
 * decided in order, the others passed on as they are. Once more than GIVE_UP_CHANGED of the chunks scanned changed,
 * every candidate passes on (the pipeline reads it once, not twice). Waits for every run in flight before it ends.
 */
async function* inRuns<R>(cands: AsyncIterable<Candidate[]>, s: RunScan<R>): AsyncIterable<Array<Candidate | Decided>> {
  const queue: Array<{ run: Candidate[]; reply: Promise<R> } | { single: Candidate }> = [];
  let run: Candidate[] = [];
  let running = 0;
  let scanned = 0;
  let changed = 0;
  let givenUp = false;
  /** Decided in order, not yet handed on: handed on before any wait for a run, so the pipeline never idles on it. */
  let out: Array<Candidate | Decided> = [];

  const send = () => {
    if (!run.length) return;
    const reply = s.start(run);
    reply.catch(() => {}); // awaited in order below; one that fails after the run has ended is not unhandled
    queue.push({ run, reply });
    running++;
    run = [];
  };

  // The head of the queue, in order, into out: a run's chunks as decided, or a candidate that was never sent.
  const takeHead = async (): Promise<void> => {
    const q = queue.shift()!;
    if ('single' in q) {
      out.push(q.single);
      return;
    }
    running--;
    const decided = await s.decide(q.run, q.reply);
    scanned += q.run.length;
    for (const d of decided) {
      if (!('delta' in d)) changed++;
      out.push(d);
    }
    if (scanned >= GIVE_UP_AFTER_CHUNKS && changed > GIVE_UP_CHANGED * scanned) givenUp = true;
  };
  const handOn = () => {
    const batch = out;
    out = [];
    return batch;
  };

  try {
    for await (const batch of cands) {
      for (const c of batch) {
        if (c.read && !givenUp) {
          run.push(c);
          if (run.length >= s.perRun) send();
        } else {
          send();
          queue.push({ single: c });
        }
        while (queue.length && ('single' in queue[0] || running >= s.maxRuns)) {
          if (!('single' in queue[0]) && out.length) yield handOn();
          await takeHead();
        }
      }
      if (out.length) yield handOn();
    }
    send();
    while (queue.length) {
      if (!('single' in queue[0]) && out.length) yield handOn();
      await takeHead();
    }
    if (out.length) yield handOn();
  } finally {
    await Promise.allSettled(queue.flatMap((q) => ('reply' in q ? [q.reply] : [])));
  }
}

/** (offset, length, ScanParent) per chunk: what a worker needs to read a run and compare it with the parent. */
function describe(run: Candidate[], grid: ChunkGrid): Float64Array {
  const d = new Float64Array(3 * run.length);
  run.forEach((c, i) => {
    const length = grid.length(c.index);
    const p = c.parent;
    const parent = !p ? ScanParent.NONE : isZeroEntry(p) ? ScanParent.ZERO : p.id && p.plainLength === length ? ScanParent.ID : ScanParent.DATA;
    d.set([grid.offset(c.index), length, parent], 3 * i);
  });
  return d;
}

function parentIds(run: Candidate[]): Uint8Array {
  const ids = new Uint8Array(32 * run.length);
  run.forEach((c, i) => {
    if (c.parent?.id) ids.set(c.parent.id, 32 * i);
  });
  return ids;
}

export interface HashPrescanOptions {
  fd: number;
  grid: ChunkGrid;
  /** The parent point's change hashes (this node's cache of them) and the seed they were taken with. */
  parent: ChangeHashReader;
  seed: bigint;
  location: string;
  /** Each run as it is compared: its wall time on the pool, and the bytes of its chunks found unchanged. */
  onScanned: (ms: number, unchangedBytes: number) => void;
}

/** Bytes and chunks per change-hash run: ~10 ms of a core, so an abort or a failure is heard soon. */
const HASH_RUN_BYTES = 64 * 1024 * 1024;
const HASH_RUN_CHUNKS = 64;
/**
 * Change-hash runs in flight: as many as the libuv pool runs at once (node's default 4 threads) and as many again
 * queued behind them, so a thread that finishes a run takes the next at once. With one run per core plus one, the runs
 * shared the cores, ended together and left the pool idle while the main thread decided them and sent the next (an
 * unchanged 1.5 GiB incremental: 0.92x the wall time with 8 in flight against 3, 10 alternating pairs; 16: no faster).
 */
const HASH_RUNS_IN_FLIGHT = 8;

/**
 * prescanned() for a parent whose change hashes this node holds (change-hashes.ts): runs of chunks are read and
 * hashed with XXH3-128 on the libuv pool (native, HASH_RUNS_IN_FLIGHT runs at once), and a chunk whose hash equals
 * the parent's is unchanged, or still zero. Every other chunk (changed, or its parent hash not known) goes on to the
 * pipeline, which takes its id and compares that with the parent's.
 */
export function hashPrescanned(cands: AsyncIterable<Candidate[]>, o: HashPrescanOptions): AsyncIterable<Array<Candidate | Decided>> {
  return inRuns(cands, {
    perRun: Math.max(1, Math.min(HASH_RUN_CHUNKS, Math.floor(HASH_RUN_BYTES / o.grid.chunkSize))),
    maxRuns: HASH_RUNS_IN_FLIGHT,
    start(run) {
      const chunks = new Float64Array(2 * run.length);
      run.forEach((c, i) => {
        chunks[2 * i] = o.grid.offset(c.index);
        chunks[2 * i + 1] = o.grid.length(c.index);
      });
      const hashes = new Uint8Array(CHANGE_HASH_BYTES * run.length);
      const started = performance.now();
      return changeHashes(o.fd, chunks, o.seed, hashes).then((r) => ({ r, hashes, ms: performance.now() - started }));
    },
    async decide(run, reply) {
      const { r, hashes, ms } = await reply.catch((err: unknown) => {
        throw workerReadFailed(o.location, err, 'the thread pool');
      });
      if (r.short !== undefined) throw sourceEnded(o.location, o.grid.offset(run[r.short].index) + r.got!, o.grid.diskSize);
      const decided: Array<Candidate | Decided> = [];
      let unchangedBytes = 0;
      for (let i = 0; i < run.length; i++) {
        const c = run[i];
        const length = o.grid.length(c.index);
        const h = hashes.subarray(CHANGE_HASH_BYTES * i, CHANGE_HASH_BYTES * (i + 1));
        const peeked = o.parent.peek(c.index);
        const was = peeked === null ? await o.parent.get(c.index) : peeked;
        const same = was !== undefined && Buffer.compare(h, was) === 0;
        // The parent's hash says what the parent held; its table must agree (zero there and zero now, or data).
        const parentZero = !c.parent || isZeroEntry(c.parent);
        const zeroNow = same && Buffer.compare(h, zeroChunkHash(o.seed, length)) === 0;
        if (same && parentZero && zeroNow) decided.push({ index: c.index, delta: { bytesRead: length }, change: h });
        else if (same && !parentZero && !zeroNow && c.parent!.plainLength === length)
          decided.push({ index: c.index, delta: { bytesRead: length, chunksData: 1 }, change: h });
        else {
          decided.push(c);
          continue;
        }
        unchangedBytes += length;
      }
      o.onScanned(ms, unchangedBytes);
      return decided;
    },
  });
}
