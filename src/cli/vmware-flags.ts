// The flags and usage lines of the VMware forms of replicate, points, recover and prune: what the command table
// needs at start, apart from cli/vmware.ts, which loads the vSphere and VDDK code only when a VMware command runs.
import { ENCRYPTION_USAGE, type Options } from './args.js';

type Values = Record<string, string | boolean | undefined>;

/** Flags the replicate command needs on top of its own for VMware sources. */
export const vmwareReplicateOptions: Options = {
  'source-config': { type: 'string' },
  'disk-parallelism': { type: 'string' },
};

/** Flags points, recover and prune take to act on VM points instead of one disk. */
export const vmPointOptions: Options = {
  vm: { type: 'string' },
  'out-dir': { type: 'string' },
};

export const VM_POINTS_USAGE = 'rnode points --store <store> --vm <vm-moref> [--json]';
export const VM_RECOVER_USAGE = `rnode recover --store <store> --vm <vm-moref> [--point <n>|latest] --out-dir <dir> ${ENCRYPTION_USAGE} [--json]`;
export const VM_PRUNE_USAGE = `rnode prune --store <store> --vm <vm-moref> --keep <n> ${ENCRYPTION_USAGE} [--json]`;

export const VMWARE_REPLICATE_USAGE =
  'rnode replicate (--source vddk://<host>/<vm-moref>[?disk=<key>&transports=nbdssl:nbd] | --source-config <vm.json>) --target <store> ' +
  `[--chunk-size <bytes>] [--compression lz4|none] [--concurrency <n>] [--disk-parallelism <n>] [--full] [--bandwidth <bytes/s>] ${ENCRYPTION_USAGE} [--json]`;

/** True when the replicate flags name a VMware source. */
export function isVmwareSource(v: Values): boolean {
  return v['source-config'] !== undefined || (typeof v.source === 'string' && /^vddk:\/\//i.test(v.source));
}
