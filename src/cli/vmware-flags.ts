// The flags and usage lines of the VMware forms of replicate, points, recover and prune: what the command table
// needs at start, apart from cli/vmware.ts, which loads the vSphere and VDDK code only when a VMware command runs.
import { ErrorCodes, RnodeError } from '../errors.js';
import { ENCRYPTION_USAGE, type Options } from './args.js';

type Values = Record<string, string | boolean | undefined>;

/** Flags the replicate command needs on top of its own for VMware sources. */
export const vmwareReplicateOptions: Options = {
  'source-config': { type: 'string' },
  'disk-parallelism': { type: 'string' },
};

/** The flag points, recover and prune take to act on VM points instead of one disk (recover adds --out-dir). */
export const vmPointOptions: Options = {
  vm: { type: 'string' },
};

/**
 * Refuses flags of the other form of points, recover or prune: given with --vm, a --disk (or --out) was silently
 * ignored, and an --out-dir without --vm too; the user believed the one they named was acted on.
 */
export function checkVmForm(command: string, v: Values, diskFlags: readonly string[]): void {
  const usage = (msg: string) => new RnodeError(ErrorCodes.USAGE, `${msg}; see "rnode ${command} --help"`);
  if (v.vm !== undefined) {
    const extra = diskFlags.find((f) => v[f] !== undefined);
    if (extra) throw usage(`--${extra} is for one disk and does not go with --vm (which acts on every disk of the VM)`);
  } else if (v['out-dir'] !== undefined) {
    throw usage('--out-dir goes with --vm (one image per disk of the VM); for one disk, give --out');
  }
}

export const VM_POINTS_USAGE = `rnode points --store <store> --vm <vm-moref> ${ENCRYPTION_USAGE} [--json]`;
export const VM_RECOVER_USAGE = `rnode recover --store <store> --vm <vm-moref> [--point <n>|latest] --out-dir <dir> ${ENCRYPTION_USAGE} [--json]`;
export const VM_PRUNE_USAGE = `rnode prune --store <store> --vm <vm-moref> --keep <n> [--grace <duration>] ${ENCRYPTION_USAGE} [--json]`;

export const VMWARE_REPLICATE_USAGE =
  'rnode replicate (--source vddk://<host>/<vm-moref>[?disk=<key>&transports=nbdssl:nbd] | --source-config <vm.json>) --target <store> ' +
  `[--chunk-size <bytes>] [--compression lz4|none] [--concurrency <n>] [--disk-parallelism <n>] [--full] [--bandwidth <bytes/s>] ${ENCRYPTION_USAGE} [--json]`;

/** True when the replicate flags name a VMware source. */
export function isVmwareSource(v: Values): boolean {
  return v['source-config'] !== undefined || (typeof v.source === 'string' && /^vddk:\/\//i.test(v.source));
}
