// One replication run of a VMware VM, for the CLI and the agent alike: one snapshot for every selected disk,
// the disks read in parallel (bounded), one point per disk (disk ids "<vm>-disk-<key>"), then one VM point
// that ties them together. The snapshot is removed at the end whatever happened.
import os from 'node:os';
import type { EncryptionKey } from '../crypto/keys.js';
import { ErrorCodes, RnodeError, isRnodeError } from '../errors.js';
import type { CodecId } from '../format/codecs.js';
import { validateNewDiskId, vmLayout } from '../repository/names.js';
import type { LeaseOptions } from '../repository/lease.js';
import { listPointSeqs } from '../repository/points.js';
import { replicate, type ReplicateProgress, type ReplicateResult } from './replicate.js';
import {
  checkVmKey,
  commitVmPoint,
  latestReadableVmPoint,
  recordPartialVmRun,
  type Consistency,
  type VmPoint,
  type VmPointDisk,
} from '../repository/vm-points.js';
import type { BlockSource } from '../source/types.js';
import { VmErrorCodes, vmDiskId, type VirtualDiskInfo, type VmSnapshot, type VmwareSession } from '../source/vmware/index.js';
import { DEFAULT_CONCURRENCY } from '../store/wrap.js';
import type { ObjectStore } from '../store/types.js';
import { retentionWarning, type SweepPacer } from './prune-v2.js';
import { pruneVm } from './vm.js';

/** Chunks in flight for one VM run, shared by the disks read at the same time (replicate's own default per disk). */
const CHUNKS_IN_FLIGHT = 16;

export interface ReplicateDiskArgs {
  disk: string;
  key: number;
  source: BlockSource;
  forceFull: boolean;
  /** Chunks in flight for this disk (its share of the run's). */
  concurrency: number;
}

export interface ReplicateVmOptions {
  session: VmwareSession;
  store: ObjectStore;
  /** Device keys to replicate (default: the session config's disks, else all). */
  disks?: number[];
  chunkSize?: number;
  codec?: CodecId;
  /** Encrypt every disk's chunks with this key. */
  encryption?: EncryptionKey;
  /** Chunks in flight per disk (default: 16 shared by the disks read at once). */
  concurrency?: number;
  /** Disks read at the same time (default: defaultDiskParallelism()). */
  diskParallelism?: number;
  forceFull?: boolean;
  signal?: AbortSignal;
  snapshotName?: string;
  /** Application-consistent snapshot through VMware Tools (default: the session config's quiesce). */
  quiesce?: boolean;
  /** When quiescing is impossible: crash-consistent snapshot with a warning (default), or fail the run. */
  quiesceFallback?: 'fallback' | 'fail';
  /** Independent and physical RDM disks cannot be snapshot: skip them with a reason (default) or fail. */
  unsupportedDisks?: 'skip' | 'fail';
  /** The disk id of a device key (default "<vm>-disk-<key>"). */
  diskId?: (key: number) => string;
  /** After the VM point: keep this many VM points (and the disk points they use). */
  retentionKeep?: number;
  /** Grace period of that retention's sweeps. */
  retentionGraceMs?: number;
  /** Paces the domain sweeps of that retention (an agent runs one after every VM point). */
  pacer?: SweepPacer;
  lease?: LeaseOptions | false;
  onProgress?: (disk: string, p: ReplicateProgress) => void;
  /** Called once the snapshot's disks are open, before any data is read (tests use it to change the VM). */
  onSnapshot?: (snapshot: { moref: string; disks: Array<{ key: number; changeId?: string; fileName: string }> }) => void | Promise<void>;
  /** Replicates one disk (the agent adds pacing, lease waits and metrics). Default: replicate() with the options above. */
  replicateDisk?: (args: ReplicateDiskArgs) => Promise<ReplicateResult>;
}

export interface ReplicateVmDiskResult extends ReplicateResult {
  deviceKey: number;
  /** The CBT change id saved with the point (undefined when CBT is off). */
  changeId?: string;
  /** The VDDK transport the disk was read through. */
  transportMode: string;
}

export interface ReplicateVmResult {
  vm: string;
  vmName: string;
  snapshot: string;
  /** False when the snapshot could not be removed (a warning says so; the next run removes it). */
  snapshotRemoved: boolean;
  /** The VM point this run committed. */
  vmPoint: number;
  consistency: Consistency;
  consistencyReason?: string;
  /** CBT was turned on by this run (this run's points are full or scans; the next ones incremental). */
  cbtEnabledNow: boolean;
  disks: ReplicateVmDiskResult[];
  skipped: VmPoint['skipped'];
  removed: VmPoint['removed'];
  /** Device keys not in the previous VM point (read in full). */
  added: number[];
  /** Snapshots an earlier, killed run left, removed before this one. */
  staleSnapshotsRemoved: string[];
  /** Things that did not stop the run but someone should know (fallbacks, leftovers). */
  warnings: string[];
  /** VM points deleted by retention. */
  prunedVmPoints?: number[];
  diskParallelism: number;
  seconds: number;
}

/**
 * Disks read at the same time by default: reading is mostly waiting on the network and the store, so two
 * disks per core, and no more than the store's concurrency gives four requests per disk.
 */
export function defaultDiskParallelism(disks: number, storeConcurrency = DEFAULT_CONCURRENCY): number {
  const cores = typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
  return Math.max(1, Math.min(disks, 2 * cores, Math.floor(storeConcurrency / 4)));
}

/** Why a disk cannot be part of a VM snapshot, or undefined when it can. */
export function unsupportedReason(d: VirtualDiskInfo): string | undefined {
  if (d.diskMode?.startsWith('independent')) return `disk ${d.key} (${d.label}) is ${d.diskMode}: independent disks are not part of snapshots`;
  if (d.backingType?.includes('RawDiskMapping') && d.compatibilityMode === 'physicalMode') {
    return `disk ${d.key} (${d.label}) is a physical-mode RDM: vSphere cannot snapshot it`;
  }
  return undefined;
}

interface Plan {
  keys: number[];
  skipped: VmPoint['skipped'];
  removed: VmPoint['removed'];
  added: number[];
  /** Device key → why this disk is read in full although it has points. */
  fullReasons: Map<number, string>;
}

async function planDisks(
  opts: ReplicateVmOptions,
  vmDisks: VirtualDiskInfo[],
  prev: VmPoint | undefined,
  diskId: (k: number) => string,
): Promise<Plan> {
  const { session, store } = opts;
  const wanted = opts.disks ?? session.config.disks;
  for (const k of wanted ?? []) {
    if (!vmDisks.some((d) => d.key === k)) {
      throw new RnodeError(
        ErrorCodes.BAD_SOURCE,
        `VM ${session.config.vm} has no virtual disk with device key ${k} (it has ${vmDisks.map((d) => d.key).join(', ') || 'none'}); check "disks"`,
      );
    }
  }
  const plan: Plan = { keys: [], skipped: [], removed: [], added: [], fullReasons: new Map() };
  for (const d of vmDisks) {
    if (wanted && !wanted.includes(d.key)) {
      plan.skipped.push({ key: d.key, label: d.label, reason: 'not selected ("disks")' });
      continue;
    }
    const why = unsupportedReason(d);
    if (why) {
      if ((opts.unsupportedDisks ?? session.config.unsupportedDisks) === 'fail') {
        throw new RnodeError(VmErrorCodes.DISK_UNSUPPORTED, `${why}; deselect it with "disks" or set unsupportedDisks: "skip"`);
      }
      plan.skipped.push({ key: d.key, label: d.label, reason: why });
      session.log(`skipping ${why}`);
      continue;
    }
    plan.keys.push(d.key);
    const before = prev?.disks.find((p) => p.key === d.key);
    // A disk the previous run left out (not selected, or unsupported then) was in the VM all along: its own latest
    // point is its base, and its CBT says what changed since (a reset is seen there). It was reported added, read in full.
    const leftOut = prev?.skipped.some((s) => s.key === d.key) ?? false;
    if (prev && !before && !leftOut) {
      plan.added.push(d.key);
      // A key that had points before (removed, then added again) must not be compared with the old disk's CBT.
      if ((await listPointSeqs(store, diskId(d.key), opts.encryption)).length)
        plan.fullReasons.set(d.key, `disk ${d.key} was added since VM point ${prev.seq}`);
    } else if (before && before.capacityBytes !== d.capacityBytes) {
      plan.fullReasons.set(d.key, `disk ${d.key} was resized from ${before.capacityBytes} to ${d.capacityBytes} bytes (resizing resets CBT)`);
    }
  }
  for (const p of prev?.disks ?? []) {
    if (!vmDisks.some((d) => d.key === p.key)) {
      plan.removed.push({ key: p.key, disk: p.disk, reason: `disk ${p.key} is no longer in the VM; its points are kept` });
      session.log(`disk ${p.key} (${p.disk}) was removed from VM ${session.config.vm} since VM point ${prev!.seq}; its points are kept`);
    }
  }
  if (plan.keys.length === 0)
    throw new RnodeError(
      ErrorCodes.BAD_SOURCE,
      `VM ${session.config.vm} has no disk that can be replicated (${plan.skipped.map((s) => s.reason).join('; ') || 'no virtual disks'})`,
    );
  return plan;
}

/** What a run killed mid-way left: its PrepareForAccess without EndAccess, its snapshot, VDDK's own leftovers. */
async function cleanUpLeftovers(session: VmwareSession, store: ObjectStore, warnings: string[]): Promise<string[]> {
  const vm = session.config.vm;
  const marker = await store.get(vmLayout.access(vm)).catch((err) => {
    if (isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) return undefined;
    throw err;
  });
  if (marker) {
    const was = JSON.parse(marker.toString('utf8')) as { snapshot?: string; at?: string; pid?: number; host?: string };
    warnings.push(
      `a run of VM ${vm} that started at ${was.at ?? '?'} (pid ${was.pid ?? '?'} on ${was.host ?? '?'}) ended without EndAccess; called it now`,
    );
    await session.endStaleAccess();
    await store.delete(vmLayout.access(vm));
  }
  const cleaned = await session.cleanupVddk();
  if (cleaned.cleanedUp > 0 || cleaned.remaining > 0) {
    warnings.push(`VixDiskLib_Cleanup: ${cleaned.cleanedUp} leftover item(s) cleaned, ${cleaned.remaining} remaining`);
  }
  const stale = await session.removeStaleSnapshots();
  if (stale.length)
    warnings.push(`removed ${stale.length} snapshot(s) an earlier rnode run left: ${stale.map((s) => `${s.moref} (${s.name})`).join(', ')}`);
  return stale.map((s) => s.moref);
}

/** Runs `fn` over `items` with at most `limit` at once; all run to the end, results in order. */
async function boundedAll<T, R>(items: T[], limit: number, fn: (item: T) => Promise<R>): Promise<PromiseSettledResult<R>[]> {
  const out: PromiseSettledResult<R>[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    for (let i = next++; i < items.length; i = next++) {
      try {
        out[i] = { status: 'fulfilled', value: await fn(items[i]) };
      } catch (reason) {
        out[i] = { status: 'rejected', reason };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

export async function replicateVm(opts: ReplicateVmOptions): Promise<ReplicateVmResult> {
  const started = performance.now();
  const { session, store } = opts;
  const diskId = opts.diskId ?? ((k: number) => vmDiskId(session.config.vm, k));
  const warnings: string[] = [];
  const staleSnapshotsRemoved = await cleanUpLeftovers(session, store, warnings);
  const vm = await session.vmInfo();
  const prev = await latestReadableVmPoint(store, vm.moref, opts.encryption, warnings);
  const plan = await planDisks(opts, vm.disks, prev, diskId);
  // A disk id no new point may take fails here, before the snapshot, not in that disk's replicate.
  for (const k of plan.keys) validateNewDiskId(diskId(k));
  // A missing or wrong key fails here, before the VM is reconfigured or a snapshot taken, not in the disks' reads.
  await checkVmKey(store, vm.moref, plan.keys.map(diskId), opts.encryption);
  const cbt = await session.ensureChangeTracking(vm);
  if (!cbt.enabled) {
    warnings.push(
      `CBT is off for VM ${vm.moref} and enableCbt is false: every run reads all allocated areas and compares them with the previous point (disks[].rescanReason)`,
    );
  }
  if (opts.signal?.aborted) throw opts.signal.reason;

  const snap = await snapshotVm(opts, vm.moref, plan.keys);
  if (snap.consistencyReason) warnings.push(`${snap.consistencyReason}; this VM point is crash-consistent`);

  const parallel = Math.max(1, Math.min(plan.keys.length, opts.diskParallelism ?? defaultDiskParallelism(plan.keys.length)));
  const perDisk = opts.concurrency ?? Math.max(4, Math.ceil(CHUNKS_IN_FLIGHT / parallel));
  const replicateDisk =
    opts.replicateDisk ??
    ((a: ReplicateDiskArgs) =>
      replicate({
        store,
        source: a.source,
        disk: a.disk,
        chunkSize: opts.chunkSize,
        codec: opts.codec,
        encryption: opts.encryption,
        concurrency: a.concurrency,
        forceFull: a.forceFull,
        signal: opts.signal,
        lease: opts.lease,
        onProgress: opts.onProgress && ((p) => opts.onProgress!(a.disk, p)),
      }));

  let failure: unknown;
  let results: ReplicateVmDiskResult[] = [];
  let point: VmPoint | undefined;
  let snapshotRemoved = false;
  try {
    const config = await session.client.snapshotConfig(snap.moref);
    await opts.onSnapshot?.({ moref: snap.moref, disks: snap.disks.map((d) => ({ key: d.key, changeId: d.changeId, fileName: d.fileName })) });
    const settled = await boundedAll(snap.disks, parallel, async (d) => {
      if (opts.signal?.aborted) throw opts.signal.reason;
      const source = snap.source(d.key);
      const disk = diskId(d.key);
      const reason = plan.fullReasons.get(d.key);
      const r = await replicateDisk({ disk, key: d.key, source, forceFull: Boolean(opts.forceFull || reason), concurrency: perDisk });
      if (r.rescanReason) session.log(`disk ${d.key}: read all allocated areas: ${r.rescanReason}`);
      const out: ReplicateVmDiskResult = {
        ...r,
        deviceKey: d.key,
        ...(d.changeId ? { changeId: d.changeId } : {}),
        transportMode: source.transportMode,
      };
      if (reason && r.full) out.fullReason = reason;
      return out;
    });
    results = settled.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
    const failed = snap.disks.flatMap((d, i) => (settled[i].status === 'rejected' ? [{ d, err: (settled[i] as PromiseRejectedResult).reason }] : []));
    if (failed.length)
      failure = await recordFailedRun(
        opts,
        vm.moref,
        snap,
        results,
        failed.map((f) => ({ key: f.d.key, disk: diskId(f.d.key), err: f.err })),
      );
    else point = await commitRun(opts, vm, snap, results, plan, config);
  } catch (err) {
    failure ??= err;
  } finally {
    try {
      await snap.remove();
      snapshotRemoved = true;
    } catch (err) {
      // The next run removes a leftover snapshot; a committed VM point stays good.
      if (failure === undefined && point) warnings.push(`${(err as Error).message}; the next run removes it`);
      else if (failure === undefined) failure = err;
      else session.log((err as Error).message);
    }
    // EndAccess ran even when the snapshot could not be removed: with the marker left, the next run called it again
    // and warned of a run that "ended without EndAccess".
    if (snap.accessEnded) await store.delete(vmLayout.access(vm.moref)).catch(() => undefined);
  }
  if (failure !== undefined || !point) {
    const err = failure ?? new RnodeError(ErrorCodes.INTERNAL, 'the VM run ended without a VM point and without an error');
    if (isRnodeError(err)) {
      err.details.snapshot ??= snap.moref;
      err.details.committed ??= results.map((r) => ({ disk: r.disk, point: r.point }));
    }
    throw err;
  }
  let prunedVmPoints: number[] | undefined;
  // The VM point is committed: retention failing after it is a warning (the next run's retention tries again), never
  // the run's failure, which told its caller there was no point.
  if (opts.retentionKeep) {
    try {
      prunedVmPoints = (
        await pruneVm({
          store,
          vm: vm.moref,
          keep: opts.retentionKeep,
          graceMs: opts.retentionGraceMs,
          lease: opts.lease,
          encryption: opts.encryption,
          pacer: opts.pacer,
        })
      ).deletedVmPoints;
    } catch (err) {
      warnings.push(retentionWarning(`VM point ${point.seq} of ${vm.moref}`, err));
    }
  }
  for (const w of warnings) session.log(w);
  return {
    vm: vm.moref,
    vmName: vm.name,
    snapshot: snap.moref,
    snapshotRemoved,
    vmPoint: point.seq,
    consistency: point.consistency,
    ...(point.consistencyReason ? { consistencyReason: point.consistencyReason } : {}),
    cbtEnabledNow: cbt.enabledNow,
    disks: results,
    skipped: plan.skipped,
    removed: plan.removed,
    added: plan.added,
    staleSnapshotsRemoved,
    warnings,
    ...(prunedVmPoints ? { prunedVmPoints } : {}),
    diskParallelism: parallel,
    seconds: (performance.now() - started) / 1000,
  };
}

/**
 * Takes the VM's snapshot of the planned disks. A marker object says "PrepareForAccess may be in force" until the
 * snapshot is removed: a run killed before its EndAccess leaves it, and the next run calls EndAccess for it
 * (cleanUpLeftovers).
 */
async function snapshotVm(opts: ReplicateVmOptions, vm: string, keys: number[]): Promise<VmSnapshot> {
  const { session, store } = opts;
  await store.put(vmLayout.access(vm), Buffer.from(JSON.stringify({ at: new Date().toISOString(), pid: process.pid, host: os.hostname() })));
  try {
    return await session.createSnapshot({
      name: opts.snapshotName,
      disks: keys,
      quiesce: opts.quiesce,
      quiesceFallback: opts.quiesceFallback ?? session.config.quiesceFallback,
    });
  } catch (err) {
    // createSnapshot closed what it opened (EndAccess included) before it threw.
    await store.delete(vmLayout.access(vm)).catch(() => undefined);
    throw err;
  }
}

/**
 * No VM point when a disk failed: the disks that committed are recorded as outside any VM point, and the next run
 * makes a whole one. Returns the error the run ends with (a cancellation only when every failure is one).
 */
async function recordFailedRun(
  opts: ReplicateVmOptions,
  vm: string,
  snap: VmSnapshot,
  results: ReplicateVmDiskResult[],
  failed: Array<{ key: number; disk: string; err: unknown }>,
): Promise<unknown> {
  const { session } = opts;
  if (results.length) {
    const key = await recordPartialVmRun(
      opts.store,
      {
        vm,
        snapshot: snap.moref,
        committed: results.map((r) => ({ key: r.deviceKey, disk: r.disk, point: r.point })),
        failed: failed.map((f) => ({
          key: f.key,
          disk: f.disk,
          code: isRnodeError(f.err) ? f.err.code : ErrorCodes.INTERNAL,
          message: (f.err as Error).message ?? String(f.err),
        })),
      },
      opts.encryption,
    ).catch((err) => {
      session.log(`could not record the partial run: ${(err as Error).message}`);
      return undefined;
    });
    session.log(
      `no VM point: disk(s) ${failed.map((f) => f.key).join(', ')} failed; ` +
        `point(s) ${results.map((r) => `${r.disk}#${r.point}`).join(', ')} committed outside any VM point${key ? ` (recorded in ${key})` : ''}`,
    );
  }
  return failed.find((f) => !isRnodeError(f.err, ErrorCodes.CANCELLED))?.err ?? failed[0].err;
}

/** Every disk committed its point: the VM point that names them all, with the snapshot's consistency and the VM's configuration. */
async function commitRun(
  opts: ReplicateVmOptions,
  vm: { moref: string; name: string },
  snap: VmSnapshot,
  results: ReplicateVmDiskResult[],
  plan: { skipped: VmPoint['skipped']; removed: VmPoint['removed'] },
  config: VmPoint['config'],
): Promise<VmPoint> {
  const byKey = new Map(snap.disks.map((d) => [d.key, d]));
  const disks: VmPointDisk[] = results.map((r) => {
    const d = byKey.get(r.deviceKey)!;
    return {
      key: r.deviceKey,
      disk: r.disk,
      point: r.point,
      label: d.label,
      fileName: d.fileName,
      capacityBytes: r.diskSize,
      ...(r.changeId ? { changeId: r.changeId } : {}),
      transport: r.transportMode,
      ...(r.full && r.fullReason ? { fullReason: r.fullReason } : {}),
      ...(r.rescanReason ? { rescanReason: r.rescanReason } : {}),
    };
  });
  return commitVmPoint(
    opts.store,
    {
      vm: vm.moref,
      vmName: vm.name,
      snapshot: { moref: snap.moref, name: snap.name, createdAt: snap.createdAt },
      consistency: snap.consistency,
      ...(snap.consistencyReason ? { consistencyReason: snap.consistencyReason } : {}),
      disks,
      skipped: plan.skipped,
      removed: plan.removed,
      config,
    },
    opts.encryption,
  );
}
