// One replication run of a VMware VM: one snapshot, one recovery point per selected disk (disk ids
// "<vm>-disk-<key>"), and the snapshot removed at the end whatever happened.
import type { EncryptionKey } from '../crypto/keys.js';
import { isRnodeError } from '../errors.js';
import type { CodecId } from '../format/codecs.js';
import { replicate, type ReplicateProgress, type ReplicateResult } from '../recovery/replicate.js';
import type { ObjectStore } from '../store/types.js';
import { vmDiskId, type VmwareSession } from '../source/vmware/index.js';

export interface ReplicateVmOptions {
  session: VmwareSession;
  store: ObjectStore;
  /** Device keys to replicate (default: the session config's disks, else all). */
  disks?: number[];
  chunkSize?: number;
  codec?: CodecId;
  /** Encrypt every disk's chunks with this key. */
  encryption?: EncryptionKey;
  concurrency?: number;
  forceFull?: boolean;
  signal?: AbortSignal;
  snapshotName?: string;
  onProgress?: (disk: string, p: ReplicateProgress) => void;
  /** Called once the snapshot's disks are open, before any data is read (tests use it to change the VM). */
  onSnapshot?: (snapshot: { moref: string; disks: Array<{ key: number; changeId?: string; fileName: string }> }) => void | Promise<void>;
}

export interface ReplicateVmDiskResult extends ReplicateResult {
  deviceKey: number;
  /** The CBT change id saved with the point (undefined when CBT is off). */
  changeId?: string;
  transportMode: string;
}

export interface ReplicateVmResult {
  vm: string;
  vmName: string;
  snapshot: string;
  /** CBT was turned on by this run (this run's points are full or scans; the next ones incremental). */
  cbtEnabledNow: boolean;
  disks: ReplicateVmDiskResult[];
  seconds: number;
}

export async function replicateVm(opts: ReplicateVmOptions): Promise<ReplicateVmResult> {
  const started = performance.now();
  const { session, store } = opts;
  const vm = await session.vmInfo();
  const cbt = await session.ensureChangeTracking(vm);
  const snap = await session.createSnapshot({ name: opts.snapshotName, disks: opts.disks ?? session.config.disks });
  const results: ReplicateVmDiskResult[] = [];
  let failure: unknown;
  try {
    await opts.onSnapshot?.({ moref: snap.moref, disks: snap.disks.map((d) => ({ key: d.key, changeId: d.changeId, fileName: d.fileName })) });
    // Disks one after another: each already keeps the store and the cores busy through replicate's own concurrency.
    for (const d of snap.disks) {
      const source = snap.source(d.key);
      const disk = vmDiskId(vm.moref, d.key);
      const r = await replicate({
        store, source, disk, chunkSize: opts.chunkSize, codec: opts.codec, encryption: opts.encryption, concurrency: opts.concurrency,
        forceFull: opts.forceFull, signal: opts.signal, onProgress: opts.onProgress && ((p) => opts.onProgress!(disk, p)),
      });
      if (r.rescanReason) session.log(`disk ${d.key}: read all allocated areas: ${r.rescanReason}`);
      results.push({ ...r, deviceKey: d.key, ...(d.changeId ? { changeId: d.changeId } : {}), transportMode: source.transportMode });
    }
  } catch (err) {
    failure = err;
  } finally {
    try {
      await snap.remove();
    } catch (err) {
      // The run's own failure matters more; the leftover snapshot is reported next to it.
      if (failure === undefined) failure = err;
      else session.log((err as Error).message);
    }
  }
  if (failure !== undefined) {
    if (isRnodeError(failure)) failure.details.snapshot ??= snap.moref;
    throw failure;
  }
  return { vm: vm.moref, vmName: vm.name, snapshot: snap.moref, cbtEnabledNow: cbt.enabledNow, disks: results, seconds: (performance.now() - started) / 1000 };
}
