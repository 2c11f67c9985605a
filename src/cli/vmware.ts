// `rnode replicate` for VMware VMs (--source vddk://<host>/<vm-moref>[?disk=..] and/or --source-config <file.json>),
// and `points|recover|prune --vm <moref>` on VM points. Thin like the other commands: parse, validate, call a job, print.
import { ErrorCodes, RnodeError } from '../errors.js';
import { codecByName } from '../format/codecs.js';
import { validateChunkSize } from '../pipeline/grid.js';
import { replicateVm, type ReplicateVmResult } from '../jobs/replicate-vm.js';
import { goneDiskPoint, goneDiskPoints, pruneVm, recoverVm } from '../jobs/vm.js';
import { listVmPointsOf, resolveVmPoint } from '../repository/vm-points.js';
import { exitVddk, loadVmwareConfig, parseVddkUrl, VmwareSession, type VmwareSourceConfig } from '../source/vmware/index.js';
import { parseBandwidth } from '../transport/index.js';
import { encryptionKeyFrom, parseDuration } from './args.js';
import { bytes, failureLine, rate, secs } from './format.js';
import { stoppable } from './signals.js';
import { openStoreFromFlags } from './store-flags.js';
import type { WrappedStore } from '../store/wrap.js';

import { VM_PRUNE_USAGE, VM_RECOVER_USAGE } from './vmware-flags.js';

export { isVmwareSource } from './vmware-flags.js';

interface Io {
  out: (line: string) => void;
  err: (line: string) => void;
}
type Values = Record<string, string | boolean | undefined>;

function positive(text: string, flag: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(n) || n < 1)
    throw new RnodeError(ErrorCodes.USAGE, `--${flag} must be a positive integer, got "${text}"`);
  return n;
}

/** Builds the VMware config from --source-config and/or --source vddk://, the URL overriding the file. */
export function vmwareConfigFrom(v: Values): VmwareSourceConfig {
  const file = typeof v['source-config'] === 'string' ? v['source-config'] : undefined;
  const url = typeof v.source === 'string' ? v.source : undefined;
  if (url && !/^vddk:\/\//i.test(url)) {
    throw new RnodeError(ErrorCodes.USAGE, '--source-config describes a VMware VM; --source must then be a vddk:// URL or be left out');
  }
  const fromFile = file ? loadVmwareConfig(file) : undefined;
  if (url) return parseVddkUrl(url, fromFile ?? {});
  return fromFile!;
}

/** Runs one replication of a VMware VM; returns the exit code. */
export async function replicateVmwareCommand(v: Values, io: Io): Promise<number> {
  if (typeof v.target !== 'string' || v.target === '')
    throw new RnodeError(ErrorCodes.USAGE, '"rnode replicate" needs --target; see "rnode replicate --help"');
  if (v.disk !== undefined) {
    throw new RnodeError(
      ErrorCodes.USAGE,
      'VMware disks are stored as "<vm-moref>-disk-<device key>"; choose disks with ?disk=<key> or "disks" in the source config, not --disk',
    );
  }
  // Taken by a file source's replicate and not (yet) by a VM's: given here they were accepted and ignored.
  const ignored = ['pack-size', 'cache-dir'].find((f) => v[f] !== undefined);
  if (ignored)
    throw new RnodeError(
      ErrorCodes.USAGE,
      `--${ignored} is not taken by a VMware replicate (its disks use the repository's defaults); see "rnode replicate --help"`,
    );
  const config = vmwareConfigFrom(v);
  const chunkSize = typeof v['chunk-size'] === 'string' ? validateChunkSize(v['chunk-size']) : undefined;
  const codec = typeof v.compression === 'string' ? codecByName(v.compression) : undefined;
  const concurrency = typeof v.concurrency === 'string' ? positive(v.concurrency, 'concurrency') : undefined;
  const diskParallelism = typeof v['disk-parallelism'] === 'string' ? positive(v['disk-parallelism'], 'disk-parallelism') : undefined;
  const encryption = encryptionKeyFrom(v);
  const json = v.json === true;
  const log = (line: string) => {
    if (!json) io.err(`rnode: ${line}`);
  };

  const bandwidth = typeof v.bandwidth === 'string' ? parseBandwidth(v.bandwidth) : undefined;
  const target = v.target;
  let store: WrappedStore | undefined;
  let r: ReplicateVmResult;
  try {
    // A stopped run still goes through replicateVm's finally: the snapshot it took is removed before the exit.
    r = await stoppable(
      'replicate',
      'its vSphere snapshot was removed and no VM point was made: run the same command again ' + '(chunks already stored are not stored again)',
      async (signal) => {
        store = await openStoreFromFlags(target, v, { bandwidth, creates: true, flag: '--target', signal });
        const session = await VmwareSession.open(config, { log });
        try {
          return await replicateVm({
            session,
            store,
            chunkSize,
            codec,
            concurrency,
            diskParallelism,
            encryption,
            forceFull: v.full === true,
            signal,
          });
        } finally {
          await session.close().catch((err) => log(`logging out of vSphere failed: ${(err as Error).message}`));
        }
      },
    );
  } finally {
    await store?.close();
    await exitVddk().catch(() => undefined);
  }
  if (json) {
    io.out(JSON.stringify(r));
    return 0;
  }
  io.out(
    `VM point ${r.vmPoint} of ${r.vm} (${r.vmName}), ${r.consistency}-consistent: ${r.disks.length} disk${r.disks.length === 1 ? '' : 's'} ` +
      `from snapshot ${r.snapshot} (${r.snapshotRemoved ? 'removed' : 'left on the VM: see the warning'}), ${r.diskParallelism} at a time, in ${secs(r.seconds)}` +
      (r.cbtEnabledNow ? '; CBT was turned on by this run' : ''),
  );
  for (const w of r.warnings) io.out(`  warning: ${w}`);
  for (const s of r.skipped) io.out(`  skipped disk ${s.key}: ${s.reason}`);
  for (const s of r.removed) io.out(`  removed disk ${s.key}: ${s.reason}`);
  for (const d of r.disks) {
    io.out(
      `  point ${d.point} of disk ${d.disk}: ${d.full ? 'full' : `incremental on point ${d.rebasedFrom ?? d.parent}`}` +
        (d.fullReason ? ` (${d.fullReason})` : '') +
        (d.rescanReason ? ` (read all allocated areas: ${d.rescanReason})` : '') +
        ` via ${d.transportMode || 'VDDK'}`,
    );
    io.out(`    read     ${bytes(d.bytesRead)} of a ${bytes(d.diskSize)} disk in ${secs(d.seconds)} (${rate(d.diskSize, d.seconds)} of disk)`);
    io.out(
      `    chunks   ${d.chunksChanged} changed, ${d.chunksZero} zero, ${d.chunksTotal} in all (${bytes(d.chunkSize)} each); stored ${bytes(d.bytesWritten)}`,
    );
  }
  return 0;
}

/** `rnode points --vm`: the VM points of a VM, oldest first. */
export async function vmPointsCommand(v: Values, io: Io): Promise<number> {
  const { storeArg, vm } = vmArgs(v, 'points');
  const store = await openStoreFromFlags(storeArg, v);
  try {
    const key = encryptionKeyFrom(v);
    // A record that cannot be read is named in place of its row and hides no other (it hid them all, exit 1).
    const { points, problems } = await listVmPointsOf(store, vm, key);
    // A VM with no VM point record at all is a wrong --vm or --store, as for recover and prune (it printed "no VM
    // points" and exit 0): resolveVmPoint says so.
    if (points.length === 0 && problems.length === 0) await resolveVmPoint(store, vm, undefined);
    // A VM point one of whose disk points is gone (deleted by an rnode that let prune --disk do it) restores nothing:
    // named, as `points` names a damaged point, and the command exits 1.
    for (const p of points) {
      for (const d of await goneDiskPoints(store, p, key)) {
        problems.push({ vmPoint: p.seq, code: ErrorCodes.POINT_NOT_FOUND, message: `${goneDiskPoint(p, d)}: it cannot be restored` });
      }
    }
    const rows = points.map((p) => ({
      vmPoint: p.seq,
      snapshot: p.snapshot.moref,
      snapshotTime: p.snapshot.createdAt,
      consistency: p.consistency,
      ...(p.consistencyReason ? { consistencyReason: p.consistencyReason } : {}),
      disks: p.disks.map((d) => ({ key: d.key, disk: d.disk, point: d.point, transport: d.transport })),
      skipped: p.skipped,
      removed: p.removed,
    }));
    if (v.json === true) io.out(JSON.stringify({ vm, vmPoints: rows, problems }));
    else if (rows.length === 0) io.out(`VM ${vm} has no VM points`);
    else {
      io.out('vm point  snapshot        taken                     consistency  disks (disk id#point)');
      for (const r of rows) {
        io.out(
          `${String(r.vmPoint).padEnd(9)} ${r.snapshot.padEnd(15)} ${r.snapshotTime.padEnd(25)} ${r.consistency.padEnd(12)} ${r.disks.map((d) => `${d.disk}#${d.point}`).join(' ')}`,
        );
      }
      for (const p of problems) io.out(`${p.code}: ${p.message}`);
      if (problems.length) io.err(failureLine(problems[0].code, `${problems.length} problem(s) with VM ${vm}'s VM points, named above`));
    }
    return problems.length ? 1 : 0;
  } finally {
    await store.close();
  }
}

/** `rnode recover --vm --point --out-dir`: every disk of one VM point, and the VM point (with the VM config) beside them. */
export async function vmRecoverCommand(v: Values, io: Io): Promise<number> {
  const { storeArg, vm } = vmArgs(v, 'recover');
  if (typeof v['out-dir'] !== 'string' || v['out-dir'] === '')
    throw new RnodeError(ErrorCodes.USAGE, `"rnode recover --vm" needs --out-dir; ${VM_RECOVER_USAGE}`);
  if (v.out !== undefined || v.disk !== undefined)
    throw new RnodeError(ErrorCodes.USAGE, '--vm restores every disk of a VM point into --out-dir; --out and --disk are for one disk');
  const outDir = v['out-dir'];
  const encryption = encryptionKeyFrom(v);
  const store = await openStoreFromFlags(storeArg, v);
  try {
    const r = await stoppable('recover', 'run the same command again to recover the VM point', (signal) =>
      recoverVm({ store, vm, point: typeof v.point === 'string' ? v.point : undefined, outDir, encryption, signal }),
    );
    if (v.json === true) io.out(JSON.stringify(r));
    else {
      io.out(`recovered VM point ${r.vmPoint} of ${r.vm} (snapshot ${r.snapshot}, ${r.consistency}-consistent) in ${secs(r.seconds)}`);
      for (const d of r.disks) io.out(`  disk ${d.key}: point ${d.point} of ${d.disk} -> ${d.out} (${bytes(d.diskSize)})`);
      io.out(`  the VM point and the VM's configuration: ${r.configFile}`);
    }
  } finally {
    await store.close();
  }
  return 0;
}

/** `rnode prune --vm --keep`: keeps whole VM points. */
export async function vmPruneCommand(v: Values, io: Io): Promise<number> {
  const { storeArg, vm } = vmArgs(v, 'prune');
  if (typeof v.keep !== 'string') throw new RnodeError(ErrorCodes.USAGE, `"rnode prune --vm" needs --keep; ${VM_PRUNE_USAGE}`);
  const keep = positive(v.keep, 'keep');
  // The repository's maintenance flags: a VM's retention deletes points, its disks' sweeps run with --grace.
  const other = ['max-unused', 'reset-marks'].find((f) => v[f] !== undefined);
  if (other)
    throw new RnodeError(
      ErrorCodes.USAGE,
      `--${other} does not go with --vm: run "rnode prune --store <store> --${other} ..." for the repository; ${VM_PRUNE_USAGE}`,
    );
  const graceMs = typeof v.grace === 'string' ? parseDuration(v.grace, 'grace') : undefined;
  const store = await openStoreFromFlags(storeArg, v);
  try {
    // A VM with no points is a wrong --vm or --store (it reported "kept none; deleted none" and exit 0).
    await resolveVmPoint(store, vm, undefined);
    const r = await stoppable('prune', 'nothing was deleted: run the same command again', (signal) =>
      pruneVm({ store, vm, keep, encryption: encryptionKeyFrom(v), signal, ...(graceMs !== undefined ? { graceMs } : {}) }),
    );
    if (v.json === true) io.out(JSON.stringify(r));
    else {
      io.out(
        `kept VM point${r.kept.length === 1 ? '' : 's'} ${r.kept.join(', ') || 'none'} of ${vm}; deleted ${r.deletedVmPoints.join(', ') || 'none'}`,
      );
      for (const d of r.disks) io.out(`  disk ${d.disk}: deleted points ${d.deleted.join(', ') || 'none'}`);
    }
  } finally {
    await store.close();
  }
  return 0;
}

function vmArgs(v: Values, cmd: string): { storeArg: string; vm: string } {
  if (typeof v.store !== 'string' || v.store === '') throw new RnodeError(ErrorCodes.USAGE, `"rnode ${cmd} --vm" needs --store`);
  if (typeof v.vm !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(v.vm)) {
    throw new RnodeError(ErrorCodes.USAGE, `--vm must be a VM MoRef (e.g. vm-42), got "${String(v.vm)}"`);
  }
  return { storeArg: v.store, vm: v.vm };
}
