// Prune of repository v2: retention of a disk's v2 points, then per domain a reference scan, the two-phase sweep of
// packs (mark now, delete after the grace period if still unused), repack of packs mostly unused, index compaction.
// Every step writes before it deletes, so a SIGKILL anywhere leaves every kept point restorable; the rules, and why a
// concurrent replicate never loses a chunk, are in docs/prune.md.
import type { EncryptionKey } from '../crypto/keys.js';
import { ErrorCodes, RnodeError, isRnodeError } from '../errors.js';
import { failpoint } from '../failpoint.js';
import { xxh64 } from '../format/checksum.js';
import { isZeroEntry, TABLE_SEGMENT_RECORDS, type ChunkEntry } from '../format/table.js';
import type { ObjectStore } from '../store/types.js';
import { allocAlignedUnsafe, discardPages } from '../native/index.js';
import { forEachBounded } from '../pipeline/bounded.js';
import { BlobCopier, INDEX_TARGET_ENTRIES } from './blob-copier.js';
import { Domain } from '../repository/domain.js';
import { ChunkIndex, encodeIndex, listIndexIds, type ChunkLocation } from '../repository/index-file.js';
import { Lease, type LeaseOptions } from '../repository/lease.js';
import { PLAIN_DOMAIN, PRUNE_LEASE_PREFIX, classify, r2, validateDiskId, type ObjectId } from '../repository/names.js';
import { newObjectId, type BlobEntry } from '../repository/pack.js';
import { encodeManifestV4, encodeTableV3, segmentDigest, type V2PointManifest } from '../repository/point-format.js';
import {
  checkKeyOpensOne,
  explainNoPoints,
  listDomains,
  listLegacyPointSeqs,
  refuseLegacyAfterUpgrade,
  listV2Disk,
  listV2Disks,
  listV2PointSeqs,
  loadV2Chain,
  loadV2Checkpoint,
  loadV2Point,
  staleDiskObjects,
  v2DiskId,
  type V2DiskObjects,
} from '../repository/points.js';
import { PruneMarks, checkMarksGeneration, readPruneMarks, writePruneMarks } from '../repository/prune-marks.js';
import { chainView, isDamage, pendingTableEntries, referencesChunk, tableEntries } from '../repository/view.js';
import { vmPointsUsing } from '../repository/vm-points.js';
import { dropLegacyPoints, pruneLegacy, type PruneOptions, type PruneResult } from './prune.js';

/**
 * Missing chunk ids a reference scan looks up again in the index as it is at its end, at most: what a point committed
 * during the scan can add (a 64 GiB full point of 1 MiB chunks). More than that are taken as missing (nothing deleted).
 */
const MAX_RECHECKED = 65536;

/** Default grace period: far longer than a lease (10 min at most) and a checkpoint interval (15 s). */
export const DEFAULT_GRACE_MS = 60 * 60_000;
/** Default --max-unused, as a fraction: the knee of bytes rewritten against waste saved (docs/prune.md, bench/sections/repack.ts). */
export const DEFAULT_MAX_UNUSED = 0.5;
/** Tombstones of deleted packs are kept at least this long (and as long as an index lists the pack). */
const TOMBSTONE_MS = 24 * 60 * 60_000;
/** How often a SweepPacer lets retention sweep a domain: well inside the grace period, so deletion is barely delayed. */
export const DEFAULT_SWEEP_INTERVAL_MS = 10 * 60_000;
/** Index objects a domain may gather between paced sweeps before retention compacts them (every replicate loads them all). */
const PILED_INDEXES = 64;

/** The lease one prune of a domain holds (a disk-lease name no new disk may take: validateNewDiskId, docs/prune.md). */
export const pruneLeaseName = (domain: string): string => `${PRUNE_LEASE_PREFIX}${domain}`;

/**
 * When this process last swept each domain of a store. Retention runs after every replicate of an agent, and a sweep
 * reads every point's tables and lists every pack: with one per run, a run's cost grew with the repository (an agent
 * soak: runs per minute fell from 60 to 38 over 75 min while RSS rose from 144 to 177 MiB). With a pacer, retention
 * sweeps a domain at most once per interval and in between only compacts its index objects when they pile up.
 */
export class SweepPacer {
  readonly #last = new Map<string, number>();
  constructor(
    readonly intervalMs = DEFAULT_SWEEP_INTERVAL_MS,
    private readonly now: () => number = Date.now,
  ) {}

  due(store: ObjectStore, domain: string): boolean {
    const last = this.#last.get(`${store.location}\n${domain}`);
    return last === undefined || this.now() - last >= this.intervalMs;
  }

  swept(store: ObjectStore, domain: string): void {
    this.#last.set(`${store.location}\n${domain}`, this.now());
  }
}

/** How a domain's maintenance sweeps: the grace of its marks, when it repacks, its concurrency and its clock. */
interface SweepSettings {
  graceMs?: number;
  /** Repack packs whose unused share exceeds this fraction (0: never). */
  maxUnused?: number;
  concurrency?: number;
  now?: () => number;
}

export interface MaintainOptions extends SweepSettings {
  store: ObjectStore;
  domain: Domain;
  lease?: LeaseOptions | false;
  /** Start the marks afresh (after PRUNE_MARKS_REPLAYED): every unused pack is seen again, nothing is deleted on this run. */
  resetMarks?: boolean;
  /** Stops after the scan, between pack deletes (the marks of those deleted are written first) and between phases. */
  signal?: AbortSignal;
}

export interface MaintainResult {
  domain: string;
  /** Why the sweep did not run (a SweepPacer found the domain swept recently); index compaction may still have. */
  skipped?: string;
  packs: number;
  /** Packs found unused for the first time (writers may still use them). */
  packsSeen: number;
  packsMarked: number;
  packsUnmarked: number;
  packsDeleted: number;
  bytesDeleted: number;
  packsRepacked: number;
  /** Blob bytes copied by repack (what it costs in writes). */
  bytesRewritten: number;
  packsWritten: number;
  indexesWritten: number;
  indexesDeleted: number;
  /** Table segments and checkpoints no point needs, of disks whose retention stopped before deleting them. */
  tableObjectsDeleted: number;
  /** Referenced chunk ids no existing pack holds: damage, reported, never "repaired" by deleting more. */
  missingChunks: number;
  /** Why nothing was deleted in this run, when something could not be proven unused or another prune is sweeping. */
  deferred?: string;
  /** The holder of the domain's prune lease, when the sweep was left to that prune. */
  sweptBy?: string;
  seconds: number;
}

export interface PackInfo {
  size: number;
  /** Distinct blobs the index knows in this pack, by offset. */
  blobs: Map<number, BlobEntry>;
  /** Offsets of blobs holding a canonical location of a referenced chunk. */
  used: Set<number>;
  /** Of those, the ones only points being written (checkpoints) reference so far; made on the first. */
  pendingOnly?: Set<number>;
}

function emptyMaintainResult(domain: Domain): MaintainResult {
  return {
    domain: domain.name,
    packs: 0,
    packsSeen: 0,
    packsMarked: 0,
    packsUnmarked: 0,
    packsDeleted: 0,
    bytesDeleted: 0,
    packsRepacked: 0,
    bytesRewritten: 0,
    packsWritten: 0,
    indexesWritten: 0,
    indexesDeleted: 0,
    tableObjectsDeleted: 0,
    missingChunks: 0,
    seconds: 0,
  };
}

export async function maintainDomain(opts: MaintainOptions): Promise<MaintainResult> {
  if (opts.lease === false) return maintainLeased(opts);
  let lease: Lease;
  try {
    lease = await Lease.acquire(opts.store, pruneLeaseName(opts.domain.name), opts.lease);
  } catch (err) {
    throw isRnodeError(err, ErrorCodes.LEASE_HELD) ? anotherPruneSweeps(opts.store, opts.domain.name, err) : err;
  }
  try {
    return await maintainLeased(opts);
  } finally {
    await lease.release();
  }
}

/** The lease's own message speaks of a disk being written; the prune lease of a domain is another prune's sweep. */
function anotherPruneSweeps(store: ObjectStore, domain: string, held: RnodeError): RnodeError {
  const { holder, bindsUntil } = held.details;
  return new RnodeError(
    ErrorCodes.LEASE_HELD,
    `another prune is sweeping this repository (${domain} in ${store.location}; holder ${String(holder)}, lease until ${String(bindsUntil)}); ` +
      'wait for it to finish: it frees the space no kept point uses',
    { cause: held, details: { ...held.details, domain } },
  );
}

async function maintainLeased(opts: MaintainOptions): Promise<MaintainResult> {
  const r = emptyMaintainResult(opts.domain);
  try {
    return await sweepDomain(opts, r);
  } catch (err) {
    // The packs deleted before a later step failed (repack out of space) stay deleted: said, not hidden (afterDeleting).
    if (r.packsDeleted === 0 || !(err instanceof RnodeError) || err.code === ErrorCodes.CANCELLED) throw err;
    throw new RnodeError(err.code, err.message, {
      cause: err,
      retryable: err.retryable,
      details: { ...err.details, packsDeleted: r.packsDeleted, bytesDeleted: r.bytesDeleted },
    });
  }
}

async function sweepDomain(opts: MaintainOptions, r: MaintainResult): Promise<MaintainResult> {
  const started = performance.now();
  const { store, domain } = opts;
  const now = opts.now ?? Date.now;
  const graceMs = opts.graceMs ?? DEFAULT_GRACE_MS;
  const maxUnused = opts.maxUnused ?? DEFAULT_MAX_UNUSED;
  const concurrency = opts.concurrency ?? 8;

  if (opts.resetMarks) await resetMarks(store, domain);
  const { marks, index, packs, disks, missingChunks, deferred, marksRecorded } = await scanDomain(store, domain, concurrency);
  opts.signal?.throwIfAborted();
  // A point or checkpoint that saw newer marks than these: they were put back, and their ages cannot be trusted.
  checkMarksGeneration(domain, marks, marksRecorded.generation, `recorded by ${marksRecorded.by}`, 'nothing was deleted');
  r.packs = packs.size;
  r.missingChunks = missingChunks;
  if (deferred) r.deferred = deferred;
  // A chunk a point uses that no index object locates (one lost or damaged): the pack holding it looks unused, and a
  // sweep deleted such intact packs two runs later, every point of the repository lost (exit 0 each time).
  else if (missingChunks > 0) {
    r.deferred = `${missingChunks} chunks the points use are in no index object (one is lost or damaged), so which packs hold them is not known; run "rnode check --read-data --repair", which indexes the intact blobs again`;
  }

  // Sweep, one state per run and a grace period between: unused packs are seen, then marked (writers stop using
  // them), then deleted; a pack in use again loses its mark.
  const t = now();
  const doomed: ObjectId[] = [];
  for (const [id, p] of packs) {
    const mark = marks.packs.get(id);
    if (p.used.size > 0) {
      if (mark) {
        marks.packs.delete(id);
        r.packsUnmarked++;
      }
    } else if (!mark) {
      marks.packs.set(id, { state: 'seen', at: t });
      r.packsSeen++;
    } else if (t - mark.at < graceMs || r.deferred) {
      continue;
    } else if (mark.state === 'seen') {
      marks.packs.set(id, { state: 'marked', at: t });
      r.packsMarked++;
    } else if (mark.state === 'marked') {
      doomed.push(id);
    }
  }
  const deleted: ObjectId[] = [];
  await forEachBounded(iter(doomed), concurrency, async (id) => {
    // Stopped: the packs not deleted keep their marks, and the next run deletes them.
    if (opts.signal?.aborted) return;
    await store.delete(r2.pack(domain.name, id));
    deleted.push(id);
    r.packsDeleted++;
    r.bytesDeleted += packs.get(id)!.size;
    if (deleted.length === 1) failpoint('prune-pack-deleted');
  });
  for (const id of deleted) {
    marks.packs.set(id, { state: 'deleted', at: t });
    packs.delete(id);
  }
  const indexed = new Set<ObjectId>();
  for (const l of index.locations()) indexed.add(l.packId);
  for (const [id, m] of marks.packs) {
    if (packs.has(id)) continue;
    if (m.state === 'seen') marks.packs.delete(id);
    // Gone while marked: deleted by a run that crashed before writing the marks.
    else if (m.state === 'marked') marks.packs.set(id, { state: 'deleted', at: t });
    else if (t - m.at >= Math.max(TOMBSTONE_MS, graceMs) && !indexed.has(id)) marks.packs.delete(id);
  }
  await writePruneMarks(store, domain, marks);
  failpoint('prune-marks-written');
  opts.signal?.throwIfAborted();

  await deleteStaleTablesOfDisks(store, domain, disks, opts.lease, concurrency, r, opts.signal);

  // Repack: mark the sources first (writers stop reusing them), copy their live blobs, index the copies.
  if (maxUnused > 0 && !r.deferred) await repack(store, domain, packs, marks, maxUnused, t, r, index);

  // Index compaction.
  opts.signal?.throwIfAborted();
  if (!r.deferred) await compactIndexes(store, domain, index, new Set(packs.keys()), r, concurrency);

  r.seconds = (performance.now() - started) / 1000;
  return r;
}

export interface DomainScan {
  marks: PruneMarks;
  index: ChunkIndex;
  /** Every pack listed, with its blobs (from the index) and those in use. */
  packs: Map<ObjectId, PackInfo>;
  /** Disks by name, with their id when it could be learnt, and how many of their objects looked stale (staleDiskObjects). */
  disks: Map<string, { disk?: string; objects: V2DiskObjects; stale: number }>;
  missingChunks: number;
  /** Set when some references could not be read: nothing may be deleted. */
  deferred?: string;
  /** The highest marks generation the scanned points and checkpoints recorded, and which one did (by: a phrase). */
  marksRecorded: RecordedGeneration;
}

export interface RecordedGeneration {
  generation: number;
  by: string;
}

/** Keeps the higher of the generation recorded so far and one a point or checkpoint recorded (absent: 0). */
function noteGeneration(seen: RecordedGeneration, generation: unknown, by: string): void {
  if (Number.isSafeInteger(generation) && (generation as number) > seen.generation) {
    seen.generation = generation as number;
    seen.by = by;
  }
}

/**
 * Loads what prune, stats and check need of a domain: its marks, index and packs, and which blob of each pack holds
 * the canonical copy of every chunk id a committed point or a checkpoint references.
 */
export async function scanDomain(store: ObjectStore, domain: Domain, concurrency = 8): Promise<DomainScan> {
  const r: { missingChunks: number; deferred?: string } = { missingChunks: 0 };
  const marksRecorded: RecordedGeneration = { generation: 0, by: 'no point' };
  // Marks first, then indexes, then packs: a pack listed here was put before any index listing it (writers put the
  // pack, then its index), so an index entry whose pack is not listed names a deleted pack.
  const marks = await readPruneMarks(store, domain);
  const index = await ChunkIndex.load(store, domain, concurrency);
  const packs = new Map<ObjectId, PackInfo>();
  for await (const p of listPacks(store, domain)) packs.set(p.id, { size: p.size, blobs: new Map(), used: new Set() });
  for (const l of index.locations()) packs.get(l.packId)?.blobs.set(l.entry.offset, l.entry);

  // Reference scan: committed points, then checkpoints of points being written.
  const canonical = (id: Buffer): ChunkLocation | undefined => {
    let best: ChunkLocation | undefined;
    let bestMarked = true;
    for (const l of index.lookup(id)) {
      if (!packs.has(l.packId)) continue;
      const marked = marks.blocks(l.packId);
      if (!best || (bestMarked && !marked) || (bestMarked === marked && l.packId < best.packId)) {
        best = l;
        bestMarked = marked;
      }
    }
    return best;
  };
  // Chunks no index object read above locates, looked up again at the end (up to a bound).
  const missing: Buffer[] = [];
  const use = (e: ChunkEntry, pending = false) => {
    if (!referencesChunk(e)) return;
    const l = canonical(e.id!);
    if (l) {
      const p = packs.get(l.packId)!;
      const off = l.entry.offset;
      if (!pending) p.pendingOnly?.delete(off);
      else if (!p.used.has(off)) (p.pendingOnly ??= new Set()).add(off);
      p.used.add(off);
    } else if (r.missingChunks++ < MAX_RECHECKED) missing.push(Buffer.from(e.id!)); // a copy: the table's buffer may go
  };
  const disks = await listV2Disks(store, domain.name);
  const diskIds = new Map<string, string>();
  const stale = new Map<string, number>();
  for (const d of disks.values()) {
    const disk = await v2DiskId(store, d, domain.key);
    if (disk !== undefined) diskIds.set(d.dname, disk);
    const latest = d.points.length ? d.points[d.points.length - 1] : -1;
    if (disk === undefined) {
      // A first point being written whose checkpoint does not say which disk it is (encrypted names are one-way): its
      // tables cannot be opened, so what it uses is unknown and nothing may be deleted on this run. Tables without any
      // checkpoint yet are a first checkpoint in flight: its writer re-reads the marks there (docs/prune.md).
      if (d.pending.length > 0) r.deferred = `the checkpoint of a point being written to disk name ${d.dname} cannot be read without its disk id`;
      continue;
    }
    const named = new Set<string>();
    const listed = new Set(d.points);
    for (const seq of d.points) {
      try {
        const m = await loadV2Point(store, disk, seq, domain.key).catch((err) => {
          if (isRnodeError(err, ErrorCodes.POINT_NOT_FOUND)) return undefined; // deleted by retention since the listing
          throw err;
        });
        if (!m) continue;
        // A point reads the chunks it did not change through its parent's table: with the parent's manifest missing,
        // that table looked stale and was deleted, with the packs only it named (exit 0), and the point could not be
        // restored once the manifest was put back. Retention rebases a point before it deletes its ancestors, so a
        // point listed with them never names a parent missing from the same listing.
        if (m.parent !== null && !listed.has(m.parent)) {
          throw new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `point ${seq} of disk ${disk} needs point ${m.parent}, which is missing`, {
            details: { key: r2.point(domain.name, d.dname, seq) },
          });
        }
        noteGeneration(marksRecorded, m.marksGeneration, `point ${seq} of disk ${disk}`);
        for (const ref of m.table.segments) named.add(ref.key);
        for await (const e of tableEntries(store, m, domain.key)) use(e);
      } catch (err) {
        throw damagedPointBlocksSweep(err, disk, seq);
      }
    }
    const { segments, checkpoints } = staleDiskObjects(domain.name, d, named);
    stale.set(d.dname, segments.length + checkpoints.length);
    for (const seq of d.pending.filter((p) => p > latest)) {
      const ck = await loadCheckpoint(store, domain, disk, seq);
      if (ck === undefined) continue;
      noteGeneration(marksRecorded, ck.marksGeneration, `the checkpoint of point ${seq} of disk ${disk}`);
      const { parent } = ck;
      for (const s of d.segments.filter((x) => x.point === seq)) {
        try {
          for (const e of (await pendingTableEntries(store, disk, s, parent, domain.key)) ?? []) use(e, true);
        } catch (err) {
          // A segment of the next checkpoint, written before its checkpoint (and so bound to a newer state), or damage:
          // either way its references are not known, so nothing may be deleted on this run.
          if (!(err instanceof RnodeError)) throw err;
          r.deferred = `table ${s.key} of a point being written could not be read (${err.code})`;
        }
      }
    }
  }

  // A point or checkpoint written while this scan ran names chunks in index objects written after the index was read:
  // those are found in the index as it is now. What stays missing is in no index object (one lost or damaged).
  if (r.missingChunks > 0 && r.missingChunks <= MAX_RECHECKED) {
    const now = await ChunkIndex.load(store, domain, concurrency, { skipDamaged: true });
    for (const id of missing) {
      const l = now.lookup(id)[0];
      if (!l) continue;
      r.missingChunks--;
      packs.get(l.packId)?.used.add(l.entry.offset); // a pack listed above (else it is newer than this run's sweep)
    }
  }

  const byName = new Map<string, { disk?: string; objects: V2DiskObjects; stale: number }>();
  for (const d of disks.values()) byName.set(d.dname, { disk: diskIds.get(d.dname), objects: d, stale: stale.get(d.dname) ?? 0 });
  return { marks, index, packs, disks: byName, missingChunks: r.missingChunks, marksRecorded, ...(r.deferred ? { deferred: r.deferred } : {}) };
}

export async function* listPacks(store: ObjectStore, domain: Domain): AsyncIterable<{ id: ObjectId; size: number }> {
  for await (const o of store.list(r2.packsPrefix(domain.name))) {
    const h = classify(o.key);
    if (h?.kind === 'pack' && h.domain === domain.name) yield { id: h.id, size: o.size };
  }
}

/**
 * What prune needs of a checkpoint: the parent it names (its tables' envelopes are bound to it) and the marks
 * generation it recorded; undefined when it is gone (committed or abandoned since).
 */
async function loadCheckpoint(
  store: ObjectStore,
  domain: Domain,
  disk: string,
  seq: number,
): Promise<{ parent: number | null; marksGeneration?: unknown } | undefined> {
  const ck = (await loadV2Checkpoint(store, disk, seq, domain.key)) as { parent?: unknown; marksGeneration?: unknown } | null | undefined;
  if (ck === undefined) return undefined;
  const parent = ck?.parent;
  if (parent === null || (Number.isSafeInteger(parent) && (parent as number) >= 0 && (parent as number) < seq)) {
    return { parent: parent as number | null, marksGeneration: ck?.marksGeneration };
  }
  const what = r2.pending(domain.name, domain.dname(disk), seq);
  throw new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `checkpoint ${what} names no valid parent; run "rnode check"`, { details: { key: what } });
}

/**
 * The highest marks generation the domain's points and checkpoints recorded. 'latest' reads each disk's latest point
 * only (a writer never records less than its disk's latest point did), 'all' every point (points of older builds
 * record none).
 */
async function recordedGeneration(store: ObjectStore, domain: Domain, points: 'latest' | 'all'): Promise<RecordedGeneration> {
  const seen: RecordedGeneration = { generation: 0, by: 'no point' };
  for (const d of (await listV2Disks(store, domain.name)).values()) {
    const disk = await v2DiskId(store, d, domain.key);
    if (disk === undefined) continue;
    const latest = d.points.length ? d.points[d.points.length - 1] : -1;
    for (const seq of points === 'all' ? d.points : d.points.slice(-1)) {
      const m = await loadV2Point(store, disk, seq, domain.key).catch((err) => {
        if (isRnodeError(err, ErrorCodes.POINT_NOT_FOUND)) return undefined;
        throw err;
      });
      if (m) noteGeneration(seen, m.marksGeneration, `point ${seq} of disk ${disk}`);
    }
    for (const seq of d.pending.filter((p) => p > latest)) {
      const ck = await loadCheckpoint(store, domain, disk, seq);
      if (ck) noteGeneration(seen, ck.marksGeneration, `the checkpoint of point ${seq} of disk ${disk}`);
    }
  }
  return seen;
}

/**
 * Fails (PRUNE_MARKS_REPLAYED) when a point or checkpoint recorded newer marks than the domain's marks object holds.
 * The generations are read before the marks: marks only go up, so a prune writing meanwhile cannot fail it.
 */
async function checkMarksNotReplayed(store: ObjectStore, domain: Domain): Promise<void> {
  const recorded = await recordedGeneration(store, domain, 'latest');
  checkMarksGeneration(domain, await readPruneMarks(store, domain), recorded.generation, `recorded by ${recorded.by}`, 'nothing was deleted');
}

/**
 * Starts the marks afresh: empty, at a generation above every recorded one. Safe whatever the marks held: every
 * unused pack is only seen on this run, so nothing is deleted before two grace periods have passed.
 */
async function resetMarks(store: ObjectStore, domain: Domain): Promise<void> {
  const recorded = await recordedGeneration(store, domain, 'all');
  const current = await readPruneMarks(store, domain).catch((err) => {
    // Damaged or forged marks are reset too.
    if (isRnodeError(err, ErrorCodes.MANIFEST_CORRUPT) || isRnodeError(err, ErrorCodes.METADATA_FORGED)) return new PruneMarks();
    throw err;
  });
  await writePruneMarks(store, domain, new PruneMarks(new Map(), Math.max(recorded.generation, current.generation)));
}

async function* iter<T>(xs: T[]): AsyncIterable<T> {
  yield* xs;
}

function unusedShare(p: PackInfo): number {
  let total = 0;
  let live = 0;
  for (const [off, b] of p.blobs) {
    total += b.length;
    if (p.used.has(off)) live += b.length;
  }
  return total === 0 ? 0 : 1 - live / total;
}

async function repack(
  store: ObjectStore,
  domain: Domain,
  packs: Map<ObjectId, PackInfo>,
  marks: PruneMarks,
  maxUnused: number,
  t: number,
  r: MaintainResult,
  index: ChunkIndex,
): Promise<void> {
  const sources = [...packs].filter(([id, p]) => p.used.size > 0 && !marks.blocks(id) && unusedShare(p) > maxUnused).map(([id]) => id);
  if (sources.length === 0) return;
  for (const id of sources) marks.packs.set(id, { state: 'marked', at: t });
  await writePruneMarks(store, domain, marks);
  failpoint('prune-repack-marked');

  const copier = new BlobCopier(store, domain, () => {
    r.packsWritten++;
    if (r.packsWritten === 1) failpoint('prune-repack-pack-written');
  });
  // The source packs are read one after another into one buffer (where the store can: the fs store), whose pages go
  // back at the end. Read as fresh buffers, each (up to 16 MiB) stayed resident until a GC, beside the agent's
  // running jobs and their own buffers.
  const readBuffer = allocAlignedUnsafe(Math.max(...sources.map((id) => packs.get(id)!.size)), 1);
  try {
    for (const id of sources) {
      const p = packs.get(id)!;
      const bytes = await store.get(r2.pack(domain.name, id), undefined, readBuffer);
      for (const off of [...p.used].sort((a, b) => a - b)) {
        const e = p.blobs.get(off)!;
        const blob = bytes.subarray(e.offset, e.offset + e.length);
        if (blob.length !== e.length || xxh64(blob) !== e.payloadXxh64) {
          throw new RnodeError(
            ErrorCodes.CHUNK_CORRUPT,
            `pack ${r2.pack(domain.name, id)} holds a damaged blob at offset ${e.offset}; nothing was deleted; run "rnode check --read-data --repair" to rewrite it without that blob, then "rnode replicate --full" of the disks that hold its data`,
            { details: { key: r2.pack(domain.name, id) } },
          );
        }
        await copier.add(blob, e);
        r.bytesRewritten += e.length;
      }
      r.packsRepacked++;
    }
  } finally {
    discardPages(readBuffer);
  }
  await copier.finish(index);
  r.indexesWritten += copier.indexesWritten;
  failpoint('prune-repack-indexed');
}

/**
 * Rewrites index objects that are small or name deleted packs into full ones holding only entries of existing packs,
 * then deletes those it replaced. Index objects written after the listing (by writers, or by repack above) stay.
 */
export async function compactIndexes(
  store: ObjectStore,
  domain: Domain,
  index: ChunkIndex,
  existing: Set<ObjectId>,
  r: Pick<MaintainResult, 'indexesWritten' | 'indexesDeleted'>,
  concurrency: number,
): Promise<void> {
  const perIndex = new Map<ObjectId, ChunkLocation[]>();
  for (const l of index.locations()) {
    if (!l.indexId) continue;
    let list = perIndex.get(l.indexId);
    if (!list) perIndex.set(l.indexId, (list = []));
    list.push(l);
  }
  const replace = [...perIndex].filter(([, ls]) => ls.length < INDEX_TARGET_ENTRIES / 2 || ls.some((l) => !existing.has(l.packId))).map(([id]) => id);
  const loadedEmpty = index.indexIds.filter((id) => !perIndex.has(id));
  const worthIt = replace.length > 1 || replace.some((id) => perIndex.get(id)!.some((l) => !existing.has(l.packId))) || loadedEmpty.length > 0;
  if (!worthIt) return;
  const seen = new Set<string>();
  const keep: ChunkLocation[] = [];
  for (const id of replace) {
    for (const l of perIndex.get(id)!) {
      const k = `${l.packId}:${l.entry.offset}`;
      if (!existing.has(l.packId) || seen.has(k)) continue;
      seen.add(k);
      keep.push({ packId: l.packId, entry: l.entry });
    }
  }
  for (let i = 0; i < keep.length; i += INDEX_TARGET_ENTRIES) {
    const indexId = newObjectId();
    await store.put(r2.index(domain.name, indexId), encodeIndex(domain, indexId, keep.slice(i, i + INDEX_TARGET_ENTRIES)));
    r.indexesWritten++;
  }
  failpoint('prune-index-written');
  await forEachBounded(iter([...replace, ...loadedEmpty]), concurrency, async (id) => {
    await store.delete(r2.index(domain.name, id));
    r.indexesDeleted++;
  });
}

/**
 * Between paced sweeps: compacts the domain's index objects when more than PILED_INDEXES gathered (each replicate adds
 * one per checkpoint and loads them all), unless another prune holds the domain. The index is loaded before the packs
 * are listed, as in scanDomain, so an entry whose pack is not listed names a deleted pack.
 */
async function compactIfPiled(
  store: ObjectStore,
  domain: Domain,
  lease: LeaseOptions | undefined,
  concurrency: number,
  why: string,
): Promise<MaintainResult> {
  const started = performance.now();
  const r: MaintainResult = { ...emptyMaintainResult(domain), skipped: why };
  if ((await listIndexIds(store, domain.name)).length > PILED_INDEXES) {
    try {
      await Lease.holding(store, pruneLeaseName(domain.name), { ...lease, waitMs: 0 }, async () => {
        const index = await ChunkIndex.load(store, domain, concurrency);
        const existing = new Set<ObjectId>();
        for await (const p of listPacks(store, domain)) existing.add(p.id);
        await compactIndexes(store, domain, index, existing, r, concurrency);
      });
    } catch (err) {
      if (!isRnodeError(err, ErrorCodes.LEASE_HELD)) throw err; // the prune holding it compacts
    }
  }
  r.seconds = (performance.now() - started) / 1000;
  return r;
}

// ---- Retention of a disk's v2 points ----

export interface V2RetentionResult {
  kept: number[];
  deleted: number[];
  objectsDeleted: number;
}

/**
 * Keeps the v2 points in `keep` (a set of point numbers), deletes the others: the oldest kept point is rebased onto a
 * standalone table first (no data copied), manifests go newest first, then tables no kept point uses and checkpoints
 * nobody can resume. Packs are left to the domain sweep. The caller holds the disk's lease.
 */
export async function retainV2Points(
  store: ObjectStore,
  domain: Domain,
  disk: string,
  keep: Set<number>,
  concurrency = 8,
  signal?: AbortSignal,
): Promise<V2RetentionResult> {
  const seqs = await listV2PointSeqs(store, disk, domain.key);
  const kept = seqs.filter((s) => keep.has(s));
  const deleted = seqs.filter((s) => !keep.has(s));
  if (kept.length === 0 && deleted.length > 0) throw new RnodeError(ErrorCodes.INTERNAL, 'v2 retention would delete every point of a disk');
  if (deleted.length > 0) {
    const oldest = kept[0];
    const chain = await loadV2Chain(store, disk, oldest, domain.key);
    if (chain[0].parent !== null) await rebaseV2(store, domain, chain);
    failpoint('prune-rebased');
    signal?.throwIfAborted();
    let first = true;
    for (const s of [...deleted].reverse()) {
      await store.delete(r2.point(domain.name, domain.dname(disk), s));
      if (first) {
        first = false;
        failpoint('prune-manifest-deleted');
      }
    }
  }
  // Also when no point goes: a run that stopped between the manifests and the tables (killed, or a delete refused)
  // left their tables to this one.
  const objectsDeleted = await deleteStaleTables(store, domain, disk, concurrency);
  return { kept, deleted, objectsDeleted };
}

/**
 * Deletes the table segments and checkpoints of a disk that no point needs (staleDiskObjects). The caller holds the
 * disk's lease: no replicate commits and no retention rebases meanwhile, so the manifests read here name every
 * segment a point needs, and a running writer's point is above the latest.
 */
async function deleteStaleTables(store: ObjectStore, domain: Domain, disk: string, concurrency: number): Promise<number> {
  const listed = await listV2Disk(store, disk, domain.key);
  const named = new Set<string>();
  for (const s of listed.points) for (const ref of (await loadV2Point(store, disk, s, domain.key)).table.segments) named.add(ref.key);
  const { segments, checkpoints } = staleDiskObjects(domain.name, listed, named);
  let deleted = 0;
  await forEachBounded(iter([...checkpoints, ...segments]), concurrency, async (key) => {
    await store.delete(key);
    deleted++;
    if (deleted === 1) failpoint('prune-table-deleted');
  });
  return deleted;
}

/**
 * The stale tables of every disk the scan found some in (retention stopped between its manifests and its tables, and
 * the disk has had no retention since), each under the disk's lease. A disk whose lease is held is being written or
 * retained: left to its holder's retention or a later prune.
 */
async function deleteStaleTablesOfDisks(
  store: ObjectStore,
  domain: Domain,
  disks: DomainScan['disks'],
  lease: LeaseOptions | false | undefined,
  concurrency: number,
  r: MaintainResult,
  signal?: AbortSignal,
): Promise<void> {
  for (const { disk, stale } of disks.values()) {
    if (disk === undefined || stale === 0) continue;
    signal?.throwIfAborted();
    try {
      await Lease.holding(store, domain.dname(disk), { ...(lease || {}), waitMs: 0 }, async () => {
        r.tableObjectsDeleted += await deleteStaleTables(store, domain, disk, concurrency);
      });
    } catch (err) {
      if (!isRnodeError(err, ErrorCodes.LEASE_HELD)) throw err;
    }
  }
}

/**
 * What a damaged point (its manifest or a table) does to a reference scan (a sweep, stats): what it references is not
 * known, so nothing may be deleted, in any disk of the repository, until the point is gone. The error keeps its code
 * and says how to get there.
 */
function damagedPointBlocksSweep(err: unknown, disk: string, seq: number): unknown {
  if (!isDamage(err)) return err;
  return new RnodeError(
    err.code,
    `${err.message}. What the repository's points use is not known while one cannot be read, and prune deletes nothing meanwhile: replicate disk ${disk} again (its next point starts a new chain), then drop point ${seq} with prune --disk ${disk} --keep <n> (rnode points --disk ${disk} lists its points; rnode check lists every damaged one)`,
    { cause: err, details: { ...err.details, disk, point: seq } },
  );
}

async function rebaseV2(store: ObjectStore, domain: Domain, chain: V2PointManifest[]): Promise<void> {
  const k = chain[0];
  const gen = k.table.generation + 1;
  const dname = domain.dname(k.disk);
  const segments: V2PointManifest['table']['segments'] = [];
  let batch: ChunkEntry[] = [];
  let records = 0;
  const flush = async () => {
    const n = segments.length;
    const bytes = encodeTableV3(domain, { disk: k.disk, point: k.point, parent: null, generation: gen, segment: n }, batch);
    const key = r2.segment(domain.name, dname, k.point, gen, n);
    await store.put(key, bytes);
    segments.push({
      key,
      records: batch.length,
      first: batch.length ? batch[0].index : -1,
      last: batch.length ? batch[batch.length - 1].index : -1,
      digest: segmentDigest(bytes),
    });
    records += batch.length;
    batch = [];
  };
  for await (const e of chainView(store, chain, domain.key)) {
    if (isZeroEntry(e)) continue; // a standalone table leaves zeros out
    batch.push(e);
    if (batch.length >= TABLE_SEGMENT_RECORDS) await flush();
  }
  if (batch.length > 0 || segments.length === 0) await flush();
  const rebased: V2PointManifest = { ...k, parent: null, table: { generation: gen, records, segments } };
  await store.put(r2.point(domain.name, dname, k.point), encodeManifestV4(domain, rebased));
}

// ---- The prune job: retention of one disk (legacy and v2), then maintenance of each domain ----

export interface PruneStoreOptions extends SweepSettings {
  store: ObjectStore;
  /** With keep: the disk whose points are thinned out. Without: maintenance only. */
  disk?: string;
  keep?: number;
  /** The key of an encrypted disk and domain: its domain is maintained too; without it, only `plain`. */
  encryption?: EncryptionKey;
  /** false: the caller holds the disk's lease (retention takes it otherwise); the domain's prune lease is always taken. */
  lease?: LeaseOptions | false;
  /** Start each domain's marks afresh (MaintainOptions.resetMarks). */
  resetMarks?: boolean;
  /**
   * A domain whose prune lease another prune holds is left to it (reported as deferred) instead of waited for. For
   * retention after a replicate: its point is committed, and a sweep already running covers the domain.
   */
  sweepIfFree?: boolean;
  /** Sweeps a domain only when the pacer says it is due (retention after each replicate of an agent). */
  pacer?: SweepPacer;
  /**
   * false: retention only, no domain sweep. For a store behind a receiving node, which takes neither the sweep's
   * deletes nor its merged indexes over the peer link: each try left one more merged index behind.
   */
  sweep?: boolean;
  /**
   * Set for a store behind a receiving node, which takes no deletes of points or tables over the peer link: retention
   * that would delete a point fails with this error before it writes anything (it used to rebase the kept point
   * first, which left a table segment on the node), and retention that keeps every point changes nothing.
   */
  retentionRefused?: () => Error;
  /**
   * List the encrypted repositories the sweep leaves out for want of their key (`skipped`). It costs one listing of
   * every encrypted repository's objects: for a person running prune, who would otherwise take exit 0 for "all swept";
   * the agent's paced prunes do without.
   */
  reportSkipped?: boolean;
  /** Stops at the next step where the repository is consistent (between deletes, between phases); prune run again continues. */
  signal?: AbortSignal;
}

export interface PruneStoreResult {
  disk?: string;
  kept: number[];
  deleted: number[];
  /** Legacy chunk objects deleted by retention. */
  chunksDeleted: number;
  objectsDeleted: number;
  domains: MaintainResult[];
  /** Encrypted repositories not swept because their key was not given (as check reports them); with reportSkipped. */
  skipped: Array<{ domain: string; code: string }>;
  seconds: number;
}

export async function pruneStore(opts: PruneStoreOptions): Promise<PruneStoreResult> {
  const started = performance.now();
  const { store } = opts;
  const key = opts.encryption;
  const domain = await Domain.openIfAny(store, key);
  const out: PruneStoreResult = { kept: [], deleted: [], chunksDeleted: 0, objectsDeleted: 0, domains: [], skipped: [], seconds: 0 };
  if (opts.disk !== undefined || opts.keep !== undefined) {
    if (opts.disk === undefined || opts.keep === undefined)
      throw new RnodeError(ErrorCodes.USAGE, 'pass --disk and --keep together (or neither, for maintenance only)');
    // Replayed marks are reported before retention deletes anything (maintenance checks them again on its full scan).
    if (domain && !opts.resetMarks) await checkMarksNotReplayed(store, domain);
    Object.assign(out, await retainDisk(store, domain, validateDiskId(opts.disk), opts.keep, key, opts), { disk: opts.disk });
  }
  if (key && !domain && opts.disk === undefined && opts.sweep !== false) checkKeyOpensOne(store.location, await listDomains(store), key);
  const domains = opts.sweep === false ? [] : [domain ?? undefined];
  // Without a key, the plain domain; with one, the key's domain and the plain one (a store may hold both).
  if (key && opts.sweep !== false) domains.push(await Domain.openIfAny(store, undefined));
  try {
    await sweepDomains(store, domains, opts, out);
  } catch (err) {
    throw afterDeleting(err, out);
  }
  if (out.domains.length === 0 && opts.disk === undefined && !key && opts.sweep !== false && (await hasSealedDomain(store))) {
    throw new RnodeError(
      ErrorCodes.KEY_REQUIRED,
      `the repository in ${store.location} is encrypted; pass its key with --encryption-key-file to prune it`,
    );
  }
  if (opts.reportSkipped && opts.sweep !== false) {
    out.skipped = (await listSealedDomains(store)).filter((d) => d !== key?.domain).map((domain) => ({ domain, code: ErrorCodes.KEY_REQUIRED }));
  }
  out.seconds = (performance.now() - started) / 1000;
  return out;
}

/**
 * A sweep's failure (a repack out of space) after retention deleted points, or the sweep deleted packs: its message
 * says so. Those stay deleted, and a message silent about them read as if the failed prune had changed nothing.
 */
function afterDeleting(err: unknown, out: PruneStoreResult): unknown {
  if (!(err instanceof RnodeError) || err.code === ErrorCodes.CANCELLED) return err;
  const packs = out.domains.reduce((n, d) => n + d.packsDeleted, 0) + (typeof err.details.packsDeleted === 'number' ? err.details.packsDeleted : 0);
  const done = [
    ...(out.deleted.length ? [`point${out.deleted.length > 1 ? 's' : ''} ${out.deleted.join(', ')} of disk ${out.disk}`] : []),
    ...(packs ? [`${packs} unused pack${packs > 1 ? 's' : ''}`] : []),
  ];
  if (!done.length) return err;
  return new RnodeError(err.code, `${err.message} (before it failed, this prune deleted ${done.join(' and ')}: they stay deleted)`, {
    cause: err,
    retryable: err.retryable,
    details: { ...err.details, pointsDeleted: out.deleted },
  });
}

async function sweepDomains(store: ObjectStore, domains: (Domain | undefined)[], opts: PruneStoreOptions, out: PruneStoreResult): Promise<void> {
  for (const d of domains) {
    if (!d) continue;
    const lease = opts.lease === false ? undefined : opts.lease;
    if (opts.pacer && !opts.pacer.due(store, d.name)) {
      out.domains.push(
        await compactIfPiled(store, d, lease, opts.concurrency ?? 8, `swept less than ${Math.round(opts.pacer.intervalMs / 60_000)} min ago`),
      );
      continue;
    }
    opts.signal?.throwIfAborted();
    try {
      out.domains.push(
        await maintainDomain({
          store,
          domain: d,
          graceMs: opts.graceMs,
          maxUnused: opts.maxUnused,
          concurrency: opts.concurrency,
          now: opts.now,
          lease: opts.sweepIfFree ? { ...lease, waitMs: 0 } : lease,
          resetMarks: opts.resetMarks,
          signal: opts.signal,
        }),
      );
      opts.pacer?.swept(store, d.name);
    } catch (err) {
      // Retention is done by now: failing would hide the points it deleted, and the sweep running covers the domain.
      const leaveToOther = opts.sweepIfFree || opts.disk !== undefined;
      if (!leaveToOther || !isRnodeError(err, ErrorCodes.LEASE_HELD)) throw err;
      out.domains.push({
        ...emptyMaintainResult(d),
        sweptBy: String(err.details.holder),
        deferred:
          `another prune is sweeping this repository (holder ${String(err.details.holder)}): repack and pack deletion were left to it; ` +
          'it or a later prune frees the space no kept point uses',
      });
    }
  }
}

/** The encrypted domains a store holds (one listing of their objects). */
async function listSealedDomains(store: ObjectStore): Promise<string[]> {
  const found = new Set<string>();
  for await (const o of store.list(r2.sealedDomainsPrefix)) {
    const h = classify(o.key);
    if (h && 'domain' in h && h.domain !== PLAIN_DOMAIN) found.add(h.domain);
  }
  return [...found].sort();
}

/** True when the store holds objects of an encrypted domain (one listed key is enough). */
export async function hasSealedDomain(store: ObjectStore): Promise<boolean> {
  for await (const o of store.list(r2.sealedDomainsPrefix)) {
    const h = classify(o.key);
    if (h && 'domain' in h && h.domain !== PLAIN_DOMAIN) return true;
  }
  return false;
}

async function retainDisk(
  store: ObjectStore,
  domain: Domain | undefined,
  disk: string,
  keep: number,
  key: EncryptionKey | undefined,
  opts: PruneStoreOptions,
): Promise<Omit<PruneStoreResult, 'domains' | 'skipped' | 'seconds' | 'disk'>> {
  if (!Number.isSafeInteger(keep) || keep < 1) throw new RnodeError(ErrorCodes.USAGE, `--keep must be a whole number of at least 1 (got ${keep})`);
  // The points kept and deleted, from a listing of the disk's points.
  const decide = async () => {
    const legacy = await listLegacyPointSeqs(store, disk);
    const v2 = domain ? await listV2PointSeqs(store, disk, domain.key) : [];
    // Why there is nothing, as the readers say it: a wrong key or one given to a plain disk is not a missing disk.
    if (legacy.length === 0 && v2.length === 0) await explainNoPoints(store, disk, key);
    // Before anything is deleted: a legacy point an old rnode wrote after the upgrade would be counted with, or as, a v2 point.
    refuseLegacyAfterUpgrade(disk, legacy, v2);
    const all = [...new Set([...legacy, ...v2])].sort((a, b) => a - b);
    const keepSet = new Set(all.slice(-keep));
    const out = { kept: all.filter((s) => keepSet.has(s)), deleted: all.filter((s) => !keepSet.has(s)), chunksDeleted: 0, objectsDeleted: 0 };
    // docs/vmware.md: a VM point is never left with one of its disk points gone (it listed, and restored some disks
    // before it failed). Its own retention (prune --vm) deletes the VM points first, then their disks' points.
    const used = opts.retentionRefused ? [] : await vmPointsUsing(store, disk, out.deleted, key);
    if (used.length > 0) {
      const vms = [...new Set(used.map((u) => u.vm))];
      throw new RnodeError(
        ErrorCodes.USAGE,
        `keeping ${keep} point${keep > 1 ? 's' : ''} of disk ${disk} would delete ${used.map((u) => `point ${u.point}, which VM point ${u.seq} of ${u.vm} uses`).join('; ')}; ` +
          `nothing was deleted: prune the VM's points instead (${vms.map((vm) => `"rnode prune --vm ${vm} --keep <n>"`).join(', ')}), which deletes its disks' points with them`,
      );
    }
    // The leases replicate takes: the v2 points' (a keyed name for an encrypted disk), and the plain name for legacy
    // points only, which an encrypted disk's v2 retention must not write into the store (it named the disk in clear).
    const names = [...new Set([...(legacy.length > 0 ? [disk] : []), ...(domain && v2.length ? [domain.dname(disk)] : [])])];
    return { legacy, v2, all, keepSet, out, names };
  };
  let d = await decide();
  if (opts.retentionRefused) {
    if (d.out.deleted.length > 0) throw opts.retentionRefused();
    return d.out;
  }
  const leases: Lease[] = [];
  try {
    if (opts.lease !== false) {
      // Listed again once the leases are held: a point another writer committed while prune waited for them is one of
      // the newest, and the first listing's choice deleted it (reported nowhere).
      const held = new Set<string>();
      for (let missing = d.names; missing.length > 0; missing = d.names.filter((n) => !held.has(n))) {
        for (const n of missing) {
          leases.push(await Lease.acquire(store, n, opts.lease));
          held.add(n);
        }
        d = await decide();
      }
    }
    const { legacy, v2, all, keepSet, out } = d;
    opts.signal?.throwIfAborted();
    const legacyKeep = legacy.filter((s) => keepSet.has(s)).length;
    // Legacy prune also sweeps what dead attempts left, so it runs even when no legacy point goes.
    if (legacy.length > 0) {
      const r =
        legacyKeep > 0
          ? await pruneLegacy({
              store,
              disk,
              keep: legacyKeep,
              encryption: key,
              concurrency: opts.concurrency,
              lease: false,
              signal: opts.signal,
              newestOfDisk: all[all.length - 1],
            })
          : await dropLegacyPoints(store, disk, key, opts.concurrency);
      out.chunksDeleted += r.chunksDeleted;
      out.objectsDeleted += r.objectsDeleted;
    }
    failpoint('prune-legacy-retained');
    opts.signal?.throwIfAborted();
    // Even when every v2 point stays: its stale tables go (retainV2Points).
    if (domain && v2.length > 0) {
      out.objectsDeleted += (await retainV2Points(store, domain, disk, keepSet, opts.concurrency, opts.signal)).objectsDeleted;
    }
    return out;
  } finally {
    for (const l of leases.reverse()) await l.release();
  }
}

/**
 * Retention of one disk, whatever the format of its points, then maintenance of its domain with the defaults (the
 * entry the agent's jobs and VM retention call; the CLI calls pruneStore).
 */
export async function prune(opts: PruneOptions & { pacer?: SweepPacer; graceMs?: number }): Promise<PruneResult & { domains: MaintainResult[] }> {
  const r = await pruneStore({
    store: opts.store,
    disk: opts.disk,
    keep: opts.keep,
    encryption: opts.encryption,
    concurrency: opts.concurrency,
    lease: opts.lease,
    sweepIfFree: true,
    pacer: opts.pacer,
    graceMs: opts.graceMs,
    signal: opts.signal,
  });
  return {
    disk: opts.disk,
    kept: r.kept,
    deleted: r.deleted,
    chunksDeleted: r.chunksDeleted,
    objectsDeleted: r.objectsDeleted,
    seconds: r.seconds,
    domains: r.domains,
  };
}

/** A retention that failed after its point was committed, as a warning of the run. */
export function retentionWarning(what: string, err: unknown): string {
  const code = isRnodeError(err) ? `${err.code}: ` : '';
  return `${what} is committed, but the retention after it failed (${code}${(err as Error).message}); the next run's retention tries again`;
}
