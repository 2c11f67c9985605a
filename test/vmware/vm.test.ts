// VM-consistent replication against the vSphere simulator and the strict stand-in VDDK: one snapshot and one VM
// point per run with the disks read in parallel, byte-exact restores of a VM point while the guest keeps writing,
// PrepareForAccess/EndAccess paired on every path (success, read error, open error, cancel, SIGKILL then the next
// run), quiesce with fallback and fail, disks added, removed, resized, independent and RDM, user snapshots,
// retention by whole VM points, and the CLI's points/recover/prune --vm.
import t from 'tap';
import { spawn } from 'node:child_process';
import { createCipheriv, createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { commands } from '../../src/cli/commands.js';
import { pruneVm, recoverVm } from '../../src/jobs/vm.js';
import { listPointSeqs } from '../../src/recovery/points.js';
import { listPartialVmRuns, listVmPointSeqs, loadVmPoint } from '../../src/recovery/vm-points.js';
import { KiB, MiB, accessAndThreads, fingerprintOf, snapshotFingerprints, startEnv, type VmwareEnv } from './harness.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

function randomData(length: number, seed: number): Buffer {
  const key = createHash('sha256').update(`rnode-vm-${seed}`).digest().subarray(0, 16);
  return createCipheriv('aes-128-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(length));
}

const THREE = [{ key: 2000, size: 8 * MiB }, { key: 2001, size: 4 * MiB }, { key: 2002, size: 6 * MiB + 512 }];

function fill(env: VmwareEnv, vm: string, seed: number): void {
  const has = (k: number) => env.sim.vms.get(vm)!.disks.some((d) => d.key === k);
  env.sim.writeToVmDisk(vm, 2000, 0, randomData(2 * MiB, seed));
  env.sim.writeToVmDisk(vm, 2001, 1 * MiB, randomData(1 * MiB, seed + 1));
  if (has(2002)) env.sim.writeToVmDisk(vm, 2002, 6 * MiB - 64 * KiB, randomData(64 * KiB + 512, seed + 2));
}

/** Restores a VM point with recoverVm and compares every disk with the snapshot the sim froze. */
async function expectVmRestore(t: { equal: (a: unknown, b: unknown, m?: string) => unknown }, env: VmwareEnv, vm: string, seq: number): Promise<void> {
  const p = await loadVmPoint(env.store, vm, seq);
  const out = path.join(env.dir, `restore-${vm}-${seq}`);
  const r = await recoverVm({ store: env.store, vm, point: String(seq), outDir: out });
  const want = snapshotFingerprints(env, p.snapshot.moref);
  for (const d of r.disks) t.equal(fingerprintOf(d.out), want.get(d.key), `VM point ${seq}: disk ${d.key} restores byte-exact as snapshot ${p.snapshot.moref} saw it`);
  t.equal(JSON.parse(fs.readFileSync(r.configFile, 'utf8')).seq, seq, 'the VM point is written beside the disks');
  fs.rmSync(out, { recursive: true });
}

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
      for (const [i, d] of THREE.entries()) { sim.writeToVmDisk('vm-42', d.key, 0, randomData(256 * KiB, 100 + i)); guestWrites++; }
    },
  });
  t.equal(guestWrites, 3);
  t.equal(sim.calls.filter((m) => m === 'CreateSnapshot_Task').length, 1, 'one CreateSnapshot_Task for three disks');
  t.equal(r1.vmPoint, 1);
  t.equal(r1.diskParallelism, 3);
  t.same(r1.disks.map((d) => d.disk), ['vm-42-disk-2000', 'vm-42-disk-2001', 'vm-42-disk-2002']);
  t.equal(r1.consistency, 'crash', 'no quiesce asked: crash-consistent');
  const p1 = await loadVmPoint(env.store, 'vm-42', 1);
  t.equal(p1.snapshot.moref, r1.snapshot, 'the VM point names the snapshot');
  t.same(p1.disks.map((d) => [d.key, d.point, d.transport]), [[2000, 1, 'nbdssl'], [2001, 1, 'nbdssl'], [2002, 1, 'nbdssl']], 'its disks, their points and the transport used');
  t.match(p1.config, { _type: 'VirtualMachineConfigInfo', name: 'test-vm-42', hardware: { numCPU: '2', memoryMB: '4096' } }, 'the VM config as vSphere returned it');
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
  t.ok(calls.some((c) => c.op === 'Cleanup'), 'VixDiskLib_Cleanup ran before the run');
  await expectVmRestore(t, env, 'vm-42', 1);
  t.not(fingerprintOf(sim.disk('vm-42', 2000).image), snapshotFingerprints(env, r1.snapshot).get(2000), 'the live disk moved on since the snapshot');

  // An incremental VM point: again one snapshot, only the changes read.
  sim.writeToVmDisk('vm-42', 2001, 3 * MiB, randomData(4096, 7));
  const r2 = await env.run();
  t.equal(sim.calls.filter((m) => m === 'CreateSnapshot_Task').length, 2, 'one more snapshot for the second run');
  t.same(r2.disks.map((d) => [d.full, d.bytesRead]), [[false, 256 * KiB], [false, 256 * KiB + 64 * KiB], [false, 256 * KiB]], 'the guest writes and the new change, nothing else');
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
  const err = await env.run({ diskParallelism: 3 }).then(() => undefined, (e: Error & { code: string; details: any }) => e);
  t.equal(err?.code, 'RNODE_VDDK_ERROR', 'the run fails with the disk\'s error');
  t.match(err?.message, /reading disk 2001 of VM vm-43/);
  t.same(await listVmPointSeqs(env.store, 'vm-43'), [1], 'no VM point for the failed run');
  const partial = await listPartialVmRuns(env.store, 'vm-43');
  t.equal(partial.length, 1, 'the run is recorded as partial');
  t.same(partial[0].committed.map((c) => [c.key, c.point]).sort(), [[2000, 2], [2002, 2]], 'the disks that committed, in no VM point');
  t.same(partial[0].failed.map((f) => f.key), [2001]);
  const a = accessAndThreads(env.calls());
  t.same([a.prepare, a.end, a.violations], [1, 1, 0], 'PrepareForAccess and EndAccess paired on a read error');
  t.equal(sim.vms.get('vm-43')!.snapshots.length, 0, 'the snapshot was removed');

  sim.dummyExtra = [];
  sim.writeDummyConfig();
  const r = await env.run();
  t.equal(r.vmPoint, 2, 'the next run makes a whole VM point');
  t.same(r.disks.map((d) => d.point), [3, 2, 3], 'from each disk\'s latest point');
  await expectVmRestore(t, env, 'vm-43', 2);
});

t.test('PrepareForAccess/EndAccess paired: open error and cancel', async (t) => {
  const env = await startEnv(t, [{ moref: 'vm-44', disks: THREE }]);
  const { sim } = env;
  fill(env, 'vm-44', 21);
  sim.dummyExtra = ['dummy.failOpenPath=vm-44_2:4'];
  sim.writeDummyConfig();
  env.clearLog();
  const e1 = await env.run().then(() => undefined, (e: Error & { code: string }) => e);
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
  const running = env.run({ signal: ac.signal, onSnapshot: () => { setTimeout(() => ac.abort(cancelled()), 150); } });
  const e2 = await running.then(() => undefined, (e: Error & { code: string }) => e);
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
  const child = spawn(process.execPath, ['--import', path.join(ROOT, 'node_modules/@tapjs/typescript/dist/esm/import.mjs'), path.join(ROOT, 'src/cli.ts'),
    'replicate', '--source-config', cfg, '--target', path.join(env.dir, 'store'), '--chunk-size', '64KiB'],
  { cwd: ROOT, stdio: 'ignore', env: { ...process.env, RNODE_DUMMY_VDDK_STRICT: '1' } });
  const exited = new Promise((r) => child.on('exit', r));
  const deadline = Date.now() + 60_000;
  while (!env.calls().some((c) => c.op === 'Read') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  t.ok(env.calls().some((c) => c.op === 'Read'), 'the child is reading');
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
  t.ok(r.warnings.some((w) => /ended without EndAccess/.test(w)), 'and reported the missing EndAccess');
  t.ok(r.warnings.some((w) => w.includes(left)), 'and the snapshot');
  t.ok(log.some((l) => l.includes(left)), 'in the run log too');
  a = accessAndThreads(env.calls());
  t.same([a.prepare, a.end, a.violations], [2, 2, 0], 'every PrepareForAccess has its EndAccess again');
  t.ok(env.calls().some((c) => c.op === 'Cleanup'), 'VixDiskLib_Cleanup ran');
  t.equal(sim.vms.get('vm-45')!.snapshots.length, 0);
  t.equal(r.vmPoint, 1);
  await expectVmRestore(t, env, 'vm-45', 1);
});

t.test('quiesce: application-consistent with tools; without tools or when quiescing fails, fallback or fail', async (t) => {
  const env = await startEnv(t, [{ moref: 'vm-46', disks: THREE.slice(0, 2) }]);
  const { sim } = env;
  fill(env, 'vm-46', 41);
  const r1 = await env.run({ quiesce: true });
  t.equal(r1.consistency, 'application', 'VMware Tools quiesced the guest');
  t.equal(sim.history.at(-1)!.snapshot, r1.snapshot);
  t.equal((await loadVmPoint(env.store, 'vm-46', r1.vmPoint)).consistency, 'application', 'recorded in the VM point');

  sim.setTools('vm-46', 'absent');
  const log: string[] = [];
  const r2 = await env.run({ quiesce: true, log });
  t.equal(r2.consistency, 'crash', 'no tools: crash-consistent by default (fallback)');
  t.match(r2.consistencyReason, /VMware Tools are not running/);
  t.ok(r2.warnings.some((w) => /crash-consistent/.test(w)), 'with a warning');
  t.match((await loadVmPoint(env.store, 'vm-46', r2.vmPoint)), { consistency: 'crash', consistencyReason: /not running/ });

  sim.setTools('vm-46', 'quiesceFails');
  const before = sim.calls.filter((m) => m === 'CreateSnapshot_Task').length;
  const r3 = await env.run({ quiesce: true, quiesceFallback: 'fallback' });
  t.equal(r3.consistency, 'crash');
  t.match(r3.consistencyReason, /FilesystemQuiesceFault/);
  t.equal(sim.calls.filter((m) => m === 'CreateSnapshot_Task').length - before, 2, 'the quiesced attempt, then the crash-consistent snapshot');

  const e = await env.run({ quiesce: true, quiesceFallback: 'fail' }).then(() => undefined, (x: Error & { code: string }) => x);
  t.equal(e?.code, 'RNODE_VM_QUIESCE', 'policy fail: the run fails');
  t.match(e?.message, /quiescing VM vm-46 failed \(FilesystemQuiesceFault/);
  sim.setTools('vm-46', 'absent');
  env.clearLog();
  const e2 = await env.run({ config: { quiesce: true, quiesceFallback: 'fail' } }).then(() => undefined, (x: Error & { code: string }) => x);
  t.equal(e2?.code, 'RNODE_VM_QUIESCE', 'from the VM config too');
  t.equal(sim.vms.get('vm-46')!.snapshots.length, 0, 'no snapshot left');
  t.same(accessAndThreads(env.calls()).prepare, 0, 'nothing was prepared');
  t.same(await listVmPointSeqs(env.store, 'vm-46'), [1, 2, 3]);
});

t.test('the VM changes between runs: disk added, removed, resized; independent and RDM disks; user snapshots', async (t) => {
  const env = await startEnv(t, [{ moref: 'vm-47', disks: [...THREE.slice(0, 2), { key: 2003, size: 2 * MiB, mode: 'independent_persistent' }, { key: 2004, size: 2 * MiB, rdm: 'physicalMode' }] }]);
  const { sim } = env;
  sim.writeToVmDisk('vm-47', 2000, 0, randomData(1 * MiB, 51));
  sim.writeToVmDisk('vm-47', 2001, 0, randomData(1 * MiB, 52));
  const log: string[] = [];
  const r1 = await env.run({ log });
  t.same(r1.disks.map((d) => d.deviceKey), [2000, 2001], 'the independent disk and the physical RDM are not read');
  t.same(r1.skipped.map((s) => s.key), [2003, 2004]);
  t.match(r1.skipped[0].reason, /independent_persistent: independent disks are not part of snapshots/);
  t.match(r1.skipped[1].reason, /physical-mode RDM/);
  t.ok(log.some((l) => /skipping disk 2003/.test(l)));
  const e = await env.run({ unsupportedDisks: 'fail' }).then(() => undefined, (x: Error & { code: string }) => x);
  t.equal(e?.code, 'RNODE_VM_DISK_UNSUPPORTED', 'policy fail');
  sim.removeDisk('vm-47', 2003);
  sim.removeDisk('vm-47', 2004);

  // A user snapshot: rnode takes its own beside it and leaves it alone.
  const user = sim.userSnapshot('vm-47', 'before-upgrade');
  sim.writeToVmDisk('vm-47', 2000, 2 * MiB, randomData(4096, 53));
  const r2 = await env.run();
  t.same(sim.vms.get('vm-47')!.snapshots.map((s) => s.moref), [user], 'the user snapshot is still there, ours is gone');
  t.same(r2.staleSnapshotsRemoved, []);
  t.same(r2.disks.map((d) => d.bytesRead), [64 * KiB, 0], 'incremental beside a user snapshot');
  await expectVmRestore(t, env, 'vm-47', r2.vmPoint);

  // Added: read in full. Resized: CBT reset, read in full, with the reason.
  sim.addDisk('vm-47', { key: 2005, size: 3 * MiB });
  sim.writeToVmDisk('vm-47', 2005, 0, randomData(512 * KiB, 54));
  sim.resizeDisk('vm-47', 2001, 6 * MiB);
  sim.writeToVmDisk('vm-47', 2001, 5 * MiB, randomData(4096, 55));
  const r3 = await env.run();
  t.same(r3.added, [2005]);
  const byKey = new Map(r3.disks.map((d) => [d.deviceKey, d]));
  t.equal(byKey.get(2005)!.full, true, 'the added disk is read in full');
  t.equal(byKey.get(2001)!.full, true, 'the resized disk is read in full');
  t.match(byKey.get(2001)!.fullReason, /resized from 4194304 to 6291456 bytes \(resizing resets CBT\)/);
  t.equal(byKey.get(2000)!.full, false, 'the others stay incremental');
  await expectVmRestore(t, env, 'vm-47', r3.vmPoint);

  // Removed: reported, its points kept.
  sim.removeDisk('vm-47', 2000);
  const r4 = await env.run();
  t.same(r4.removed.map((x) => x.key), [2000]);
  t.match(r4.removed[0].reason, /no longer in the VM; its points are kept/);
  t.same(await listPointSeqs(env.store, 'vm-47-disk-2000'), [1, 2, 3], 'the removed disk keeps its points');
  t.same((await loadVmPoint(env.store, 'vm-47', r4.vmPoint)).removed.map((x) => x.key), [2000], 'recorded in the VM point');
  await expectVmRestore(t, env, 'vm-47', r3.vmPoint);
});

t.test('retention keeps whole VM points; the CLI lists, restores and prunes VM points', async (t) => {
  const env = await startEnv(t, [{ moref: 'vm-48', disks: THREE.slice(0, 2) }]);
  const { sim } = env;
  fill(env, 'vm-48', 61);
  const runs = [];
  for (let i = 0; i < 4; i++) {
    sim.writeToVmDisk('vm-48', 2000 + (i % 2), i * 64 * KiB, randomData(4096, 70 + i));
    runs.push(await env.run());
  }
  // A partial run between VM points 4 and the next: disk 2000 commits point 5 outside any VM point.
  sim.writeToVmDisk('vm-48', 2000, 0, randomData(4096, 80));
  sim.dummyExtra = ['dummy.failReadPath=vm-48_1:13'];
  sim.writeDummyConfig();
  sim.writeToVmDisk('vm-48', 2001, 0, randomData(4096, 81));
  await env.run().catch(() => undefined);
  sim.dummyExtra = [];
  sim.writeDummyConfig();

  const io = { lines: [] as string[], out(l: string) { this.lines.push(l); }, err() {} };
  const store = path.join(env.dir, 'store');
  t.equal(await commands.points.run({ store, vm: 'vm-48', json: true }, io), 0);
  const listed = JSON.parse(io.lines.pop()!);
  t.same(listed.vmPoints.map((p: any) => p.vmPoint), [1, 2, 3, 4], 'rnode points --vm lists the VM points');
  t.same(listed.vmPoints[3].disks.map((d: any) => d.point), [4, 4]);

  t.equal(await commands.prune.run({ store, vm: 'vm-48', keep: '2', json: true }, io), 0);
  const pr = JSON.parse(io.lines.pop()!);
  t.same([pr.kept, pr.deletedVmPoints], [[3, 4], [1, 2]], 'rnode prune --vm keeps whole VM points');
  t.same(await listPointSeqs(env.store, 'vm-48-disk-2000'), [3, 4, 5], 'disk points from the oldest kept VM point on stay (5 is the partial run\'s)');
  t.same(await listPointSeqs(env.store, 'vm-48-disk-2001'), [3, 4]);
  const again = await pruneVm({ store: env.store, vm: 'vm-48', keep: 2 });
  t.same(again.deletedVmPoints, [], 'idempotent');

  const outDir = path.join(env.dir, 'cli-restore');
  t.equal(await commands.recover.run({ store, vm: 'vm-48', point: '3', 'out-dir': outDir, json: true }, io), 0);
  const rec = JSON.parse(io.lines.pop()!);
  t.equal(rec.vmPoint, 3);
  const want = snapshotFingerprints(env, runs[2].snapshot);
  for (const d of rec.disks) t.equal(fingerprintOf(d.out), want.get(d.key), `rnode recover --vm: disk ${d.key} of VM point 3 byte-exact after prune`);
  await expectVmRestore(t, env, 'vm-48', 4);
  const bad = await commands.recover.run({ store, vm: 'vm-48', point: '1', 'out-dir': outDir }, io).then(() => undefined, (e: Error & { code: string }) => e);
  t.equal(bad?.code, 'RNODE_POINT_NOT_FOUND', 'a pruned VM point is gone');
});

t.test('a VM replicated to a peer node (ws://): the receiving node accepts VM points only over disk points it holds', async (t) => {
  const { remote, startNode } = await import('../transport/helpers.js');
  const { FrameFlag } = await import('../../src/transport/frame.js');
  const env = await startEnv(t, [{ moref: 'vm-49', disks: THREE.slice(0, 2) }]);
  fill(env, 'vm-49', 91);
  const node = await startNode(t, env.dir);
  const r = await env.run({ store: remote(t, node.url) });
  t.equal(r.vmPoint, 1, 'the VM point committed over the peer link');
  const p = await loadVmPoint(node.store, 'vm-49', 1);
  t.same(p.disks.map((d) => d.point), [1, 1]);
  const out = await recoverVm({ store: node.store, vm: 'vm-49', outDir: path.join(env.dir, 'peer-restore') });
  const want = snapshotFingerprints(env, r.snapshot);
  for (const d of out.disks) t.equal(fingerprintOf(d.out), want.get(d.key), `disk ${d.key} restores byte-exact on the receiving node`);
  const forged = Buffer.from(JSON.stringify({ ...p, seq: 2, disks: [{ ...p.disks[0], point: 9 }] }));
  await t.rejects(node.server.validator.checkPut({ key: 'vms/vm-49/points/0000000002.json', data: forged, flags: FrameFlag.IF_NONE_MATCH, diskOffset: null, plainXxh64: 0n }),
    { code: 'RNODE_TRANSPORT_REJECTED', message: /disk point disks\/vm-49-disk-2000\/points\/0000000009\.json is not on this node/ }, 'a VM point naming a missing disk point is refused');
});
