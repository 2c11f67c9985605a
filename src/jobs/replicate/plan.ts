// What point a replicate run writes: its number, its parent (its table is a delta against the parent's when the
// geometry matches), whether it reads every allocated chunk or only the changed ones, and where an interrupted run
// of the same point stopped. Every check that refuses a writer (wrong key, another repository's disk) is made here,
// before any object is written.
import fs from 'node:fs/promises';
import path from 'node:path';
import { ErrorCodes, RnodeError, isRnodeError } from '../../errors.js';
import type { PointManifest, SegmentRef } from '../../format/manifest.js';
import { ChunkGrid, chunkBatchesOf, DEFAULT_CHUNK_SIZE, validateChunkSize } from '../../pipeline/grid.js';
import type { BlockSource } from '../../source/types.js';
import type { ChunkEntry } from '../../format/table.js';
import { checkClaim, ensureClaim, readClaim, type DiskClaim } from '../../repository/claims.js';
import type { EncryptionKey } from '../../crypto/keys.js';
import type { ObjectStore } from '../../store/types.js';
import { Domain, domainName, MIN_PACK_SIZE, validatePackSize } from '../../repository/domain.js';
import { checkChainAuthenticity, checkWriteKey, readDiskMarker } from '../../repository/encryption.js';
import { r2, validateDiskId } from '../../repository/names.js';
import { packSizeFor } from '../../repository/pack.js';
import { isV2Point } from '../../repository/point-format.js';
import { chainFrom, listPointSeqs, listV2PointSeqs, loadPoint, loadV2Checkpoint } from '../../repository/points.js';
import { BatchCursor, isDamage } from '../../repository/view.js';
import { packPlan } from './budget.js';
import type { Checkpoint, ReplicateOptions, RunStats } from './options.js';

/**
 * Points in a chain of delta tables before a point's table stands alone again. Every read of a point (an incremental's
 * comparison, a restore, an export) merges its chain's tables and walks its manifests one by one: on a cloud store
 * each is a round trip, and a chain that grew with every hourly point would make each job slower than the last. A
 * closing point rewrites only the table (48 bytes a chunk), never the data.
 */
export const MAX_CHAIN_POINTS = 32;

export interface PointPlan {
  disk: string;
  /** The number of the point this run writes. */
  seq: number;
  /** The disk's latest point, and the encryption marker its points were checked against. */
  latest?: PointManifest;
  marker: Awaited<ReturnType<typeof readDiskMarker>>;
  domain: Domain;
  grid: ChunkGrid;
  packSize: number;
  packBuffers: number;
  /** The point this run compares the disk with (its chunks already stored); undefined for a full point. */
  parent?: PointManifest;
  /** The parent and its ancestors, newest first: the chain whose merged view the scan compares with. */
  chain?: PointManifest[];
  /**
   * The point this point's table is a delta against: the parent, or null when the table stands alone (a full point,
   * or the parent's chain has maxChain points and this table carries its entries).
   */
  tableParent: number | null;
  full: boolean;
  /** Every allocated chunk is read (no usable change tracking), compared with the parent by content. */
  scan: boolean;
  fullReason?: string;
  rescanReason?: string;
  /** Indexes of the chunks to read, ascending, in batches. */
  toRead: AsyncIterable<number[]>;
}

/**
 * A disk id taken from the source file's name (the CLI without --disk) must not continue another file's disk:
 * /vms/a/disk.img and /vms/b/disk.img (or two names that differ only in characters an id cannot hold) would become
 * one disk, each point replacing the other's disk in recover and prune deleting the other's points. Points recorded
 * a relative path before the CLI recorded absolute ones: those cannot be told apart, and pass. Paths are compared
 * with symlinks resolved, so the same file reached through a link (/dev/disk/by-id/..., a linked image folder) is the
 * same; a path that no longer resolves is compared as written.
 */
async function checkSameFile(latest: PointManifest, source: BlockSource, disk: string): Promise<void> {
  const was = latest.source;
  if (was.kind !== 'raw' || source.kind !== 'raw' || !path.isAbsolute(was.location) || was.location === source.location) return;
  const resolved = await Promise.all([was.location, source.location].map((p) => fs.realpath(p).catch(() => undefined)));
  if (resolved[0] !== undefined && resolved[0] === resolved[1]) return;
  throw new RnodeError(
    ErrorCodes.USAGE,
    `disk ${disk} (its id taken from the file's name) holds the points of ${was.location}, not of ${source.location}; pass --disk to give this source a disk of its own, or --disk ${disk} if it is the same disk, moved`,
    { details: { disk, pointsOf: was.location } },
  );
}

/**
 * damagedChain: why the chain of the latest point cannot be built upon though its manifests read (a table of it
 * turned out damaged while a run of this point read it): the point then starts a chain of its own.
 */
export async function planPoint(opts: ReplicateOptions, damagedChain?: string): Promise<PointPlan> {
  const { store, source } = opts;
  const disk = validateDiskId(opts.disk);
  const maxChain = opts.maxChain ?? MAX_CHAIN_POINTS;
  if (!Number.isSafeInteger(maxChain) || maxChain < 1) {
    throw new RnodeError(ErrorCodes.USAGE, `maxChain must be a whole number of points, at least 1 (got ${maxChain})`);
  }
  // The disk's claim, read once for the listing (a key-less one is checked against it) and the check below.
  const claimRead = readClaim(store, disk);
  claimRead.catch(() => undefined); // its failure is the listing's or the check's, whichever awaits it first
  const seqs = await listPointSeqs(store, disk, opts.encryption, claimRead);
  const lastSeq = seqs.length ? seqs[seqs.length - 1] : 0;
  // A damaged latest point (or, below, a damaged point in its chain) cannot be built upon, and must not stop the
  // disk's protection for good: the new point starts a chain of its own, and says why.
  let damage: string | undefined = damagedChain;
  const latest = lastSeq
    ? await loadPoint(store, disk, lastSeq, opts.encryption).catch((err: unknown) => {
        if (!isDamage(err)) throw err;
        damage = `point ${lastSeq} is damaged (${err.message})`;
        return undefined;
      })
    : undefined;
  const marker = await readDiskMarker(store, disk, opts.encryption);
  checkWriteKey(latest, opts.encryption, disk, marker);
  if (opts.diskNamedAfterSource && latest) await checkSameFile(latest, source, disk);
  // The disk's claim names the repository its v2 points are in: a writer with no key or another key is refused here,
  // where it could not otherwise see an encrypted disk's keyed names. Claimed now, before any object is written.
  const claim = await checkedClaim(store, disk, opts.encryption, claimRead);
  // An unencrypted disk's v2 points are listed without a key: a key given for it would start a second, encrypted
  // chain of the same disk id. (Another key's encrypted disk cannot be seen: its names are keyed; it is another
  // repository of the store.)
  if (opts.encryption && !latest && (await listV2PointSeqs(store, disk, undefined)).length > 0) {
    throw new RnodeError(
      ErrorCodes.KEY_MISMATCH,
      `disk ${disk} is not encrypted and a disk's points never mix encrypted and unencrypted chunks; leave out the key, or replicate to a new --disk id to start an encrypted disk`,
      { details: { disk } },
    );
  }
  const domain = await Domain.openOrCreate(store, opts.encryption, opts.packSize);
  if (!claim) await ensureClaim(store, disk, opts.encryption);
  // A store with an object limit (a ws node's, learnt in its handshake, which the reads above made) gets packs that fit
  // it, whatever the repository's or --pack-size says.
  const packs = packPlan(
    packSizeFor(store, validatePackSize(opts.packSize ?? domain.config.packSize), MIN_PACK_SIZE),
    opts.packSize !== undefined,
    opts.bufferBytes,
  );
  const chunkSize = validateChunkSize(opts.chunkSize ?? latest?.chunkSize ?? DEFAULT_CHUNK_SIZE);
  const grid = new ChunkGrid(source.size, chunkSize);

  // The table is a delta against the latest point whenever the geometry matches; otherwise it stands alone.
  let parent: PointManifest | undefined = damage ? undefined : latest;
  let fullReason: string | undefined;
  if (damage) fullReason = `${damage}; a new chain starts here, and the damaged points stay as they are (rnode check, prune)`;
  else if (!latest) fullReason = 'first point of the disk';
  else if (latest.diskSize !== source.size) {
    parent = undefined;
    fullReason = `disk size changed from ${latest.diskSize} to ${source.size}`;
  } else if (latest.chunkSize !== chunkSize) {
    parent = undefined;
    fullReason = `chunk size changed from ${latest.chunkSize} to ${chunkSize}`;
  } else if (!isV2Point(latest)) {
    parent = undefined;
    fullReason = 'repository format upgraded';
  } else if (opts.forceFull) {
    // Nothing is taken from the parent: every chunk is looked up in the repository's index and stored where it is in
    // no pack. After check --repair dropped a damaged chunk, this is what stores it anew (an incremental would keep
    // the parent's record of it, unchanged).
    parent = undefined;
    fullReason = 'full point requested';
  }

  let chain: PointManifest[] | undefined;
  if (parent) {
    chain = await chainFrom(store, parent, opts.encryption).catch((err: unknown) => {
      if (!isDamage(err)) throw err;
      fullReason = `the chain of point ${parent!.point} is damaged (${err.message}); a new chain starts here, and the damaged points stay as they are (rnode check, prune)`;
      return undefined;
    });
    if (!chain) parent = undefined;
    // The parent's records decide what this point stores: a forged parent table must not be built upon.
    else checkChainAuthenticity(chain, opts.encryption, marker, disk);
  }
  // What to read: changed extents when the source tracks changes and has a usable marker, else allocated areas.
  let changed: AsyncIterable<number[]> | undefined;
  if (parent && !opts.forceFull && source.tracksChanges) {
    if (!parent.source.marker || parent.source.kind !== source.kind) {
      fullReason = 'previous point has no change marker from this source';
    } else if (!source.tracksSameDiskAs?.(parent.source.location)) {
      // Another server, socket, export or VM disk can hold a bitmap or change id of the same name: trusting it would
      // keep the previous disk's data wherever this one's tracking says nothing changed.
      fullReason = `previous point was read from ${parent.source.location}, which is not ${source.location} as far as rnode can tell, so its change marker "${parent.source.marker}" may be another disk's`;
    } else {
      const peeked = await peekChanged(source, parent.source.marker, grid);
      if (peeked.error) fullReason = `change tracking unusable: ${peeked.error.message}`;
      else changed = peeked.indexes;
    }
  } else if (parent && !source.tracksChanges) fullReason = undefined; // raw: every point is a scan, compared by content
  // A point is full when nothing is compared; it is a scan when every allocated chunk is read.
  const full = parent === undefined;
  const scan = changed === undefined;
  return {
    disk,
    seq: lastSeq + 1,
    latest,
    marker,
    domain,
    grid,
    packSize: packs.packSize,
    packBuffers: packs.buffers,
    parent,
    chain,
    tableParent: parent && chain!.length < maxChain ? parent.point : null,
    full,
    scan,
    fullReason: full ? fullReason : undefined,
    rescanReason: scan && !full ? fullReason : undefined,
    toRead: changed ?? chunkBatchesOf(source.allocatedExtents(), grid),
  };
}

async function peekChanged(source: BlockSource, marker: string, grid: ChunkGrid): Promise<{ indexes?: AsyncIterable<number[]>; error?: RnodeError }> {
  // The first page is where a tracking reset shows up; ask for it before committing to an incremental.
  const it = source.changedExtentsSince(marker)[Symbol.asyncIterator]();
  let first: IteratorResult<{ offset: number; length: number }>;
  try {
    first = await it.next();
  } catch (err) {
    if (isRnodeError(err, ErrorCodes.CHANGE_MARKER_INVALID)) return { error: err };
    throw err;
  }
  async function* rest() {
    if (first.done) return;
    yield first.value;
    for (;;) {
      const r = await it.next();
      if (r.done) return;
      yield r.value;
    }
  }
  return { indexes: chunkBatchesOf(rest(), grid) };
}

/** A candidate chunk: read it, or (when only the parent knows it) decide without reading. */
export interface Candidate {
  index: number;
  read: boolean;
  parent?: ChunkEntry;
}

/** Candidates per batch (the batches of the indexes and of the parent's view are cut anew). */
const CANDIDATE_BATCH = 512;

/**
 * Merges the ascending indexes to read with the parent's view, so each index is decided once, in order; in batches.
 * A batch is handed on before either input is waited for, so what is known goes on while the next is fetched.
 */
export async function* candidates(toRead: AsyncIterable<number[]>, parentView: BatchCursor<ChunkEntry> | undefined): AsyncIterable<Candidate[]> {
  const reads = new BatchCursor(toRead);
  await reads.next();
  if (parentView) await parentView.next();
  let out: Candidate[] = [];
  try {
    for (;;) {
      const r = reads.current;
      const p = parentView?.current;
      if (r === undefined && p === undefined) break;
      let readsNext: Promise<void> | undefined;
      let parentNext: Promise<void> | undefined;
      if (p === undefined || (r !== undefined && r < p.index)) {
        out.push({ index: r!, read: true });
        readsNext = reads.next();
      } else if (r === undefined || p.index < r) {
        out.push({ index: p.index, read: false, parent: p });
        parentNext = parentView!.next();
      } else {
        out.push({ index: r, read: true, parent: p });
        readsNext = reads.next();
        parentNext = parentView!.next();
      }
      if (readsNext || parentNext || out.length >= CANDIDATE_BATCH) {
        // Awaited below; a consumer that stops at this yield never comes back for them.
        readsNext?.catch(() => undefined);
        parentNext?.catch(() => undefined);
        yield out;
        out = [];
        await readsNext;
        await parentNext;
      }
    }
    if (out.length) yield out;
  } finally {
    await reads.close();
  }
}

/** Where this run starts: the checkpoint of an interrupted run of the very same point, or the beginning. */
export interface ResumeFrom {
  resumed: boolean;
  segments: SegmentRef[];
  records: number;
  nextIndex: number;
  stats: RunStats;
  reused: string[];
  /** The generation of prune's marks any checkpoint that opened had seen (resumed or not), else 0. */
  marksGeneration: number;
}

/**
 * The disk's claim, checked against the key: refused (KEY_REQUIRED, KEY_MISMATCH) when it names another repository,
 * and METADATA_FORGED when the key's repository holds points of the disk all the same (listed only then: a replaced
 * claim must not advise leaving out the key).
 */
export async function checkedClaim(
  store: ObjectStore,
  disk: string,
  key: EncryptionKey | undefined,
  claimRead: Promise<DiskClaim | undefined> = readClaim(store, disk),
): Promise<DiskClaim | undefined> {
  const claim = await claimRead;
  const keyHoldsPoints =
    key !== undefined && claim !== undefined && claim.domain !== domainName(key) && (await listV2PointSeqs(store, disk, key)).length > 0;
  checkClaim(claim, key, disk, keyHoldsPoints);
  return claim;
}

export async function openCheckpoint(opts: ReplicateOptions, plan: PointPlan, identity: string | undefined): Promise<ResumeFrom> {
  const { store, source } = opts;
  const { domain, disk, seq, grid } = plan;
  const parent = plan.tableParent;
  const fresh = {
    resumed: false,
    segments: [] as SegmentRef[],
    records: 0,
    nextIndex: 0,
    reused: [] as string[],
    marksGeneration: 0,
    stats: {
      bytesRead: 0,
      bytesWritten: 0,
      chunksChanged: 0,
      chunksZero: 0,
      chunksData: 0,
      chunksDeduplicated: 0,
      bytesDeduplicated: 0,
      packsWritten: 0,
    } as RunStats,
  };
  let ck: Checkpoint | undefined;
  try {
    // Sealed in an encrypted domain: a forged checkpoint (one that would skip chunks) does not open.
    ck = (await loadV2Checkpoint(store, disk, seq, domain.key)) as Checkpoint | undefined;
  } catch (err) {
    if (isRnodeError(err, ErrorCodes.METADATA_FORGED) || isRnodeError(err, ErrorCodes.MANIFEST_CORRUPT) || err instanceof SyntaxError) return fresh;
    throw err;
  }
  // The marks generation any checkpoint that opens saw counts, resumed or not (this run overwrites it).
  const g = ck?.marksGeneration;
  const marksGeneration = typeof g === 'number' && Number.isSafeInteger(g) && g > 0 ? g : 0;
  // Only a checkpoint of the very same point (same parent, geometry, source and mode) can be continued.
  if (
    opts.resume === false ||
    ck?.format !== 'rnode-pending' ||
    ck.point !== seq ||
    ck.parent !== parent ||
    ck.scan !== plan.scan ||
    ck.diskSize !== grid.diskSize ||
    ck.chunkSize !== grid.chunkSize ||
    ck.source?.kind !== source.kind ||
    ck.source?.location !== source.location ||
    !Array.isArray(ck.segments) ||
    // One that covers no chunk: nothing to continue (the run would say it resumed while it read the whole point).
    !(ck.nextIndex > 0) ||
    ck.keyId !== opts.encryption?.keyId ||
    !Array.isArray(ck.reused) ||
    // The data read before the cut must be the data now; a source that cannot tell is never resumed.
    identity === undefined ||
    ck.source?.identity !== identity
  ) {
    return { ...fresh, marksGeneration };
  }
  const segments = ck.segments.map((r, n) => ({ ...r, key: r2.segment(domain.name, domain.dname(disk), seq, 0, n) }));
  return {
    resumed: true,
    segments,
    records: ck.records,
    nextIndex: ck.nextIndex,
    stats: { ...fresh.stats, ...ck.stats },
    reused: ck.reused,
    marksGeneration,
  };
}
