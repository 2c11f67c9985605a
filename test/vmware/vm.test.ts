// VM-consistent replication against the vSphere simulator and the strict stand-in VDDK: one snapshot and one VM
// point per run with the disks read in parallel, a byte-exact restore of a VM point while the guest keeps writing,
// one disk failing (no VM point), and PrepareForAccess/EndAccess paired on every path (success, read error, open
// error, cancel, SIGKILL then the next run). vm-changes.test.ts has quiesce, the VM changing, retention and the CLI.
import t from 'tap';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { listPartialVmRuns, listVmPointSeqs, loadVmPoint } from '../../src/repository/vm-points.js';
import { KiB, MiB, accessAndThreads, fingerprintOf, snapshotFingerprints, startEnv } from './harness.js';
import { THREE, expectVmRestore, fill, randomData } from './vm-helpers.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

t.test('a 3-disk VM: one snapshot, disks read in parallel, one VM point; the guest writes during the read; strict VDDK threading', async (t) => {
  const env = await startEnv(t, [{ moref: 'vm-42', disks: THREE }]);
  const { sim } = env;
  fill(env, 'vm-42', 1);
  sim.dummyExtra = ['dummy.readLatencyUs=20000'];
  sim.writeDummyConfig();
  env.clearLog();
  let guestWrites = 0;
  const r1 = await env.run({
    diskParallelism: 3,
    // The guest keeps writing to every disk while rnode reads the snapshot.
    onSnapshot: () => {
      for (const [i, d] of THREE.entries()) {
        sim.writeToVmDisk('vm-42', d.key, 0, randomData(256 * KiB, 100 + i));
        guestWrites++;
      }
    },
  });
  t.equal(guestWrites, 3);
  t.equal(sim.calls.filter((m) => m === 'CreateSnapshot_Task').length, 1, 'one CreateSnapshot_Task for three disks');
  t.equal(r1.vmPoint, 1);
  t.equal(r1.diskParallelism, 3);
  t.same(
    r1.disks.map((d) => d.disk),
    ['vm-42-disk-2000', 'vm-42-disk-2001', 'vm-42-disk-2002'],
  );
  t.equal(r1.consistency, 'crash', 'no quiesce asked: crash-consistent');
  const p1 = await loadVmPoint(env.store, 'vm-42', 1);
  t.equal(p1.snapshot.moref, r1.snapshot, 'the VM point names the snapshot');
  t.same(
    p1.disks.map((d) => [d.key, d.point, d.transport]),
    [
      [2000, 1, 'nbdssl'],
      [2001, 1, 'nbdssl'],
      [2002, 1, 'nbdssl'],
    ],
    'its disks, their points and the transport used',
  );
  t.match(
    p1.config,
    { _type: 'VirtualMachineConfigInfo', name: 'test-vm-42', hardware: { numCPU: '2', memoryMB: '4096' } },
    'the VM config as vSphere returned it',
  );
  t.equal((p1.config as any).hardware.device.filter((d: any) => d._type === 'VirtualDisk').length, 3);

  const calls = env.calls();
  const reads = calls.filter((c) => c.op === 'Read');
  const spans = new Map<string, [number, number]>();
  reads.forEach((c, i) => spans.set(c.fields.path, [spans.get(c.fields.path)?.[0] ?? i, i]));
  const overlapping = Math.max(...reads.map((_, i) => [...spans.values()].filter(([a, b]) => a <= i && i <= b).length));
  t.ok(overlapping >= 2, `the disks were read at the same time (up to ${overlapping} disks between their first and last read)`);
  const a = accessAndThreads(calls);
  t.same([a.prepare, a.end, a.violations], [1, 1, 0], 'one PrepareForAccess, one EndAccess, no call off the designated thread');
  t.equal(a.designatedThreads.length, 1, `InitEx, ConnectEx, Open, Close, Disconnect ran on one thread (${a.designatedThreads.join(', ')})`);
  t.ok(
    calls.some((c) => c.op === 'Cleanup'),
    'VixDiskLib_Cleanup ran before the run',
  );
  await expectVmRestore(t, env, 'vm-42', 1);
  t.not(fingerprintOf(sim.disk('vm-42', 2000).image), snapshotFingerprints(env, r1.snapshot).get(2000), 'the live disk moved on since the snapshot');

  // An incremental VM point: again one snapshot, only the changes read.
  sim.writeToVmDisk('vm-42', 2001, 3 * MiB, randomData(4096, 7));
  const r2 = await env.run();
  t.equal(sim.calls.filter((m) => m === 'CreateSnapshot_Task').length, 2, 'one more snapshot for the second run');
  t.same(
    r2.disks.map((d) => [d.full, d.bytesRead]),
    [
      [false, 256 * KiB],
      [false, 256 * KiB + 64 * KiB],
      [false, 256 * KiB],
    ],
    'the guest writes and the new change, nothing else',
  );
  t.equal(r2.vmPoint, 2);
  await expectVmRestore(t, env, 'vm-42', 2);
  sim.dummyExtra = [];
  sim.writeDummyConfig();
});

t.test('one disk fails: no VM point, the disks that committed are recorded as partial, the next run repairs it', async (t) => {
  const env = await startEnv(t, [{ moref: 'vm-43', disks: THREE }]);
  const { sim } = env;
  fill(env, 'vm-43', 11);
  await env.run();
  sim.writeToVmDisk('vm-43', 2000, 0, randomData(4096, 12));
  sim.writeToVmDisk('vm-43', 2001, 0, randomData(4096, 13));
  sim.dummyExtra = ['dummy.failReadPath=vm-43_1:13'];
  sim.writeDummyConfig();
  env.clearLog();
  const err = await env.run({ diskParallelism: 3 }).then(
    () => undefined,
    (e: Error & { code: string; details: any }) => e,
  );
  t.equal(err?.code, 'RNODE_VDDK_ERROR', "the run fails with the disk's error");
  t.match(err?.message, /reading disk 2001 of VM vm-43/);
  t.same(await listVmPointSeqs(env.store, 'vm-43'), [1], 'no VM point for the failed run');
  const partial = await listPartialVmRuns(env.store, 'vm-43');
  t.equal(partial.length, 1, 'the run is recorded as partial');
  t.same(
    partial[0].committed.map((c) => [c.key, c.point]).sort(),
    [
      [2000, 2],
      [2002, 2],
    ],
    'the disks that committed, in no VM point',
  );
  t.same(
    partial[0].failed.map((f) => f.key),
    [2001],
  );
  const a = accessAndThreads(env.calls());
  t.same([a.prepare, a.end, a.violations], [1, 1, 0], 'PrepareForAccess and EndAccess paired on a read error');
  t.equal(sim.vms.get('vm-43')!.snapshots.length, 0, 'the snapshot was removed');

  sim.dummyExtra = [];
  sim.writeDummyConfig();
  const r = await env.run();
  t.equal(r.vmPoint, 2, 'the next run makes a whole VM point');
  t.same(
    r.disks.map((d) => d.point),
    [3, 2, 3],
    "from each disk's latest point",
  );
  await expectVmRestore(t, env, 'vm-43', 2);
});

t.test('PrepareForAccess/EndAccess paired: open error and cancel', async (t) => {
  const env = await startEnv(t, [{ moref: 'vm-44', disks: THREE }]);
  const { sim } = env;
  fill(env, 'vm-44', 21);
  sim.dummyExtra = ['dummy.failOpenPath=vm-44_2:4'];
  sim.writeDummyConfig();
  env.clearLog();
  const e1 = await env.run().then(
    () => undefined,
    (e: Error & { code: string }) => e,
  );
  t.equal(e1?.code, 'RNODE_VDDK_FILE_NOT_FOUND', 'an open error fails the run');
  let a = accessAndThreads(env.calls());
  t.same([a.prepare, a.end, a.violations], [1, 1, 0], 'paired on an open error');
  t.equal(env.calls().filter((c) => c.op === 'Close').length, 2, 'the two disks that opened were closed');
  t.equal(sim.vms.get('vm-44')!.snapshots.length, 0);

  sim.dummyExtra = ['dummy.readLatencyUs=50000'];
  sim.writeDummyConfig();
  env.clearLog();
  const ac = new AbortController();
  const { cancelled } = await import('../../src/agent/throttle.js');
  const running = env.run({
    signal: ac.signal,
    onSnapshot: () => {
      setTimeout(() => ac.abort(cancelled()), 150);
    },
  });
  const e2 = await running.then(
    () => undefined,
    (e: Error & { code: string }) => e,
  );
  t.equal(e2?.code, 'RNODE_CANCELLED', 'cancelled');
  a = accessAndThreads(env.calls());
  t.same([a.prepare, a.end, a.violations], [1, 1, 0], 'paired on cancel');
  t.equal(sim.vms.get('vm-44')!.snapshots.length, 0, 'the snapshot was removed');
  t.same(await listVmPointSeqs(env.store, 'vm-44'), [], 'no VM point');
  sim.dummyExtra = [];
  sim.writeDummyConfig();
});

t.test('SIGKILL mid-read, then the next run: EndAccess for the dead run, its snapshot removed and reported, Cleanup', async (t) => {
  const env = await startEnv(t, [{ moref: 'vm-45', disks: THREE }]);
  const { sim } = env;
  fill(env, 'vm-45', 31);
  sim.dummyExtra = ['dummy.readLatencyUs=300000'];
  sim.writeDummyConfig();
  env.clearLog();
  const cfg = path.join(env.dir, 'vm-45.json');
  fs.writeFileSync(cfg, JSON.stringify({ ...env.config, vm: 'vm-45' }));
  const child = spawn(
    process.execPath,
    [
      '--import',
      path.join(ROOT, 'node_modules/@tapjs/typescript/dist/esm/import.mjs'),
      path.join(ROOT, 'src/cli.ts'),
      'replicate',
      '--source-config',
      cfg,
      '--target',
      path.join(env.dir, 'store'),
      '--chunk-size',
      '64KiB',
    ],
    { cwd: ROOT, stdio: 'ignore', env: { ...process.env, RNODE_DUMMY_VDDK_STRICT: '1' } },
  );
  const exited = new Promise((r) => child.on('exit', r));
  const deadline = Date.now() + 60_000;
  while (!env.calls().some((c) => c.op === 'Read') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  t.ok(
    env.calls().some((c) => c.op === 'Read'),
    'the child is reading',
  );
  child.kill('SIGKILL');
  await exited;
  t.equal(sim.vms.get('vm-45')!.snapshots.length, 1, 'the killed run left its snapshot');
  const left = sim.vms.get('vm-45')!.snapshots[0].moref;
  let a = accessAndThreads(env.calls());
  t.same([a.prepare, a.end], [1, 0], 'and a PrepareForAccess without EndAccess');

  sim.dummyExtra = [];
  sim.writeDummyConfig();
  const log: string[] = [];
  const r = await env.run({ log });
  t.same(r.staleSnapshotsRemoved, [left], 'the next run removed the leftover snapshot');
  t.ok(
    r.warnings.some((w) => /ended without EndAccess/.test(w)),
    'and reported the missing EndAccess',
  );
  t.ok(
    r.warnings.some((w) => w.includes(left)),
    'and the snapshot',
  );
  t.ok(
    log.some((l) => l.includes(left)),
    'in the run log too',
  );
  a = accessAndThreads(env.calls());
  t.same([a.prepare, a.end, a.violations], [2, 2, 0], 'every PrepareForAccess has its EndAccess again');
  t.ok(
    env.calls().some((c) => c.op === 'Cleanup'),
    'VixDiskLib_Cleanup ran',
  );
  t.equal(sim.vms.get('vm-45')!.snapshots.length, 0);
  t.equal(r.vmPoint, 1);
  await expectVmRestore(t, env, 'vm-45', 1);
});
