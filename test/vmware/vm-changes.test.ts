// VM points when things change: quiesce with tools, without them and when quiescing fails (fallback or fail);
// disks added, removed, resized, independent and RDM; a user snapshot beside rnode's; retention by whole VM
// points and the CLI's points/recover/prune --vm; a VM replicated to a peer node.
import t from 'tap';
import path from 'node:path';
import { commands } from '../../src/cli/commands.js';
import { pruneVm, recoverVm } from '../../src/jobs/vm.js';
import { listPointSeqs } from '../../src/repository/points.js';
import { listVmPointSeqs, loadVmPoint } from '../../src/repository/vm-points.js';
import { KiB, MiB, accessAndThreads, fingerprintOf, snapshotFingerprints, startEnv } from './harness.js';
import { THREE, expectVmRestore, fill, randomData } from './vm-helpers.js';

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
  t.ok(
    r2.warnings.some((w) => /crash-consistent/.test(w)),
    'with a warning',
  );
  t.match(await loadVmPoint(env.store, 'vm-46', r2.vmPoint), { consistency: 'crash', consistencyReason: /not running/ });

  sim.setTools('vm-46', 'quiesceFails');
  const before = sim.calls.filter((m) => m === 'CreateSnapshot_Task').length;
  const r3 = await env.run({ quiesce: true, quiesceFallback: 'fallback' });
  t.equal(r3.consistency, 'crash');
  t.match(r3.consistencyReason, /FilesystemQuiesceFault/);
  t.equal(sim.calls.filter((m) => m === 'CreateSnapshot_Task').length - before, 2, 'the quiesced attempt, then the crash-consistent snapshot');

  const e = await env.run({ quiesce: true, quiesceFallback: 'fail' }).then(
    () => undefined,
    (x: Error & { code: string }) => x,
  );
  t.equal(e?.code, 'RNODE_VM_QUIESCE', 'policy fail: the run fails');
  t.match(e?.message, /quiescing VM vm-46 failed \(FilesystemQuiesceFault/);
  sim.setTools('vm-46', 'absent');
  env.clearLog();
  const e2 = await env.run({ config: { quiesce: true, quiesceFallback: 'fail' } }).then(
    () => undefined,
    (x: Error & { code: string }) => x,
  );
  t.equal(e2?.code, 'RNODE_VM_QUIESCE', 'from the VM config too');
  t.equal(sim.vms.get('vm-46')!.snapshots.length, 0, 'no snapshot left');
  t.same(accessAndThreads(env.calls()).prepare, 0, 'nothing was prepared');
  t.same(await listVmPointSeqs(env.store, 'vm-46'), [1, 2, 3]);
});

t.test('the VM changes between runs: disk added, removed, resized; independent and RDM disks; user snapshots', async (t) => {
  const env = await startEnv(t, [
    {
      moref: 'vm-47',
      disks: [...THREE.slice(0, 2), { key: 2003, size: 2 * MiB, mode: 'independent_persistent' }, { key: 2004, size: 2 * MiB, rdm: 'physicalMode' }],
    },
  ]);
  const { sim } = env;
  sim.writeToVmDisk('vm-47', 2000, 0, randomData(1 * MiB, 51));
  sim.writeToVmDisk('vm-47', 2001, 0, randomData(1 * MiB, 52));
  const log: string[] = [];
  const r1 = await env.run({ log });
  t.same(
    r1.disks.map((d) => d.deviceKey),
    [2000, 2001],
    'the independent disk and the physical RDM are not read',
  );
  t.same(
    r1.skipped.map((s) => s.key),
    [2003, 2004],
  );
  t.match(r1.skipped[0].reason, /independent_persistent: independent disks are not part of snapshots/);
  t.match(r1.skipped[1].reason, /physical-mode RDM/);
  t.ok(log.some((l) => /skipping disk 2003/.test(l)));
  const e = await env.run({ unsupportedDisks: 'fail' }).then(
    () => undefined,
    (x: Error & { code: string }) => x,
  );
  t.equal(e?.code, 'RNODE_VM_DISK_UNSUPPORTED', 'policy fail');
  sim.removeDisk('vm-47', 2003);
  sim.removeDisk('vm-47', 2004);

  // A user snapshot: rnode takes its own beside it and leaves it alone.
  const user = sim.userSnapshot('vm-47', 'before-upgrade');
  sim.writeToVmDisk('vm-47', 2000, 2 * MiB, randomData(4096, 53));
  const r2 = await env.run();
  t.same(
    sim.vms.get('vm-47')!.snapshots.map((s) => s.moref),
    [user],
    'the user snapshot is still there, ours is gone',
  );
  t.same(r2.staleSnapshotsRemoved, []);
  t.same(
    r2.disks.map((d) => d.bytesRead),
    [64 * KiB, 0],
    'incremental beside a user snapshot',
  );
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
  t.same(
    r4.removed.map((x) => x.key),
    [2000],
  );
  t.match(r4.removed[0].reason, /no longer in the VM; its points are kept/);
  t.same(await listPointSeqs(env.store, 'vm-47-disk-2000'), [1, 2, 3], 'the removed disk keeps its points');
  t.same(
    (await loadVmPoint(env.store, 'vm-47', r4.vmPoint)).removed.map((x) => x.key),
    [2000],
    'recorded in the VM point',
  );
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

  const io = {
    lines: [] as string[],
    out(l: string) {
      this.lines.push(l);
    },
    err() {},
  };
  const store = path.join(env.dir, 'store');
  t.equal(await commands.points.run({ store, vm: 'vm-48', json: true }, io), 0);
  const listed = JSON.parse(io.lines.pop()!);
  t.same(
    listed.vmPoints.map((p: any) => p.vmPoint),
    [1, 2, 3, 4],
    'rnode points --vm lists the VM points',
  );
  t.same(
    listed.vmPoints[3].disks.map((d: any) => d.point),
    [4, 4],
  );

  t.equal(await commands.prune.run({ store, vm: 'vm-48', keep: '2', json: true }, io), 0);
  const pr = JSON.parse(io.lines.pop()!);
  t.same(
    [pr.kept, pr.deletedVmPoints],
    [
      [3, 4],
      [1, 2],
    ],
    'rnode prune --vm keeps whole VM points',
  );
  t.same(await listPointSeqs(env.store, 'vm-48-disk-2000'), [3, 4, 5], "disk points from the oldest kept VM point on stay (5 is the partial run's)");
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
  const bad = await commands.recover.run({ store, vm: 'vm-48', point: '1', 'out-dir': outDir }, io).then(
    () => undefined,
    (e: Error & { code: string }) => e,
  );
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
  t.same(
    p.disks.map((d) => d.point),
    [1, 1],
  );
  const out = await recoverVm({ store: node.store, vm: 'vm-49', outDir: path.join(env.dir, 'peer-restore') });
  const want = snapshotFingerprints(env, r.snapshot);
  for (const d of out.disks) t.equal(fingerprintOf(d.out), want.get(d.key), `disk ${d.key} restores byte-exact on the receiving node`);
  const forged = Buffer.from(JSON.stringify({ ...p, seq: 2, disks: [{ ...p.disks[0], point: 9 }] }));
  await t.rejects(
    node.server.checks.checkPut({
      key: 'vms/vm-49/points/0000000002.json',
      data: forged,
      flags: FrameFlag.IF_NONE_MATCH,
      diskOffset: null,
      plainXxh64: 0n,
    }),
    { code: 'RNODE_TRANSPORT_REJECTED', message: /disk point disks\/vm-49-disk-2000\/points\/0000000009\.json is not on this node/ },
    'a VM point naming a missing disk point is refused',
  );
});
