// Wiring for the VMware tests: one stand-in VDDK per test process (VDDK is process-global, so its libdir
// and config file are fixed at the first InitEx), a vSphere simulator per test, and one-call runs.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FsStore } from '../../src/store/index.js';
import { recover } from '../../src/jobs/restore.js';
import { VmwareSession, vmDiskId, type VmwareSourceConfig } from '../../src/source/vmware/index.js';
import { replicateVm, type ReplicateVmOptions, type ReplicateVmResult } from '../../src/jobs/replicate-vm.js';
import { buildDummyVddk, readDummyLog, bytesReadInLog, type DummyCall } from './build-dummy.js';
import { VSphereSim, type SimDiskSpec, type SimOptions } from './vsphere-sim.js';

export const KiB = 1024;
export const MiB = 1024 * 1024;
export const USER = 'backup@vsphere.local';
export const PASSWORD = 'S3cret-p&ss<word>';

// Every VMware test runs the stand-in VDDK in strict mode: a call off the designated thread fails the test.
process.env.RNODE_DUMMY_VDDK_STRICT ??= '1';

let shared: { dir: string; libdir: string; dummyConfig: string; dummyLog: string } | undefined;
function sharedVddk() {
  if (!shared) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rnode-vddk-'));
    const libdir = path.join(dir, 'vmware-vix-disklib-distrib');
    buildDummyVddk(libdir);
    shared = { dir, libdir, dummyConfig: path.join(dir, 'vixDiskLib.conf'), dummyLog: path.join(dir, 'vddk-calls.log') };
    process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  }
  return shared;
}

interface Teardown {
  teardown(fn: () => void | Promise<void>): void;
}

export interface VmwareEnv {
  dir: string;
  sim: VSphereSim;
  store: FsStore;
  config: VmwareSourceConfig;
  dummyLog: string;
  /** Dummy VDDK calls since the last clearLog(). */
  calls(): DummyCall[];
  clearLog(): void;
  /** Bytes the dummy VDDK delivered since the last clearLog(). */
  vddkBytes(): number;
  /** One VM run into the env's store (or opts.store). */
  run(opts?: Partial<Omit<ReplicateVmOptions, 'session'>> & { config?: Partial<VmwareSourceConfig>; log?: string[] }): Promise<ReplicateVmResult>;
}

export async function startEnv(
  t: Teardown,
  vms: Array<{ moref: string; disks: SimDiskSpec[]; cbt?: boolean }>,
  simOpts: Partial<Pick<SimOptions, 'maxExtentsPerAnswer' | 'cbtBlock'>> = {},
): Promise<VmwareEnv> {
  const vddk = sharedVddk();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rnode-vmware-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const sim = await VSphereSim.start({ dir, user: USER, password: PASSWORD, dummyConfig: vddk.dummyConfig, dummyLog: vddk.dummyLog, ...simOpts });
  t.teardown(() => sim.stop());
  for (const vm of vms) sim.addVm(vm.moref, vm.disks, { cbt: vm.cbt });
  sim.writeDummyConfig();
  const passwordFile = path.join(dir, 'password');
  fs.writeFileSync(passwordFile, `${PASSWORD}\n`, { mode: 0o600 });
  const config: VmwareSourceConfig = {
    host: '127.0.0.1',
    port: sim.port,
    user: USER,
    passwordFile,
    thumbprint: sim.thumbprint,
    vm: vms[0].moref,
    transports: ['nbdssl', 'nbd'],
    libdir: vddk.libdir,
    vddkConfig: vddk.dummyConfig,
  };
  const store = new FsStore(path.join(dir, 'store'), { fsync: false });
  fs.rmSync(vddk.dummyLog, { force: true });
  const env: VmwareEnv = {
    dir,
    sim,
    store,
    config,
    dummyLog: vddk.dummyLog,
    calls: () => readDummyLog(vddk.dummyLog),
    clearLog: () => fs.rmSync(vddk.dummyLog, { force: true }),
    vddkBytes: () => bytesReadInLog(readDummyLog(vddk.dummyLog)),
    async run(opts = {}) {
      const { config: override, log, ...rest } = opts;
      const session = await VmwareSession.open({ ...config, ...override }, { log: (l) => log?.push(l) });
      try {
        return await replicateVm({ store, chunkSize: 64 * KiB, ...rest, session });
      } finally {
        await session.close();
      }
    },
  };
  return env;
}

/** Restores every committed point of every disk in `runs` and compares it with the sim's image at snapshot time. */
export async function expectRestores(
  t: { equal: (a: unknown, b: unknown, m?: string) => unknown },
  env: VmwareEnv,
  runs: ReplicateVmResult[],
): Promise<void> {
  for (const run of runs) {
    const record = env.sim.history.find((h) => h.snapshot === run.snapshot);
    if (!record) throw new Error(`no sim record of ${run.snapshot}`);
    for (const d of run.disks) {
      const out = path.join(env.dir, `restore-${d.disk}-${d.point}.img`);
      await recover({ store: env.store, disk: vmDiskId(run.vm, d.deviceKey), point: String(d.point), out });
      const want = record.disks.get(d.deviceKey)!;
      const got = {
        size: fs.statSync(out).size,
        sha256: (await import('node:crypto')).createHash('sha256').update(fs.readFileSync(out)).digest('hex'),
      };
      t.equal(
        `${got.size}:${got.sha256}`,
        `${want.size}:${want.sha256}`,
        `point ${d.point} of ${d.disk} restores byte-exact to the disk at ${run.snapshot}`,
      );
      fs.rmSync(out);
    }
  }
}

/** PrepareForAccess and EndAccess calls in a call log, and whether every calling thread of the designated calls was one. */
export function accessAndThreads(calls: DummyCall[]): { prepare: number; end: number; violations: number; designatedThreads: string[] } {
  const designated = new Set(['InitEx', 'Exit', 'ConnectEx', 'Disconnect', 'Open', 'Close', 'PrepareForAccess', 'EndAccess', 'Cleanup']);
  return {
    prepare: calls.filter((c) => c.op === 'PrepareForAccess' && !c.raw.includes('->')).length,
    end: calls.filter((c) => c.op === 'EndAccess' && !c.raw.includes('->')).length,
    violations: calls.filter((c) => c.raw.includes('strict-violation')).length,
    designatedThreads: [...new Set(calls.filter((c) => designated.has(c.op) && c.fields.thread).map((c) => c.fields.thread))],
  };
}

/** sha256 of a file, with its size: what the sim records for each snapshot disk. */
export function fingerprintOf(file: string): string {
  return `${fs.statSync(file).size}:${createHash('sha256').update(fs.readFileSync(file)).digest('hex')}`;
}

/** The fingerprint of every disk of a snapshot as the sim froze it. */
export function snapshotFingerprints(env: VmwareEnv, snapshot: string): Map<number, string> {
  const rec = env.sim.history.find((h) => h.snapshot === snapshot);
  if (!rec) throw new Error(`no sim record of ${snapshot}`);
  return new Map([...rec.disks].map(([k, v]) => [k, `${v.size}:${v.sha256}`]));
}
