// Jobs on VM points, for the CLI and the agent: restore every disk of one VM point, and retention that keeps
// whole VM points (a VM point is never left with one of its disk points pruned away).
import fs from 'node:fs';
import path from 'node:path';
import type { EncryptionKey } from '../crypto/keys.js';
import { ErrorCodes, RnodeError, isRnodeError } from '../errors.js';
import type { LeaseOptions } from '../repository/lease.js';
import { outputPath } from '../output/index.js';
import { listPointSeqs } from '../repository/points.js';
import { prune, type SweepPacer } from './prune-v2.js';
import { recover, type RecoverResult } from './restore.js';
import {
  checkVmPointKey,
  deletePartialRunsBefore,
  deleteVmPoints,
  listVmPointSeqs,
  loadVmPoint,
  resolveVmPoint,
  type VmPoint,
  type VmPointDisk,
} from '../repository/vm-points.js';
import type { ObjectStore } from '../store/types.js';
import { assertOutsideStore } from '../store/containment.js';
import { makeDirs, unusablePath } from '../store/fs/dirs.js';

export interface RecoverVmOptions {
  store: ObjectStore;
  vm: string;
  /** A VM point number or "latest" (default). */
  point?: string;
  /** Each disk is written to <outDir>/<disk id>.img, the VM point (with the VM config) to <outDir>/vm-point.json. */
  outDir: string;
  encryption?: EncryptionKey;
  /** Stops the recovery between disks and inside the one being written (its output is left incomplete). */
  signal?: AbortSignal;
}

export interface RecoverVmResult {
  vm: string;
  vmPoint: number;
  snapshot: string;
  consistency: VmPoint['consistency'];
  disks: Array<RecoverResult & { key: number }>;
  configFile: string;
  seconds: number;
}

export async function recoverVm(opts: RecoverVmOptions): Promise<RecoverVmResult> {
  const started = performance.now();
  const outDir = outputPath(opts.outDir, '--out-dir');
  const seq = await resolveVmPoint(opts.store, opts.vm, opts.point);
  const p = await loadVmPoint(opts.store, opts.vm, seq, opts.encryption);
  // A missing or wrong key fails before the output folder exists (the first disk's recover found it after).
  await checkVmPointKey(opts.store, p, opts.encryption);
  // Every disk point before any disk is written: a gone one (deleted by an rnode that let prune --disk do it) failed
  // the restore after the disks before it were written.
  const gone = (await goneDiskPoints(opts.store, p, opts.encryption))[0];
  if (gone) throw new RnodeError(ErrorCodes.POINT_NOT_FOUND, `${goneDiskPoint(p, gone)}; nothing was written: restore another VM point`);
  assertOutsideStore(opts.store.location, outDir, '--out-dir'); // before the folder is made there
  try {
    await makeDirs(outDir); // not Node's recursive mkdir: it spins forever under /proc
  } catch (err) {
    throw unusablePath(`output folder ${outDir}`, err) ?? err;
  }
  // vm-point.json says the folder holds a finished restore: an earlier one's goes first, so a run that fails midway
  // leaves disks of two points without it, never beside it.
  const configFile = path.join(outDir, 'vm-point.json');
  fs.rmSync(configFile, { force: true });
  const disks: RecoverVmResult['disks'] = [];
  // A VM point whose job named one disk id for two device keys (an agent before it refused such jobs): each device
  // gets a file of its own, named by its key too. One name for both wrote one disk over the other, exit 0.
  const shared = new Set(p.disks.filter((d, i) => p.disks.findIndex((e) => e.disk === d.disk) !== i).map((d) => d.disk));
  for (const d of p.disks) {
    opts.signal?.throwIfAborted();
    const r = await recover({
      store: opts.store,
      disk: d.disk,
      point: String(d.point),
      out: path.join(outDir, shared.has(d.disk) ? `${d.disk}.key-${d.key}.img` : `${d.disk}.img`),
      encryption: opts.encryption,
      signal: opts.signal,
    });
    disks.push({ ...r, key: d.key });
  }
  const tmp = `${configFile}.partial`;
  fs.writeFileSync(tmp, JSON.stringify(p, null, 2));
  fs.renameSync(tmp, configFile); // whole or absent
  return {
    vm: p.vm,
    vmPoint: p.seq,
    snapshot: p.snapshot.moref,
    consistency: p.consistency,
    disks,
    configFile,
    seconds: (performance.now() - started) / 1000,
  };
}

/** The disk points a VM point names that the store does not hold (none, as docs/vmware.md promises). */
export async function goneDiskPoints(store: ObjectStore, p: VmPoint, encryption?: EncryptionKey): Promise<VmPointDisk[]> {
  const gone: VmPointDisk[] = [];
  for (const d of p.disks) if (!(await listPointSeqs(store, d.disk, encryption)).includes(d.point)) gone.push(d);
  return gone;
}

export const goneDiskPoint = (p: VmPoint, d: VmPointDisk) =>
  `VM point ${p.seq} of ${p.vm} uses point ${d.point} of disk ${d.disk}, which the store no longer holds`;

export interface PruneVmOptions {
  store: ObjectStore;
  vm: string;
  keep: number;
  lease?: LeaseOptions | false;
  /** The disks' key: pruning an encrypted disk rewrites authenticated tables. */
  encryption?: EncryptionKey;
  /** Paces the domain sweeps of the disks' retention (an agent's, after every VM run). */
  pacer?: SweepPacer;
  /** Grace period of those sweeps (default DEFAULT_GRACE_MS). */
  graceMs?: number;
  /** Honoured only before anything is deleted: once the VM points are gone, the disks' retention must follow. */
  signal?: AbortSignal;
}

export interface PruneVmResult {
  vm: string;
  kept: number[];
  deletedVmPoints: number[];
  disks: Array<{ disk: string; deleted: number[] }>;
}

/**
 * Keeps the newest `keep` VM points. Order makes a crash safe: the older VM point records go first (a VM point
 * that exists always has all its disk points), then each disk keeps every point from the oldest one a kept VM
 * point uses (disk points in between, of partial runs, stay too: prune keeps a newest run of points).
 * Points of disks no kept VM point uses (removed disks) are left alone: `rnode prune --disk` removes them.
 */
export async function pruneVm(opts: PruneVmOptions): Promise<PruneVmResult> {
  const { store, vm, keep } = opts;
  const seqs = await listVmPointSeqs(store, vm);
  // The newest `keep` VM points that can be read: a damaged record restores nothing, so it neither counts as kept (it
  // stopped every prune of the VM, and kept no disk point) nor is deleted while it is newer than the oldest kept.
  const keptPoints: VmPoint[] = [];
  for (let i = seqs.length - 1; i >= 0 && keptPoints.length < keep; i--) {
    const p = await loadVmPoint(store, vm, seqs[i], opts.encryption).catch((err: unknown) => {
      if (isRnodeError(err, ErrorCodes.MANIFEST_CORRUPT)) return undefined;
      throw err;
    });
    if (p) keptPoints.unshift(p);
  }
  const kept = keptPoints.map((p) => p.seq);
  const doomed = keptPoints.length < keep ? [] : seqs.filter((s) => s < kept[0]);
  if (doomed.length === 0) return { vm, kept, deletedVmPoints: [], disks: [] };
  const oldestUsed = new Map<string, number>();
  for (const p of keptPoints) {
    // Without their key, encrypted disks list no points: the VM points would go and the disks keep all theirs.
    await checkVmPointKey(store, p, opts.encryption);
    for (const d of p.disks) oldestUsed.set(d.disk, Math.min(oldestUsed.get(d.disk) ?? Infinity, d.point));
  }
  // A run stopped after this line would leave disk points that no rerun prunes (it finds no VM point to delete).
  opts.signal?.throwIfAborted();
  await deleteVmPoints(store, vm, doomed);
  const disks: PruneVmResult['disks'] = [];
  for (const [disk, oldest] of oldestUsed) {
    const points = await listPointSeqs(store, disk, opts.encryption);
    const keepN = points.filter((s) => s >= oldest).length;
    if (keepN > 0 && keepN < points.length) {
      const r = await prune({
        store,
        disk,
        keep: keepN,
        encryption: opts.encryption,
        pacer: opts.pacer,
        graceMs: opts.graceMs,
        ...(opts.lease !== undefined ? { lease: opts.lease } : {}),
      });
      disks.push({ disk, deleted: r.deleted });
    }
  }
  await deletePartialRunsBefore(store, vm, kept[0]);
  return { vm, kept, deletedVmPoints: doomed, disks };
}
