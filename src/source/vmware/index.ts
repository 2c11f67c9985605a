// The VMware source, the one public entry of src/source/vmware: vSphere (SOAP vim25) for snapshots and CBT,
// VDDK (the addon's binding) for the data. `vddk://` opens one disk as a BlockSource; the job layer
// (src/jobs/replicate-vm.ts) replicates all disks of a VM from one snapshot through VmwareSession.
import { ErrorCodes, RnodeError } from '../../errors.js';
import type { BlockSource } from '../types.js';
import { loadVmwareConfig, parseVddkUrl, type VmwareSourceConfig } from './config.js';
import { VmwareSession } from './session.js';

export { loadVmwareConfig, parseVddkUrl, validateVmwareConfig, redactUrl, type VmwareSourceConfig } from './config.js';
export {
  VmwareSession,
  VmSnapshot,
  VmErrorCodes,
  SNAPSHOT_DESCRIPTION,
  type SessionOptions,
  type SnapshotRequest,
  type Consistency,
} from './session.js';
export { VddkSource, parseChangeId } from './source.js';
export {
  initVddk,
  exitVddk,
  connectVddk,
  cleanupVddk,
  endAccessVddk,
  parseTransports,
  VddkError,
  VddkErrorCodes,
  type VddkFeatures,
} from './vddk.js';
export { VSphereClient, normalizeThumbprint, type VirtualDiskInfo, type VmInfo } from './vsphere/client.js';
export { VSphereFault, VSphereErrorCodes } from './vsphere/errors.js';

/** The disk id a VM disk's points are stored under. */
export function vmDiskId(vm: string, key: number): string {
  return `${vm}-disk-${key}`;
}

/** The config of a vddk:// location and its source options ({ sourceConfig?: file, ...settings }; the URL wins). */
export function vmwareConfigFor(location: string, opts: Record<string, unknown> = {}): VmwareSourceConfig {
  const { sourceConfig, log, ...rest } = opts as { sourceConfig?: string; log?: unknown } & Partial<VmwareSourceConfig>;
  if (log !== undefined && typeof log !== 'function')
    throw new RnodeError(ErrorCodes.BAD_SOURCE, 'VMware source option "log" is not a setting; remove it');
  if (sourceConfig !== undefined && (typeof sourceConfig !== 'string' || sourceConfig === '')) {
    throw new RnodeError(ErrorCodes.BAD_SOURCE, 'VMware source option "sourceConfig" must be the path of a config file');
  }
  // Settings beside a config file would be ignored, not merged: refused rather than dropped without a word.
  const beside = Object.keys(rest);
  if (sourceConfig !== undefined && beside.length) {
    throw new RnodeError(
      ErrorCodes.BAD_SOURCE,
      `VMware source options take either sourceConfig or the settings, not both (${beside.map((k) => `"${k}"`).join(', ')} beside sourceConfig); put them in the file`,
    );
  }
  return parseVddkUrl(location, sourceConfig ? loadVmwareConfig(sourceConfig) : rest);
}

/**
 * openSource('vddk://host/vm-42?disk=2000&...', { sourceConfig?: file, ...settings }): one disk of a fresh snapshot.
 * Closing the source closes VDDK, removes the snapshot and logs out.
 */
export async function openVddkSource(location: string, opts: Record<string, unknown> = {}): Promise<BlockSource> {
  const config = vmwareConfigFor(location, opts);
  const { log } = opts as { log?: (l: string) => void };
  if (config.disks && config.disks.length > 1) {
    throw new RnodeError(
      ErrorCodes.BAD_SOURCE,
      'a vddk:// source opened as one disk takes one disk=<key>; replicate all disks of a VM with --source-config',
    );
  }
  const session = await VmwareSession.open(config, { log });
  try {
    if (!(await session.ensureChangeTracking()).enabled)
      session.log(`CBT is off for VM ${config.vm} and enableCbt is false: every run reads all allocated areas`);
    const snap = await session.createSnapshot({ disks: config.disks });
    const first = snap.disks[0];
    if (snap.disks.length > 1) {
      await snap.remove().catch(() => undefined);
      throw new RnodeError(
        ErrorCodes.BAD_SOURCE,
        `VM ${config.vm} has ${snap.disks.length} disks; name one with ?disk=<key> (${snap.disks.map((d) => d.key).join(', ')})`,
      );
    }
    const source = snap.source(first.key);
    // The source's close() also ends what it opened: the snapshot and the session.
    source.afterClose(async () => {
      try {
        await snap.remove();
      } finally {
        await session.close();
      }
    });
    return source;
  } catch (err) {
    await session.close().catch(() => undefined);
    throw err;
  }
}
