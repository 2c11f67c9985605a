// Retention: keep the newest N points, delete the rest and every chunk no kept point references.
// Order makes every crash safe to re-run: (1) the oldest kept point K is rebased onto a standalone table,
// (2) older manifests are deleted newest first, (3) chunk objects older than K that K's view does not use are
// swept, (4) stale tables and checkpoints go (up to the disk's newest point, v2 included). Kept points never need a pruned point's data.
// An encrypted disk is pruned only with its key: the rebase writes authenticated tables and a manifest (MACs need
// the key), and the sweep trusts K's table only once its MACs check, so a forged table cannot make prune delete
// live chunks. The encryption marker is never deleted.
import type { EncryptionKey } from '../crypto/keys.js';
import { ErrorCodes, RnodeError } from '../errors.js';
import { classify, layout, parseChunkKey, validateDiskId } from '../repository/names.js';
import { encodeManifest, MANIFEST_VERSION_AUTHENTICATED, type PointManifest, type SegmentRef } from '../format/manifest.js';
import { decodeSegment, encodeSegment, isZeroEntry, segmentMac, TABLE_SEGMENT_RECORDS, type ChunkEntry } from '../format/table.js';
import type { ObjectStore } from '../store/types.js';
import { forEachBounded } from '../pipeline/bounded.js';
import { listLegacyPointSeqs, loadChain, loadPoint } from '../repository/points.js';
import { chainView, segmentExpectation } from '../repository/view.js';
import { chainKey, checkChainAuthenticity, readDiskMarker, refuseKeylessWrite } from '../repository/encryption.js';
import { Lease, type LeaseOptions } from '../repository/lease.js';

export interface PruneResult {
  disk: string;
  kept: number[];
  deleted: number[];
  chunksDeleted: number;
  objectsDeleted: number;
  seconds: number;
}

export interface PruneOptions {
  store: ObjectStore;
  disk: string;
  keep: number;
  /** The key of an encrypted disk: required to prune one (KEY_REQUIRED without it). */
  encryption?: EncryptionKey;
  concurrency?: number;
  /** Prune writes (rebases, deletes): it takes the disk's write lease unless the caller holds it (false). */
  lease?: LeaseOptions | false;
  /** Stops between steps and between deletes, where a crash is safe too: the next prune continues. */
  signal?: AbortSignal;
  /**
   * The disk's newest point of either format (retainDisk), when it has v2 points. A legacy checkpoint or dead
   * attempt at or below it is an old rnode's run that never committed: stale, though above the newest legacy point.
   */
  newestOfDisk?: number;
}

/** Retention of a disk's legacy points only (prune-v2.ts `prune` is the entry that handles both formats). */
export async function pruneLegacy(opts: PruneOptions): Promise<PruneResult> {
  const disk = validateDiskId(opts.disk);
  if (!Number.isSafeInteger(opts.keep) || opts.keep < 1) {
    throw new RnodeError(ErrorCodes.USAGE, `--keep must be a whole number of at least 1 (got ${opts.keep})`);
  }
  return Lease.holding(opts.store, disk, opts.lease, () => pruneLeased(opts));
}

async function pruneLeased(opts: PruneOptions): Promise<PruneResult> {
  const started = performance.now();
  const { store } = opts;
  const disk = validateDiskId(opts.disk);
  const seqs = await listLegacyPointSeqs(store, disk);
  if (seqs.length === 0) {
    throw new RnodeError(ErrorCodes.DISK_NOT_FOUND, `disk ${disk} has no committed points in ${store.location}; check --disk and --store`);
  }
  const kept = seqs.slice(-opts.keep);
  const deleted = seqs.slice(0, seqs.length - kept.length);
  const oldest = kept[0];
  const latest = seqs[seqs.length - 1];
  const newest = Math.max(latest, opts.newestOfDisk ?? latest);

  const key = opts.encryption;
  const marker = await readDiskMarker(store, disk, key);
  if (!key) refuseKeylessWrite(await loadPoint(store, disk, latest), marker, disk, 'prune');
  // Every kept point's chain is checked (key, versions, MACs) before anything is rewritten or deleted.
  for (const s of kept) {
    const chain = await loadChain(store, disk, s);
    chainKey(chain, key, disk);
    checkChainAuthenticity(chain, key, marker, disk);
  }

  // (1) Rebase: the oldest kept point gets a table that needs no ancestor.
  opts.signal?.throwIfAborted();
  let k = await loadPoint(store, disk, oldest);
  if (k.parent !== null) k = await rebase(store, k, await loadChain(store, disk, oldest), key);

  // (2) Older manifests, newest first, so a crash never leaves a point whose parent is gone.
  for (const s of [...deleted].reverse()) {
    opts.signal?.throwIfAborted();
    await store.delete(layout.point(disk, s));
  }

  // (3) Sweep chunk objects. Below K a chunk lives only if K's view points at it; from K on, chunks of
  // committed points live, and so do those of the point that may be being written now (seq latest+1).
  let chunksDeleted = 0;
  const committed = new Set(kept);
  // Liveness is looked up in K's table by index, so it holds whatever order the backend lists keys in
  // (s3rver, for one, does not list in byte order); memory holds one table segment.
  const lookup = new TableLookup(store, k, key);
  const doomed = async function* () {
    for await (const o of store.list(layout.chunksPrefix(disk))) {
      const c = parseChunkKey(o.key);
      if (!c) continue;
      if (c.writer >= oldest) {
        if (!committed.has(c.writer) && c.writer <= newest) yield o.key; // a dead attempt
        continue;
      }
      const e = await lookup.find(c.index);
      if (!e || e.writer !== c.writer || isZeroEntry(e)) yield o.key;
    }
  };
  await forEachBounded(
    doomed(),
    opts.concurrency ?? 16,
    async (key) => {
      await store.delete(key);
      chunksDeleted++;
    },
    opts.signal,
  );

  // (4) Tables of deleted points and superseded generations, and checkpoints nobody can resume.
  let objectsDeleted = 0;
  const liveSegments = new Set<string>();
  for (const s of kept) for (const ref of (await loadPoint(store, disk, s)).table.segments) liveSegments.add(ref.key);
  const staleTables = async function* () {
    for await (const o of store.list(layout.allTablesPrefix(disk))) if (!liveSegments.has(o.key) && isStaleTable(o.key, newest)) yield o.key;
    for await (const o of store.list(layout.pendingPrefix(disk))) {
      const h = classify(o.key);
      if (h?.kind === 'legacy-pending' && h.point <= newest) yield o.key;
    }
  };
  await forEachBounded(
    staleTables(),
    opts.concurrency ?? 16,
    async (key) => {
      await store.delete(key);
      objectsDeleted++;
    },
    opts.signal,
  );

  return { disk, kept, deleted, chunksDeleted, objectsDeleted, seconds: (performance.now() - started) / 1000 };
}

/** A segment of a point at or before the latest (a newer point's belongs to a run in progress); keys of no format object stay. */
function isStaleTable(key: string, latest: number): boolean {
  const h = classify(key);
  return h?.kind === 'legacy-table' && h.point <= latest;
}

/**
 * Writes the chain's merged view as the point's own table (next generation) and commits it. An authenticated point
 * stays authenticated (new MACs, bound to parent null and the new generation); a legacy one stays legacy.
 */
async function rebase(store: ObjectStore, k: PointManifest, chain: PointManifest[], key: EncryptionKey | undefined): Promise<PointManifest> {
  const gen = k.table.generation + 1;
  const auth = k.version === MANIFEST_VERSION_AUTHENTICATED ? key : undefined;
  const segments: SegmentRef[] = [];
  let batch: ChunkEntry[] = [];
  let records = 0;
  const flush = async () => {
    const place = { disk: k.disk, point: k.point, parent: null, generation: gen, segment: segments.length };
    const bytes = encodeSegment(batch, auth && { key: auth, place });
    const mac = segmentMac(bytes);
    const ref: SegmentRef = {
      key: layout.segment(k.disk, k.point, gen, segments.length),
      records: batch.length,
      first: batch.length ? batch[0].index : -1,
      last: batch.length ? batch[batch.length - 1].index : -1,
      ...(mac ? { mac } : {}),
    };
    await store.put(ref.key, bytes);
    segments.push(ref);
    records += batch.length;
    batch = [];
  };
  for await (const e of chainView(store, chain, key)) {
    if (isZeroEntry(e)) continue; // a standalone table leaves zeros out
    batch.push(e);
    if (batch.length >= TABLE_SEGMENT_RECORDS) await flush();
  }
  if (batch.length > 0 || segments.length === 0) await flush();
  const rebased: PointManifest = { ...k, parent: null, table: { generation: gen, records, segments } };
  await store.put(layout.point(k.disk, k.point), encodeManifest(rebased, auth));
  return rebased;
}

/** Finds a standalone point's table record by chunk index: binary search over segments, then within one. */
class TableLookup {
  private cachedKey: string | undefined;
  private cached: ChunkEntry[] = [];

  private readonly refs: Array<SegmentRef & { n: number }>;

  constructor(
    private readonly store: ObjectStore,
    private readonly m: PointManifest,
    private readonly key: EncryptionKey | undefined,
  ) {
    this.refs = m.table.segments.map((r, n) => ({ ...r, n })).filter((r) => r.records > 0);
  }

  async find(index: number): Promise<ChunkEntry | undefined> {
    const refs = this.refs;
    let lo = 0;
    let hi = refs.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const r = refs[mid];
      if (index < r.first) hi = mid - 1;
      else if (index > r.last) lo = mid + 1;
      else return this.inSegment(r.key, r.n, index);
    }
    return undefined;
  }

  private async inSegment(key: string, n: number, index: number): Promise<ChunkEntry | undefined> {
    if (this.cachedKey !== key) {
      this.cached = decodeSegment(await this.store.get(key), key, segmentExpectation(this.m, n, this.key));
      this.cachedKey = key;
    }
    let lo = 0;
    let hi = this.cached.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const e = this.cached[mid];
      if (e.index === index) return e;
      if (e.index < index) lo = mid + 1;
      else hi = mid - 1;
    }
    return undefined;
  }
}

/**
 * Deletes every legacy point of a disk (its newer points are all v2, which never need a legacy one): manifests newest
 * first, then chunk objects, tables and checkpoints. The lease and the encryption marker stay. An encrypted disk
 * needs its key, as for prune. The caller holds the disk's lease.
 */
export async function dropLegacyPoints(store: ObjectStore, disk: string, key: EncryptionKey | undefined, concurrency = 16): Promise<PruneResult> {
  const started = performance.now();
  validateDiskId(disk);
  const seqs = await listLegacyPointSeqs(store, disk);
  const marker = await readDiskMarker(store, disk, key);
  if (!key && seqs.length > 0) refuseKeylessWrite(await loadPoint(store, disk, seqs[seqs.length - 1]), marker, disk, 'prune');
  for (const s of [...seqs].reverse()) await store.delete(layout.point(disk, s));
  let chunksDeleted = 0;
  let objectsDeleted = 0;
  const rest = async function* () {
    for await (const o of store.list(layout.chunksPrefix(disk))) yield o.key;
    for await (const o of store.list(layout.allTablesPrefix(disk))) yield o.key;
    for await (const o of store.list(layout.pendingPrefix(disk))) yield o.key;
  };
  await forEachBounded(rest(), concurrency, async (k) => {
    await store.delete(k);
    if (parseChunkKey(k)) chunksDeleted++;
    else objectsDeleted++;
  });
  return { disk, kept: [], deleted: seqs, chunksDeleted, objectsDeleted, seconds: (performance.now() - started) / 1000 };
}
