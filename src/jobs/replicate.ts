// Writes one recovery point: reads the chunks the source says may have changed, stores the ones that did,
// then commits the manifest last. A crash at any step leaves the old set of points intact; the pending
// checkpoint lets the next run continue where this one stopped.
// Points are written in the repository v2 format (docs/repository-v2.md): each chunk is named by its keyed 32-byte
// id; a chunk already in the domain (any point of any disk) is not stored again; new ones are appended to packs,
// and every checkpoint puts the closed packs, then one index object for them, then the table segment and the
// checkpoint itself. Legacy points stay readable; the first point after them is a full v2 point.
// The parts, in src/jobs/replicate/: plan.ts (which point, which chunks), scan.ts (the chunk pipeline), prescan.ts
// (an incremental's unchanged chunks found before the pipeline), change-hashes.ts (this node's cache of each point's
// chunk hashes, which that finding compares first), packs.ts (packs and dedup), table.ts (table segments and
// checkpoints), budget.ts (the run's memory).
import { ErrorCodes, RnodeError, isRnodeError } from '../errors.js';
import { failpoint } from '../failpoint.js';
import { DEFAULT_CODEC } from '../format/codecs.js';
import { MANIFEST_FORMAT, type PointManifest } from '../format/manifest.js';
import { TABLE_SEGMENT_RECORDS, type ChunkEntry } from '../format/table.js';
import { withWorkerDomain } from '../pipeline/chunk-codec.js';
import { codecWorkers } from '../pipeline/codec-workers.js';
import { IdFilter } from '../pipeline/id-filter.js';
import type { BlockSource } from '../source/types.js';
import { assertOutsideStore } from '../store/containment.js';
import type { ObjectStore } from '../store/types.js';
import { Domain, leaseName } from '../repository/domain.js';
import { ChunkIndex } from '../repository/index-file.js';
import { r2, validateNewDiskId } from '../repository/names.js';
import { encodeManifestV4, isV2Point, MANIFEST_VERSION_V2, type V4ManifestFields } from '../repository/point-format.js';
import { WriterMarks } from '../repository/prune-marks.js';
import { BatchCursor, chainBatches, isDamage } from '../repository/view.js';
import { Lease } from '../repository/lease.js';
import type { ReplicateOptions, ReplicateResult } from './replicate/options.js';
import { ChangeHashReader, ChangeHashWriter, changeHashesAvailable, changeHashPlace } from './replicate/change-hashes.js';
import { PackWriter } from './replicate/packs.js';
import { checkedClaim, openCheckpoint, planPoint, type PointPlan } from './replicate/plan.js';
import { RunState } from './replicate/run-state.js';
import { ChunkScan } from './replicate/scan.js';
import { TableWriter } from './replicate/table.js';

export type { ReplicateOptions, ReplicateProgress, ReplicateResult } from './replicate/options.js';
export { SOURCE_CHANGED_WARNING } from './replicate/options.js';

export async function replicate(opts: ReplicateOptions): Promise<ReplicateResult> {
  const disk = validateNewDiskId(opts.disk);
  if (opts.changeHashDir !== undefined) {
    assertOutsideStore(opts.store.location, opts.changeHashDir, opts.changeHashDirFrom ?? 'cache folder');
  }
  // Start the codec workers now: they load their modules while the lease and the previous point are read, instead
  // of holding up the first chunks (~0.3 s of an otherwise idle pipeline at the start of each run).
  codecWorkers();
  const domain = Domain.of(opts.encryption);
  // A claim that refuses this key (none given, another one, one for a plain disk) refuses it before the lease is taken:
  // the lease object is the first thing a run writes, and a key-less one is named after the disk in clear. The plan
  // checks the claim again under the lease.
  await checkedClaim(opts.store, disk, opts.encryption);
  return Lease.holding(opts.store, leaseName(disk, opts.encryption), opts.lease, (lease) =>
    withWorkerDomain(domain, async () => {
      try {
        return await replicateLeased(opts, lease);
      } catch (err) {
        // A table of the parent's chain found damaged as the run read it: built upon, it would keep the disk from
        // being protected at all (every later run read it again). The point starts a chain of its own instead, once.
        const parent = parentChainDamage.get(err as object);
        if (parent === undefined) throw err;
        return replicateLeased(opts, lease, `the chain of point ${parent} is damaged (${(err as RnodeError).message})`);
      }
    }),
  );
}

/** Errors of reading the parent's chain of tables that say it is damaged (replicateLeased's parent view), with the parent. */
const parentChainDamage = new WeakMap<object, number>();

async function* markingChainDamage<T>(view: AsyncIterable<T>, parent: number): AsyncIterable<T> {
  try {
    yield* view;
  } catch (err) {
    if (isDamage(err)) parentChainDamage.set(err, parent);
    throw err;
  }
}

/** What a cancelled run kept of its point, in RNODE_CANCELLED's details.checkpoint. */
export type CheckpointState = 'all' | 'earlier' | 'none';

/**
 * A cancelled run's error says what it kept, as the next run will find it: 'all', the checkpoint written as it
 * stopped covers the chunks stored; 'earlier', only an earlier checkpoint (this run's, or the one it resumed) is
 * there, the chunks stored after it are stored again; 'none', the next run starts the point over. The checkpoint
 * written as a run stops can fail too (a store that is gone is why a run is often stopped): only what was written
 * is claimed. Any other failure is returned as it is.
 */
function withCheckpointState(err: unknown, table: TableWriter, resumed: boolean, source: BlockSource, identity: string | undefined): unknown {
  if (!isRnodeError(err, ErrorCodes.CANCELLED)) return err;
  const written = table.checkpointsWritten > 0;
  // A source that cannot say its data is still the data read (an NBD export, a VDDK disk) is never resumed
  // (openCheckpoint): its checkpoint only keeps the stored chunks known, so they are not sent again.
  const startsOver = identity === undefined ? sourceStartsOver(source) : undefined;
  const checkpoint: CheckpointState = startsOver
    ? 'none'
    : written && table.checkpointFailure === undefined
      ? 'all'
      : written || resumed
        ? 'earlier'
        : 'none';
  const kept =
    startsOver ??
    {
      all: 'the chunks stored so far are checkpointed: the next run resumes',
      earlier: 'its last checkpoint is kept (the chunks stored after it are not in it): the next run resumes from there',
      none: 'no checkpoint was written: the next run starts the point over',
    }[checkpoint];
  return new RnodeError(ErrorCodes.CANCELLED, `replication was cancelled and the point was not committed; ${kept}`, {
    cause: err,
    details: { ...err.details, checkpoint, ...(startsOver ? { startsOver } : {}) },
  });
}

/** Why the next run of a source that cannot be resumed reads the point again, and what it is spared. */
function sourceStartsOver(source: BlockSource): string {
  return `the source (${source.kind}) cannot show that its data is still the data read, so the next run reads the point again (the chunks stored are not sent again)`;
}

async function replicateLeased(opts: ReplicateOptions, lease: Lease | undefined, damagedChain?: string): Promise<ReplicateResult> {
  const started = performance.now();
  const { store, source } = opts;
  const plan = await planPoint(opts, damagedChain);
  const { disk, seq, domain, grid, latest, parent } = plan;
  if (plan.full) codecWorkers().start(); // every chunk is encoded: the lanes the process deferred start now
  const identity = await source.identity?.();
  const from = await openCheckpoint(opts, plan, identity);
  // Every chunk already in the domain, and prune's marks (a marked pack's chunks are never reused), never older than
  // the marks this disk's latest point or this point's checkpoint saw (an older marks object put back is a replay).
  const index = await ChunkIndex.loadShared(store, domain);
  const known = new IdFilter(index.size + grid.count);
  for (const id of index.ids()) known.add(id);
  const latestGeneration = latest && isV2Point(latest) ? (latest.marksGeneration ?? 0) : 0;
  const marks =
    from.marksGeneration > latestGeneration
      ? new WriterMarks(store, domain, from.marksGeneration, `recorded by the checkpoint of point ${seq} of disk ${disk}`)
      : new WriterMarks(store, domain, latestGeneration, `recorded by point ${latest?.point} of disk ${disk}`);
  const run = new RunState(from.stats);
  const changes = await openChangeHashes(opts, plan, from.nextIndex);
  const packs = new PackWriter({
    store,
    domain,
    index,
    known,
    marks,
    reused: from.reused,
    packSize: plan.packSize,
    packBuffers: plan.packBuffers,
    run,
    ...(opts.signal ? { stop: opts.signal } : {}),
  });
  try {
    await packs.refreshMarks();
    const table = new TableWriter({
      store,
      source,
      identity,
      plan,
      from,
      packs,
      marks,
      run,
      lease,
      checkpointRecords: opts.checkpointRecords ?? TABLE_SEGMENT_RECORDS,
      checkpointMillis: opts.checkpointMillis ?? 15_000,
    });
    const changeMarker = await source.changeMarker();
    const scan = new ChunkScan({ opts, codec: opts.codec ?? DEFAULT_CODEC, plan, from, packs, table, known, run, lease, changes });

    let parentView: BatchCursor<ChunkEntry> | undefined;
    if (plan.chain) {
      const view = markingChainDamage(chainBatches(store, plan.chain, opts.encryption), plan.parent!.point);
      // A table that stands alone carries the parent's entries for the chunks this run does not store.
      parentView = new BatchCursor(plan.tableParent === null ? teed(view, (e) => table.carry(e)) : view);
    }
    await scan.run(parentView);
    // A raw file written while it was read: the point is still made (a live file is often all there is), and says so.
    const changedWhileRead = identity !== undefined && (await source.identity?.()) !== identity;
    await table.settled();
    if (run.failed) {
      // Keep what was stored in order: the next run resumes after it instead of redoing it.
      if (table.waiting > 0 && !table.checkpointFailure) {
        table.flush(scan.nextIndex);
        await table.settled();
      }
      throw withCheckpointState(run.failure, table, from.resumed, source, identity);
    }
    if (table.waiting > 0 || table.segments.length === 0) table.flush(grid.count);
    await table.settled();
    if (run.failed) throw run.failure;

    // On a scan every chunk not read as data is zero, holes included.
    const { stats } = run;
    if (plan.scan) stats.chunksZero = grid.count - stats.chunksData;
    // Every pack, index and table segment is durable: commit.
    opts.onProgress?.({
      phase: 'commit',
      bytesRead: stats.bytesRead,
      bytesWritten: stats.bytesWritten,
      chunksDone: scan.settledCount,
      position: grid.diskSize,
      diskSize: grid.diskSize,
    });
    await lease?.check();
    await opts.beforeCommit?.();
    try {
      await checkPacks(store, domain, marks, packs.reused, packs.ownPacks, packs.reusedEnds);
    } catch (err) {
      // The checkpoint names chunks in those packs: the next run must store them anew, not continue it (it committed
      // a point over a deleted pack, or refused again, run after run).
      if (isRnodeError(err, ErrorCodes.CHUNK_MISSING)) await store.delete(r2.pending(domain.name, domain.dname(disk), seq)).catch(() => undefined);
      throw err;
    }
    failpoint('before-commit');
    const seconds = (performance.now() - started) / 1000;
    const manifest = await commitPoint(store, plan, { source, run, table, marks, lease, changeMarker, seconds });
    await store.delete(r2.pending(domain.name, domain.dname(disk), seq)).catch(() => undefined);
    if (changes && !(await changes.writer.finish(manifest))) opts.onChangeHashesNotKept?.(changes.writer.failure);
    return {
      disk,
      point: seq,
      parent: manifest.parent,
      full: plan.full,
      ...(parent && manifest.parent === null ? { rebasedFrom: parent.point } : {}),
      ...(plan.fullReason ? { fullReason: plan.fullReason } : {}),
      ...(plan.rescanReason ? { rescanReason: plan.rescanReason } : {}),
      resumed: from.resumed,
      ...(scan.comparedBy ? { comparedBy: scan.comparedBy } : {}),
      diskSize: grid.diskSize,
      chunkSize: grid.chunkSize,
      bytesRead: stats.bytesRead,
      bytesWritten: stats.bytesWritten + manifest.bytes,
      chunksTotal: grid.count,
      chunksChanged: stats.chunksChanged,
      chunksZero: stats.chunksZero,
      chunksDeduplicated: stats.chunksDeduplicated,
      bytesDeduplicated: stats.bytesDeduplicated,
      packsWritten: stats.packsWritten,
      seconds,
      stages: scan.clock.times,
      ...(manifest.encryption ? { encryption: manifest.encryption } : {}),
      ...(changedWhileRead ? { sourceChangedWhileRead: true } : {}),
    };
  } finally {
    // Puts still running keep their buffers; the idle ones serve the next run.
    packs.releaseBuffers();
    await changes?.close();
  }
}

/**
 * The change hashes of this run (change-hashes.ts), where it keeps them (opts.changeHashDir) and libxxhash is here,
 * with the parent's when this node holds them. None for a resumed run: the chunks its checkpoint covers were stored
 * by a run whose hashes are gone.
 */
async function openChangeHashes(opts: ReplicateOptions, plan: PointPlan, resumeAt: number) {
  if (opts.changeHashDir === undefined || !changeHashesAvailable() || resumeAt > 0) return undefined;
  const place = changeHashPlace(opts.changeHashDir, opts.store.location, plan.domain, plan.disk, plan.grid);
  // The parent's hashes, read in index order: by the scan's prescan, or by the writer for a tracked point's unread chunks.
  const parent = plan.parent && !plan.full ? await ChangeHashReader.open(place, plan.parent) : undefined;
  const writer = new ChangeHashWriter(place, plan.scan || plan.full ? 'zero' : parent);
  return {
    seed: place.seed,
    parent: plan.scan ? parent : undefined,
    writer,
    async close() {
      await writer.abort(); // after finish(), only its temp file's removal, which is gone
      await parent?.close();
    },
  };
}

/** Puts the point's manifest, the commit: created once, never over another writer's point of the same number. */
async function commitPoint(
  store: ObjectStore,
  plan: PointPlan,
  r: {
    source: BlockSource;
    run: RunState;
    table: TableWriter;
    marks: WriterMarks;
    lease: Lease | undefined;
    changeMarker: string | undefined;
    seconds: number;
  },
): Promise<PointManifest & { bytes: number }> {
  const { disk, seq, domain, grid } = plan;
  const { stats } = r.run;
  const { source } = r;
  const manifest: PointManifest & V4ManifestFields = {
    format: MANIFEST_FORMAT,
    version: MANIFEST_VERSION_V2,
    ...(domain.key ? { encryption: { alg: 'aes-256-gcm' as const, keyId: domain.key.keyId } } : {}),
    disk,
    point: seq,
    parent: plan.tableParent,
    full: plan.full,
    createdAt: new Date().toISOString(),
    diskSize: grid.diskSize,
    chunkSize: grid.chunkSize,
    source: {
      kind: source.kind,
      location: source.location,
      ...(r.changeMarker ? { marker: r.changeMarker } : {}),
      ...(plan.fullReason ? { fullReason: plan.fullReason } : {}),
      ...(plan.rescanReason ? { rescanReason: plan.rescanReason } : {}),
    },
    table: { generation: 0, records: r.table.records, segments: r.table.segments },
    ...(r.lease ? { fence: r.lease.token } : {}),
    marksGeneration: r.marks.generation,
    stats: {
      chunksTotal: grid.count,
      chunksChanged: stats.chunksChanged,
      chunksZero: stats.chunksZero,
      bytesRead: stats.bytesRead,
      bytesWritten: stats.bytesWritten,
      seconds: r.seconds,
      bytesDeduplicated: stats.bytesDeduplicated,
      chunksDeduplicated: stats.chunksDeduplicated,
      packsWritten: stats.packsWritten,
    },
  };
  const mbytes = encodeManifestV4(domain, manifest);
  const mkey = r2.point(domain.name, domain.dname(disk), seq);
  try {
    await store.put(mkey, mbytes, { ifNoneMatch: true });
  } catch (err) {
    if (!isRnodeError(err, ErrorCodes.STORE_PRECONDITION)) throw err;
    // A retried create can fail because its first attempt landed: the commit is ours if the bytes are.
    const existing = await store.get(mkey).catch(() => undefined);
    if (!existing?.equals(mbytes)) {
      throw new RnodeError(ErrorCodes.LEASE_LOST, `point ${seq} of disk ${disk} was committed by another writer; run again to write the next point`);
    }
  }
  failpoint('after-commit');
  return { ...manifest, bytes: mbytes.length };
}

/**
 * Before a commit: every pack this point reuses chunks from (written by other runs) must still be there, as long as
 * the chunks reused from it reach, and not marked by prune; otherwise a prune running beside this replicate may delete it after the commit. So must the packs
 * this run wrote: one put longer than a grace period before a checkpoint named it looks unused to prune (a short
 * --grace), and prunes marked and then deleted such packs under a point that committed (exit 0) and never restored.
 * Fails (never commits) so the next run stores those chunks again. The marks are read even when nothing was reused:
 * the manifest records their generation.
 */
async function checkPacks(
  store: ObjectStore,
  domain: Domain,
  marks: WriterMarks,
  reused: Set<string>,
  own: ReadonlySet<string>,
  ends: ReadonlyMap<string, number>,
): Promise<void> {
  const marked = await marks.blockedPacks();
  for (const id of own) {
    if (marked.has(id)) {
      throw new RnodeError(
        ErrorCodes.CHUNK_MISSING,
        `pack ${r2.pack(domain.name, id)}, which this replicate wrote, was marked for deletion by a prune running meanwhile ` +
          '(its grace period, --grace, is shorter than this run took to name the pack in a checkpoint); the point was not committed: ' +
          'run replicate again (it stores those chunks anew), and give prune a longer --grace',
        { retryable: true, details: { key: r2.pack(domain.name, id) } },
      );
    }
  }
  if (reused.size === 0) return;
  const ids = [...reused];
  let next = 0;
  const check = async () => {
    while (next < ids.length) {
      const id = ids[next++];
      let gone = marked.has(id);
      if (!gone) {
        let size: number;
        try {
          size = (await store.head(r2.pack(domain.name, id))).size;
        } catch (err) {
          if (!isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) throw err;
          gone = true;
          size = 0;
        }
        // A pack cut short (its index still places chunks past its end): a point over it never restored.
        const end = ends.get(id) ?? 0;
        if (!gone && size < end) {
          throw new RnodeError(
            ErrorCodes.CHUNK_MISSING,
            `pack ${r2.pack(domain.name, id)}, which this point reuses chunks from, is cut short (${size} bytes; its chunks reach ${end}); ` +
              'the point was not committed: run "rnode check --read-data --repair" (it keeps the intact chunks and drops the lost ones), then replicate again',
            { details: { key: r2.pack(domain.name, id), size, end } },
          );
        }
      }
      if (gone) {
        throw new RnodeError(
          ErrorCodes.CHUNK_MISSING,
          `pack ${r2.pack(domain.name, id)}, which this point reuses chunks from, was ${marked.has(id) ? 'marked for deletion' : 'deleted'} by a prune running meanwhile; ` +
            'the point was not committed: run replicate again (it stores those chunks anew)',
          { retryable: true, details: { key: r2.pack(domain.name, id) } },
        );
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(8, ids.length) }, check));
}

/** The batches of src, each entry also handed to f as its batch is read. */
async function* teed<T>(src: AsyncIterable<T[]>, f: (e: T) => void): AsyncIterable<T[]> {
  for await (const batch of src) {
    for (const e of batch) f(e);
    yield batch;
  }
}
