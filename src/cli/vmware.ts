// `rnode replicate` for VMware VMs: --source vddk://<host>/<vm-moref>[?disk=..] and/or --source-config <file.json>.
// Thin like the other commands: parse, validate, open the session, call replicateVm, print.
import { ErrorCodes, RnodeError } from '../errors.js';
import { codecByName } from '../format/codecs.js';
import { validateChunkSize } from '../pipeline/grid.js';
import { exitVddk } from '../vddk/index.js';
import { loadVmwareConfig, parseVddkUrl, replicateVm, VmwareSession, type ReplicateVmResult, type VmwareSourceConfig } from '../source/vddk/index.js';
import { parseBandwidth } from '../transport/index.js';
import { encryptionKeyFrom, ENCRYPTION_USAGE, type Options } from './args.js';
import { bytes, rate, secs } from './format.js';
import { openStoreFromFlags } from './store-flags.js';

interface Io { out: (line: string) => void; err: (line: string) => void }
type Values = Record<string, string | boolean | undefined>;

/** Flags the replicate command needs on top of its own for VMware sources. */
export const vmwareReplicateOptions: Options = {
  'source-config': { type: 'string' },
};

export const VMWARE_REPLICATE_USAGE =
  'rnode replicate (--source vddk://<host>/<vm-moref>[?disk=<key>&transports=nbdssl:nbd] | --source-config <vm.json>) --target <store> ' +
  `[--chunk-size <bytes>] [--compression lz4|none] [--concurrency <n>] [--full] [--bandwidth <bytes/s>] ${ENCRYPTION_USAGE} [--json]`;

/** True when the replicate flags name a VMware source. */
export function isVmwareSource(v: Values): boolean {
  return v['source-config'] !== undefined || (typeof v.source === 'string' && /^vddk:\/\//i.test(v.source));
}

function positive(text: string, flag: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(n) || n < 1) throw new RnodeError(ErrorCodes.USAGE, `--${flag} must be a positive integer, got "${text}"`);
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
  if (typeof v.target !== 'string' || v.target === '') throw new RnodeError(ErrorCodes.USAGE, '"rnode replicate" needs --target; see "rnode replicate --help"');
  if (v.disk !== undefined) {
    throw new RnodeError(ErrorCodes.USAGE, 'VMware disks are stored as "<vm-moref>-disk-<device key>"; choose disks with ?disk=<key> or "disks" in the source config, not --disk');
  }
  const config = vmwareConfigFrom(v);
  const chunkSize = typeof v['chunk-size'] === 'string' ? validateChunkSize(v['chunk-size']) : undefined;
  const codec = typeof v.compression === 'string' ? codecByName(v.compression) : undefined;
  const concurrency = typeof v.concurrency === 'string' ? positive(v.concurrency, 'concurrency') : undefined;
  const encryption = encryptionKeyFrom(v);
  const json = v.json === true;
  const log = (line: string) => { if (!json) io.err(`rnode: ${line}`); };

  const bandwidth = typeof v.bandwidth === 'string' ? parseBandwidth(v.bandwidth) : undefined;
  const store = await openStoreFromFlags(v.target, v, { bandwidth });
  let r: ReplicateVmResult;
  try {
    const session = await VmwareSession.open(config, { log });
    try {
      r = await replicateVm({ session, store, chunkSize, codec, concurrency, encryption, forceFull: v.full === true });
    } finally {
      await session.close().catch((err) => log(`logging out of vSphere failed: ${(err as Error).message}`));
    }
  } finally {
    await store.close();
    await exitVddk().catch(() => undefined);
  }
  if (json) {
    io.out(JSON.stringify(r));
    return 0;
  }
  io.out(`VM ${r.vm} (${r.vmName}): ${r.disks.length} disk${r.disks.length === 1 ? '' : 's'} from snapshot ${r.snapshot} (removed) in ${secs(r.seconds)}` +
    (r.cbtEnabledNow ? '; CBT was turned on by this run' : ''));
  for (const d of r.disks) {
    io.out(`  point ${d.point} of disk ${d.disk}: ${d.full ? 'full' : `incremental on point ${d.parent}`}` +
      (d.fullReason ? ` (${d.fullReason})` : '') + (d.rescanReason ? ` (read all allocated areas: ${d.rescanReason})` : '') +
      ` via ${d.transportMode || 'VDDK'}`);
    io.out(`    read     ${bytes(d.bytesRead)} of a ${bytes(d.diskSize)} disk in ${secs(d.seconds)} (${rate(d.diskSize, d.seconds)} of disk)`);
    io.out(`    chunks   ${d.chunksChanged} changed, ${d.chunksZero} zero, ${d.chunksTotal} in all (${bytes(d.chunkSize)} each); stored ${bytes(d.bytesWritten)}`);
  }
  return 0;
}
