// Writes a disk as it was at a point into an output sink (a local file or device, or a cloud disk object), byte-exact
// and sparse where the sink allows. Every chunk is verified on the way; a failed restore leaves no output behind.
import type { EncryptionKey } from '../crypto/keys.js';
import { ErrorCodes, RnodeError } from '../errors.js';
import { validateDiskId } from '../repository/names.js';
import type { PointManifest } from '../format/manifest.js';
import { isZeroEntry } from '../format/table.js';
import type { ObjectStore } from '../store/types.js';
import { readChunk } from '../pipeline/chunk-reader.js';
import { codecWorkers } from '../pipeline/codec-workers.js';
import { BufferPool } from '../pipeline/buffer-pool.js';
import { newReadSlot, recycleReadSlot, withWorkerKey, type ChunkSeal } from '../pipeline/chunk-codec.js';
import { authenticateTables, readDiskMarker, requireChainSeal } from '../repository/encryption.js';
import { assertOutsideStore } from '../store/containment.js';
import { loadChain, resolvePoint } from '../repository/points.js';
import { chainViewAcrossRebase, isMissingTable, type ChainReload } from '../repository/view.js';
import { isCloudOutput, openOutput, outputPath } from '../output/index.js';
import { resolveFileOutput } from '../output/file.js';
import type { Extent, OutputSink } from '../output/sink.js';

export interface RecoverOptions {
  store: ObjectStore;
  disk: string;
  point?: string;
  /** A file or block device path, or a cloud disk URL (s3://, azblob://...vhd, gs://...tar.gz; see src/output/). */
  out: string;
  /** The key of an encrypted disk (required for one, refused for an unencrypted one). */
  encryption?: EncryptionKey;
  /**
   * Chunks fetched, decoded and written at once (default: 24 MiB of chunks, 8 to 32 of them): also the number of
   * chunk buffers, so memory is bounded by it.
   */
  concurrency?: number;
  /** An output already opened (embedders, tests): used instead of opening `out`. */
  sink?: OutputSink;
  /** Credentials and emulator hosts of a cloud output (default process.env). */
  env?: NodeJS.ProcessEnv;
  onProgress?: (p: { bytesWritten: number; chunksDone: number; diskSize: number }) => void;
  /** Stops before the next chunk (those in flight finish); the partial output is removed, as on any failure. */
  signal?: AbortSignal;
}

export interface RecoverResult {
  disk: string;
  point: number;
  out: string;
  diskSize: number;
  chunkSize: number;
  chunksRestored: number;
  bytesFetched: number;
  /** Bytes sent to the output (zeros a sparse output skips are not counted). */
  bytesWritten: number;
  seconds: number;
  /** Where the time went (see RestoreStageTimes). */
  stages: RestoreStageTimes;
}

/**
 * Seconds per stage of a restore. fetch, decode and write are wall time summed over the chunks in flight (so they may
 * exceed the run's wall time): store reads, the codec workers' decode-and-verify round trips, and the sink's writes
 * (for an ordered sink, with the wait for its turn). wait is wall time the reader stood still because every chunk
 * buffer was taken; open is the time before the first chunk (points, tables, authentication, opening the output)
 * and finish the output's final sync and rename.
 */
export interface RestoreStageTimes {
  open: number;
  fetch: number;
  decode: number;
  write: number;
  wait: number;
  finish: number;
}

export async function recover(opts: RecoverOptions): Promise<RecoverResult> {
  const started = performance.now();
  const { store } = opts;
  const disk = validateDiskId(opts.disk);
  // The codec workers load their modules while the points and indexes load: started by the first chunk, they held
  // it (and every write) back a quarter of a second.
  codecWorkers();
  const out = opts.sink ? opts.out : outputPath(opts.out);
  if (!opts.sink && !isCloudOutput(out)) {
    assertOutsideStore(store.location, out, '--out');
    // A mistaken --out (stdout, /dev/null, a missing folder) fails before the store is read; opening checks again.
    await resolveFileOutput(out);
  }
  const seq = await resolvePoint(store, disk, opts.point, opts.encryption);
  let chain = await loadChain(store, disk, seq, opts.encryption);
  const { diskSize, chunkSize } = chain[0];
  // Before the output exists: a missing or wrong key leaves nothing behind.
  // Forged metadata too: manifests and every table segment are authenticated before the output is opened.
  const marker = await readDiskMarker(store, disk, opts.encryption);
  const seal = requireChainSeal(chain, opts.encryption, disk, marker);
  // Retention may rebase the point while it is read (its ancestors' tables deleted): the point as the store holds it
  // then, held to the same rules.
  const reload = async () => {
    const now = await loadChain(store, disk, seq, opts.encryption);
    requireChainSeal(now, opts.encryption, disk, marker);
    return now;
  };
  if (seal) {
    await authenticateTables(store, chain, seal.key).catch(async (err: unknown) => {
      if (!isMissingTable(err)) throw err;
      chain = await reload();
      await authenticateTables(store, chain, seal.key);
    });
  }

  const sink =
    opts.sink ??
    (await openOutput(out, { diskSize, env: opts.env ?? process.env, storeLocation: store.location, ownerOnly: opts.encryption !== undefined }));
  let stats: PumpStats;
  const clock = new RestoreClock();
  try {
    if (sink.prepare) await sink.prepare(() => dataExtents(store, chain, seal?.key, reload));
    clock.ms.open = performance.now() - started;
    stats = await withWorkerKey(opts.encryption, () =>
      pump({
        store,
        disk,
        chain,
        reload,
        seq,
        seal,
        sink,
        concurrency: opts.concurrency ?? defaultConcurrency(chunkSize),
        signal: opts.signal,
        clock,
        onProgress: opts.onProgress && ((s) => opts.onProgress!({ bytesWritten: s.bytesWritten, chunksDone: s.chunksRestored, diskSize })),
      }),
    );
    const finishing = performance.now();
    await sink.finish();
    clock.ms.finish = performance.now() - finishing;
  } catch (err) {
    // A partial output must never look like a finished restore.
    await sink.abort(err);
    throw err;
  }
  return {
    disk,
    point: seq,
    out: sink.location,
    diskSize,
    chunkSize,
    ...stats,
    seconds: (performance.now() - started) / 1000,
    stages: clock.times,
  };
}

/**
 * Chunks in flight by default. A chunk holds its buffers through its write, and O_DIRECT writes into a sparse file
 * take turns on the inode (each allocates blocks): with 8 buffers of 1 MiB chunks the decoders stood waiting for a
 * buffer. 24 of them restored a 512 MiB point in 1.0-1.7 s against 1.3-2.7 s with 8 (three rounds alternating, load
 * average 13 on 2 cores). Large chunks keep 8, as before: memory stays about 2x this many chunk sizes.
 */
const RESTORE_BYTES_IN_FLIGHT = 24 * 1024 * 1024;

function defaultConcurrency(chunkSize: number): number {
  return Math.min(32, Math.max(8, Math.floor(RESTORE_BYTES_IN_FLIGHT / chunkSize)));
}

/** The restore's stage sums in milliseconds, a few clock reads per chunk. */
class RestoreClock {
  readonly ms: { [K in keyof RestoreStageTimes]: number } = { open: 0, fetch: 0, decode: 0, write: 0, wait: 0, finish: 0 };

  /** store, with every get's wall time added to fetch. */
  timedGets(store: ObjectStore): ObjectStore {
    const ms = this.ms;
    return {
      location: store.location,
      capabilities: store.capabilities,
      async get(key, range, into) {
        const t = performance.now();
        try {
          return await store.get(key, range, into);
        } finally {
          ms.fetch += performance.now() - t;
        }
      },
      put: (key, data, o) => store.put(key, data, o),
      head: (key) => store.head(key),
      list: (prefix) => store.list(prefix),
      delete: (key) => store.delete(key),
      close: () => store.close(),
    };
  }

  async time<T>(stage: 'read' | 'write' | 'wait', p: Promise<T>): Promise<T> {
    const t = performance.now();
    try {
      return await p;
    } finally {
      // read covers fetch and decode: decode is what the fetches did not take.
      this.ms[stage === 'read' ? 'decode' : stage] += performance.now() - t;
    }
  }

  get times(): RestoreStageTimes {
    const m = this.ms;
    const s = (x: number) => Math.round(x) / 1000;
    return {
      open: s(m.open),
      fetch: s(m.fetch),
      decode: s(Math.max(0, m.decode - m.fetch)),
      write: s(m.write),
      wait: s(m.wait),
      finish: s(m.finish),
    };
  }
}

interface PumpStats {
  chunksRestored: number;
  bytesFetched: number;
  bytesWritten: number;
}

interface PumpOptions {
  store: ObjectStore;
  disk: string;
  chain: PointManifest[];
  /** The chain again, after retention rebased the point while it was read. */
  reload: ChainReload;
  seq: number;
  seal?: ChunkSeal;
  sink: OutputSink;
  concurrency: number;
  clock: RestoreClock;
  onProgress?: (s: PumpStats) => void;
  signal?: AbortSignal;
}

/** The most zero bytes handed to the sink at once: ~0.1 s of a device's writes between looks at the stop signal. */
const ZERO_STEP = 64 * 1024 * 1024;

/**
 * The restore pipeline: up to `concurrency` chunks fetched and decoded at once (each in one of as many buffers, so a
 * slow sink stops the fetching), handed to the sink positioned as they complete, or in disk order for an ordered
 * sink. Zero chunks and holes are never fetched: the sink hears of them as zero ranges.
 */
async function pump(o: PumpOptions): Promise<PumpStats> {
  const { disk, sink, seq, seal, clock } = o;
  const store = clock.timedGets(o.store);
  const { diskSize, chunkSize } = o.chain[0];
  const stats: PumpStats = { chunksRestored: 0, bytesFetched: 0, bytesWritten: 0 };
  const slots = new BufferPool(o.concurrency, () => newReadSlot(chunkSize));
  const inflight = new Set<Promise<void>>();
  let failure: unknown;
  // Ordered sinks: each hand-over waits for the previous one (a promise chain in disk order).
  let turn: Promise<void> = Promise.resolve();
  const handOver = (give: () => Promise<number>, ready?: Promise<unknown>): Promise<void> => {
    const counted = async () => {
      const n = await clock.time('write', give()); // not `+= await give()`: that reads the total before the await and loses concurrent updates
      stats.bytesWritten += n;
    };
    if (!sink.ordered) return (ready ?? Promise.resolve()).then(counted);
    return (turn = turn.then(() => ready).then(counted));
  };
  const track = (p: Promise<void>) => {
    const q = p
      .catch((err) => {
        failure ??= err;
      })
      .finally(() => inflight.delete(q));
    inflight.add(q);
  };

  const cancelled = () =>
    new RnodeError(ErrorCodes.CANCELLED, `recovery of disk ${disk} was cancelled; ${sink.location} was not completed: run recover again`);
  // A zero range in steps, hearing a stop between them: a device or an S3 object is given every zero byte, and a
  // mostly empty disk's gap (terabytes) ignored the first SIGTERM for as long as it took to write.
  const zeroRange = async (from: number, length: number) => {
    let n = 0;
    for (let at = 0; at < length; at += ZERO_STEP) {
      if (o.signal?.aborted) throw cancelled();
      n += await sink.zero(from + at, Math.min(ZERO_STEP, length - at));
    }
    return n;
  };

  let end = 0; // everything below this offset has been handed over (or is in flight)
  const zeroUpTo = async (offset: number) => {
    if (offset <= end) return;
    const from = end;
    end = offset;
    const z = handOver(() => zeroRange(from, offset - from));
    // Positioned sinks: a zero range is written now, before more chunks are fetched (it holds no buffer).
    if (!sink.ordered) await z;
    else track(z);
  };

  try {
    for await (const e of chainViewAcrossRebase(o.store, o.chain, seal?.key, o.reload)) {
      if (failure) break;
      if (o.signal?.aborted) {
        failure = cancelled();
        break;
      }
      if (isZeroEntry(e)) continue; // a gap: handed over as zeros before the next data
      const offset = e.index * chunkSize;
      await zeroUpTo(offset);
      const slot = await clock.time('wait', slots.acquire());
      if (failure) {
        slots.release(slot);
        break;
      }
      end = offset + e.plainLength;
      const plain = clock.time('read', readChunk(store, disk, chunkSize, e, seq, slot, seal));
      plain.catch(() => undefined); // observed through the hand-over; this only silences the early rejection
      track(
        handOver(async () => sink.write(offset, await plain), plain)
          .then(() => {
            stats.bytesFetched += e.storedLength;
            stats.chunksRestored++;
            o.onProgress?.(stats);
          })
          .finally(() => slots.release(slot)),
      );
      if (inflight.size >= o.concurrency) await clock.time('wait', Promise.race(inflight));
    }
    if (!failure) await zeroUpTo(diskSize);
  } catch (err) {
    failure ??= err;
  }
  await Promise.all(inflight);
  slots.close(recycleReadSlot);
  if (failure) throw failure;
  return stats;
}

/** The ranges of a point that hold data (non-zero chunks), adjacent chunks merged, ascending. */
async function* dataExtents(store: ObjectStore, chain: PointManifest[], key: EncryptionKey | undefined, reload: ChainReload): AsyncIterable<Extent> {
  const { chunkSize } = chain[0];
  let run: Extent | undefined;
  for await (const e of chainViewAcrossRebase(store, chain, key, reload)) {
    if (isZeroEntry(e)) continue;
    const offset = e.index * chunkSize;
    if (run && run.offset + run.length === offset) {
      run.length += e.plainLength;
      continue;
    }
    if (run) yield run;
    run = { offset, length: e.plainLength };
  }
  if (run) yield run;
}
