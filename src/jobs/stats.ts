// `rnode stats`: what a store holds and what it costs. Per v2 domain: disks, points, logical size (the disks' sizes
// summed over points), data (the non-zero bytes those points describe), unique data (distinct chunks they use), stored
// bytes, the dedup ratio (data / unique data), packs, the bytes prune could reclaim (unused) and those only points
// being written use (pending). An encrypted domain without its key shows object counts and sizes only. Legacy disks
// are counted as they are stored (no dedup).
import type { EncryptionKey } from '../crypto/keys.js';
import type { PointManifest } from '../format/manifest.js';
import { ErrorCodes, isRnodeError } from '../errors.js';
import { isZeroEntry } from '../format/table.js';
import type { ObjectStore } from '../store/types.js';
import { Domain } from '../repository/domain.js';
import { PLAIN_DOMAIN, classify, layout, r2 } from '../repository/names.js';
import { checkKeyOpensOne, listLegacyPointSeqs, listV2PointSeqs, loadPoint, loadV2Chain, refuseLegacyAfterUpgrade } from '../repository/points.js';
import { chainView, isDamage } from '../repository/view.js';
import { scanDomain } from './prune-v2.js';

export interface DomainStats {
  domain: string;
  encrypted: boolean;
  /** False for an encrypted domain whose key was not given, or one with damage (StatsResult.problems): only objects and bytes are known. */
  readable: boolean;
  objects: number;
  storedBytes: number;
  packs: number;
  packBytes: number;
  indexObjects: number;
  indexBytes: number;
  disks?: number;
  points?: number;
  logicalBytes?: number;
  dataBytes?: number;
  uniqueBytes?: number;
  dedupRatio?: number;
  /**
   * Stored bytes of chunks that only points being written (checkpoints) use: neither data of a committed point nor
   * reclaimable while that point may still commit.
   */
  pendingBytes?: number;
  /** Bytes of pack blobs no point uses, plus packs no index lists: what prune and repack can reclaim. */
  unusedBytes?: number;
}

export interface StatsProblem {
  domain?: string;
  disk?: string;
  code: string;
  message: string;
}

export interface StatsResult {
  disks: number;
  points: number;
  logicalBytes: number;
  storedBytes: number;
  /** Over readable v2 domains (legacy points are not deduplicated). */
  dedupRatio: number | null;
  packs: number;
  unusedBytes: number;
  /** Over readable v2 domains: chunks only points being written use (DomainStats.pendingBytes). */
  pendingBytes: number;
  domains: DomainStats[];
  legacy: { disks: number; points: number; logicalBytes: number; storedBytes: number; objects: number };
  /** Domains counted without their key (objects and bytes only). */
  sealedWithoutKey: string[];
  /**
   * Repositories (domain) and legacy disks (disk) whose figures could not be read, with the first damage found: their
   * objects and bytes are counted, the rest is not. The others' figures are whole.
   */
  problems: StatsProblem[];
  seconds: number;
}

/** signal: stops between points (stats only reads). */
export async function stats(opts: { store: ObjectStore; encryption?: EncryptionKey; signal?: AbortSignal }): Promise<StatsResult> {
  const started = performance.now();
  const { store } = opts;
  const key = opts.encryption;
  const byDomain = new Map<string, DomainStats>();
  for await (const o of store.list(r2.prefix)) {
    const h = classify(o.key);
    if (!h || !('domain' in h)) continue;
    let d = byDomain.get(h.domain);
    if (!d) {
      byDomain.set(
        h.domain,
        (d = {
          domain: h.domain,
          encrypted: h.domain !== PLAIN_DOMAIN,
          readable: false,
          objects: 0,
          storedBytes: 0,
          packs: 0,
          packBytes: 0,
          indexObjects: 0,
          indexBytes: 0,
        }),
      );
    }
    d.objects++;
    d.storedBytes += o.size;
    if (h.kind === 'pack') {
      d.packs++;
      d.packBytes += o.size;
    }
    if (h.kind === 'index') {
      d.indexObjects++;
      d.indexBytes += o.size;
    }
  }
  checkKeyOpensOne(store.location, [...byDomain.keys()], key);
  const diskNames = new Set<string>();
  const problems: StatsProblem[] = [];
  const sealedWithoutKey: string[] = [];
  for (const d of byDomain.values()) {
    const k = d.domain === PLAIN_DOMAIN ? undefined : key?.domain === d.domain ? key : null;
    if (k === null) {
      sealedWithoutKey.push(d.domain);
      continue;
    }
    // One damaged object (a manifest, a table, the config) leaves its repository's figures unknown, not the others'.
    // Forged metadata still refuses the whole command, as check and prune do; a store that fails (unreachable,
    // denied) fails it too, to be retried rather than charted as partial.
    try {
      const domain = await Domain.openListed(store, k);
      for (const disk of await countDomain(store, domain, d, opts.signal)) diskNames.add(disk);
      d.readable = true;
    } catch (err) {
      if (!isDamage(err)) throw err;
      problems.push({ domain: d.domain, code: err.code, message: err.message });
    }
  }

  const legacy = { disks: 0, points: 0, logicalBytes: 0, storedBytes: 0, objects: 0 };
  const legacyDisks = new Set<string>();
  for await (const o of store.list(layout.disksPrefix)) {
    const h = classify(o.key);
    // Leases live under disks/ whatever the format: a disk's lock, not data of the legacy format.
    if (h?.kind === 'lease') continue;
    legacy.objects++;
    legacy.storedBytes += o.size;
    if (h?.kind === 'legacy-manifest') legacyDisks.add(h.disk);
  }
  for (const disk of legacyDisks) {
    opts.signal?.throwIfAborted();
    // Its legacy points only: an upgraded disk's v2 points are counted with their repository (they were counted here
    // too). A legacy point written after the upgrade is that disk's problem, as in `disks`: it failed the whole store.
    const points = await legacyPoints(store, disk).catch((err: unknown) => {
      if (!isDamage(err) && !isRnodeError(err, ErrorCodes.LEGACY_AFTER_UPGRADE)) throw err;
      problems.push({ disk, code: err.code, message: err.message });
      return [];
    });
    legacy.points += points.length;
    for (const m of points) legacy.logicalBytes += m.diskSize;
    diskNames.add(disk);
  }
  legacy.disks = legacyDisks.size;

  const domains = [...byDomain.values()];
  const readable = domains.filter((d) => d.readable);
  const data = readable.reduce((s, d) => s + (d.dataBytes ?? 0), 0);
  const unique = readable.reduce((s, d) => s + (d.uniqueBytes ?? 0), 0);
  return {
    disks: diskNames.size,
    points: legacy.points + readable.reduce((s, d) => s + (d.points ?? 0), 0),
    logicalBytes: legacy.logicalBytes + readable.reduce((s, d) => s + (d.logicalBytes ?? 0), 0),
    storedBytes: legacy.storedBytes + domains.reduce((s, d) => s + d.storedBytes, 0),
    dedupRatio: unique > 0 ? data / unique : null,
    packs: domains.reduce((s, d) => s + d.packs, 0),
    unusedBytes: readable.reduce((s, d) => s + (d.unusedBytes ?? 0), 0),
    pendingBytes: readable.reduce((s, d) => s + (d.pendingBytes ?? 0), 0),
    domains,
    legacy,
    sealedWithoutKey,
    problems,
    seconds: (performance.now() - started) / 1000,
  };
}

/** A legacy disk's own points (refused as every reader does when one was written after the disk's upgrade to v2). */
async function legacyPoints(store: ObjectStore, disk: string): Promise<PointManifest[]> {
  const [legacy, v2] = await Promise.all([listLegacyPointSeqs(store, disk), listV2PointSeqs(store, disk)]);
  refuseLegacyAfterUpgrade(disk, legacy, v2);
  const out: PointManifest[] = [];
  for (const s of legacy) out.push(await loadPoint(store, disk, s));
  return out;
}

/**
 * A readable domain's figures, into d; returns the disks it counted. Throws at the first damaged object: its packs'
 * use is not known then (scanDomain), nor its points' data.
 */
async function countDomain(store: ObjectStore, domain: Domain, d: DomainStats, signal?: AbortSignal): Promise<string[]> {
  const scan = await scanDomain(store, domain);
  signal?.throwIfAborted();
  const f = { disks: 0, points: 0, logicalBytes: 0, dataBytes: 0, uniqueBytes: 0, pendingBytes: 0, unusedBytes: 0 };
  for (const p of scan.packs.values()) {
    if (p.blobs.size === 0) f.unusedBytes += p.size;
    for (const [off, b] of p.blobs) {
      // Unique data is what committed points use, as their data is: a checkpoint's chunks would lower the ratio.
      if (p.pendingOnly?.has(off)) f.pendingBytes += b.length;
      else if (p.used.has(off)) f.uniqueBytes += b.plainLength;
      else f.unusedBytes += b.length;
    }
  }
  const disks: string[] = [];
  for (const { disk, objects } of scan.disks.values()) {
    // A disk is one with a committed point (as `rnode disks` lists them), not a first point still being written.
    if (disk === undefined || objects.points.length === 0) continue;
    f.disks++;
    disks.push(disk);
    for (const seq of objects.points) {
      signal?.throwIfAborted();
      const chain = await loadV2Chain(store, disk, seq, domain.key);
      f.points++;
      f.logicalBytes += chain[0].diskSize;
      for await (const e of chainView(store, chain, domain.key)) if (!isZeroEntry(e)) f.dataBytes += e.plainLength;
    }
  }
  Object.assign(d, f, { dedupRatio: f.uniqueBytes > 0 ? f.dataBytes / f.uniqueBytes : 1 });
  return disks;
}
