// The VMware path end to end: an incremental run after ~1% scattered writes through vSphere CBT + VDDK
// (simulator + stand-in VDDK from test/vmware), next to the raw-source scan of the same change.
// Then a 3-disk VM: a full VM point with the disks read one after another against all three at once (wall time),
// and an incremental VM point: bytes VDDK delivered against the bytes CBT reported changed.
// Settings from env: BENCH_VM_DISK_MIB (default 64), BENCH_VM_FILL (fraction written before the first run,
// default 0.5), BENCH_VM_CHANGE (fraction changed, default 0.01), BENCH_VM_CHUNK_KIB (default 64),
// BENCH_VM_READ_LATENCY_US (the stand-in VDDK's delay per Read, a network round trip; default 2000).
// Run: node --import=./node_modules/@tapjs/typescript/dist/esm/import.mjs bench/vmware.ts
// (the simulator and the stand-in VDDK are test code in TypeScript, so the TS loader is needed).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { createCipheriv, createHash } from 'node:crypto';

const env = (k: string, d: number) => (process.env[k] ? Number(process.env[k]) : d);
const MiB = 1024 * 1024;

function packageRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!fs.existsSync(path.join(dir, 'package.json'))) {
    const up = path.dirname(dir);
    if (up === dir) throw new Error('package root not found');
    dir = up;
  }
  return dir;
}

function data(length: number, seed: number): Buffer {
  const key = createHash('sha256').update(`bench-vm-${seed}`).digest().subarray(0, 16);
  const b = createCipheriv('aes-128-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(length));
  // Half incompressible, half text-like, as a guest file system would be.
  if (seed % 2 === 0) for (let i = 0; i < b.length; i++) b[i] = 0x61 + (b[i] % 16);
  return b;
}

export interface VmwareBenchResult {
  diskBytes: number;
  changedBytes: number;
  /** seconds: the replicate() of the disk; runSeconds: the whole run (login, snapshot, CBT queries, removal). */
  vddk: { bytesRead: number; seconds: number; runSeconds: number };
  raw: { bytesRead: number; seconds: number };
  /** The 3-disk VM: full VM point with diskParallelism 1 and 3; an incremental's bytes against CBT's changed bytes. */
  vm: {
    diskBytes: number;
    readLatencyUs: number;
    sequentialSeconds: number;
    parallelSeconds: number;
    incremental: { vddkBytes: number; cbtChangedBytes: number; chunkSize: number };
  };
}

export async function runVmwareBench(): Promise<VmwareBenchResult> {
  const root = packageRoot();
  const load = (p: string) => import(pathToFileURL(path.join(root, p)).href);
  const harness = await load('test/vmware/harness.ts').catch((err: Error) => {
    throw new Error(
      `the VMware bench needs the TypeScript loader for test/vmware (${err.message}); ` +
        'run: node --import=./node_modules/@tapjs/typescript/dist/esm/import.mjs bench/vmware.ts',
    );
  });
  const { replicate } = await load('src/jobs/replicate.ts');
  const { openSource } = await load('src/source/index.ts');
  const { FsStore } = await load('src/store/index.ts');

  const size = env('BENCH_VM_DISK_MIB', 64) * MiB;
  const fill = env('BENCH_VM_FILL', 0.5);
  const change = env('BENCH_VM_CHANGE', 0.01);
  const chunkSize = env('BENCH_VM_CHUNK_KIB', 64) * 1024;
  const cleanups: Array<() => void | Promise<void>> = [];
  const t = { teardown: (fn: () => void | Promise<void>) => cleanups.push(fn) };
  try {
    const e = await harness.startEnv(t, [{ moref: 'vm-100', disks: [{ key: 2000, size }] }]);
    // Data in 1 MiB extents spread over the disk, then ~change of the disk in scattered 4 KiB writes.
    const extents = Math.floor((size * fill) / MiB);
    for (let i = 0; i < extents; i++) e.sim.writeToVmDisk('vm-100', 2000, Math.floor((i * size) / extents / MiB) * MiB, data(MiB, i));
    await e.run({ chunkSize });
    const writes = Math.max(1, Math.floor((size * change) / 4096));
    let seed = 12345;
    const rnd = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    const raw = path.join(e.dir, 'raw-copy.img');
    execFileSync('cp', ['--sparse=always', e.sim.disk('vm-100', 2000).image, raw]);
    const rawStore = new FsStore(path.join(e.dir, 'raw-store'), { fsync: false });
    const rawSrc1 = await openSource(raw);
    await replicate({ store: rawStore, source: rawSrc1, disk: 'raw', chunkSize });
    await rawSrc1.close();
    for (let i = 0; i < writes; i++) {
      const off = Math.floor((rnd() * (size - 4096)) / 4096) * 4096;
      const d = data(4096, 1000 + i);
      e.sim.writeToVmDisk('vm-100', 2000, off, d);
      const fd = fs.openSync(raw, 'r+');
      fs.writeSync(fd, d, 0, d.length, off);
      fs.closeSync(fd);
    }
    const t0 = performance.now();
    const r = await e.run({ chunkSize });
    const vddkSeconds = (performance.now() - t0) / 1000;
    const rawSrc2 = await openSource(raw);
    const t1 = performance.now();
    const rr = await replicate({ store: rawStore, source: rawSrc2, disk: 'raw', chunkSize });
    const rawSeconds = (performance.now() - t1) / 1000;
    await rawSrc2.close();
    return {
      diskBytes: size,
      changedBytes: writes * 4096,
      vddk: { bytesRead: r.disks[0].bytesRead, seconds: r.disks[0].seconds, runSeconds: vddkSeconds },
      raw: { bytesRead: rr.bytesRead, seconds: rawSeconds },
      vm: await threeDiskVm(harness, FsStore, t, { size, fill, change, chunkSize }),
    };
  } finally {
    for (const fn of cleanups.reverse()) await fn();
    const { codecWorkers } = await load('src/pipeline/codec-workers.ts');
    await codecWorkers().close();
  }
}

// What load() returns: the test harness and the store, imported by path when the bench runs.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type LoadedAtRunTime = any;

async function threeDiskVm(
  harness: LoadedAtRunTime,
  FsStore: LoadedAtRunTime,
  t: { teardown: (fn: () => void | Promise<void>) => void },
  o: { size: number; fill: number; change: number; chunkSize: number },
): Promise<VmwareBenchResult['vm']> {
  const keys = [2000, 2001, 2002];
  const latency = env('BENCH_VM_READ_LATENCY_US', 2000);
  const e = await harness.startEnv(t, [{ moref: 'vm-300', disks: keys.map((key) => ({ key, size: o.size })) }]);
  const extents = Math.floor((o.size * o.fill) / MiB);
  for (const k of keys)
    for (let i = 0; i < extents; i++) e.sim.writeToVmDisk('vm-300', k, Math.floor((i * o.size) / extents / MiB) * MiB, data(MiB, k + i));
  e.sim.dummyExtra = [`dummy.readLatencyUs=${latency}`];
  e.sim.writeDummyConfig();
  const timed = async (parallel: number) => {
    const store = new FsStore(path.join(e.dir, `store-p${parallel}`), { fsync: false });
    const t0 = performance.now();
    await e.run({ chunkSize: o.chunkSize, store, diskParallelism: parallel });
    return (performance.now() - t0) / 1000;
  };
  const sequentialSeconds = await timed(1);
  const parallelSeconds = await timed(3);
  // ~change of each disk in scattered 4 KiB writes: CBT reports 4 KiB blocks; the pipeline reads whole chunks.
  let seed = 777;
  const rnd = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  const blocks = new Set<string>();
  for (const k of keys) {
    for (let i = 0; i < Math.max(1, Math.floor((o.size * o.change) / 4096)); i++) {
      const off = Math.floor((rnd() * (o.size - 4096)) / 4096) * 4096;
      e.sim.writeToVmDisk('vm-300', k, off, data(4096, 5000 + i));
      blocks.add(`${k}:${off}`);
    }
  }
  e.clearLog();
  await e.run({ chunkSize: o.chunkSize, store: new FsStore(path.join(e.dir, 'store-p3'), { fsync: false }), diskParallelism: 3 });
  return {
    diskBytes: o.size,
    readLatencyUs: latency,
    sequentialSeconds,
    parallelSeconds,
    incremental: { vddkBytes: e.vddkBytes(), cbtChangedBytes: blocks.size * 4096, chunkSize: o.chunkSize },
  };
}

function mib(n: number): string {
  return `${(n / MiB).toFixed(2)} MiB`;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const r = await runVmwareBench();
  if (process.argv.includes('--json')) {
    console.log('RESULT ' + JSON.stringify(r)); // read by bench/sections/extras.ts
    process.exit(0);
  }
  const rows = [
    ['path', 'bytes read', 'of disk', 'seconds'],
    ['vddk (CBT changed extents)', mib(r.vddk.bytesRead), `${((100 * r.vddk.bytesRead) / r.diskBytes).toFixed(2)}%`, r.vddk.seconds.toFixed(3)],
    ['raw scan (baseline)', mib(r.raw.bytesRead), `${((100 * r.raw.bytesRead) / r.diskBytes).toFixed(2)}%`, r.raw.seconds.toFixed(3)],
  ];
  console.log(`VMware incremental after ${mib(r.changedBytes)} of scattered 4 KiB writes on a ${mib(r.diskBytes)} disk (${os.cpus().length} cores)`);
  for (const row of rows) console.log(`  ${row[0].padEnd(28)} ${row[1].padStart(12)} ${row[2].padStart(8)} ${row[3].padStart(8)}`);
  console.log(`  the whole VMware run (login, snapshot, CBT paging, snapshot removal in the simulator) took ${r.vddk.runSeconds.toFixed(3)} s`);
  console.log(`  the CBT path read ${(r.raw.bytesRead / Math.max(1, r.vddk.bytesRead)).toFixed(1)}x fewer bytes than the raw scan`);
  const v = r.vm;
  console.log(`3-disk VM (${mib(v.diskBytes)} per disk, ${v.readLatencyUs} us per VDDK Read), full VM point:`);
  console.log(
    `  disks one after another ${v.sequentialSeconds.toFixed(3)} s, three at once ${v.parallelSeconds.toFixed(3)} s: ` +
      `${(v.sequentialSeconds / v.parallelSeconds).toFixed(2)}x faster in parallel`,
  );
  console.log(
    `  incremental VM point: VDDK delivered ${mib(v.incremental.vddkBytes)} for ${mib(v.incremental.cbtChangedBytes)} CBT reported changed ` +
      `(${(v.incremental.vddkBytes / v.incremental.cbtChangedBytes).toFixed(1)}x: whole ${v.incremental.chunkSize / 1024} KiB chunks around 4 KiB changes)`,
  );
}
