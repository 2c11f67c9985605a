// Single-disk and VM runs as a finder drove them against the vSphere simulator and the VDDK stand-in:
// - a source config with caFile (and no thumbprint), which docs/vmware.md offers, failed every run at VDDK's
//   ConnectEx: VDDK takes a thumbprint only, and none was given;
// - after a run whose snapshot could not be removed, the next run said an earlier run "ended without EndAccess" and
//   called EndAccess again (the failed removal had already called it);
// - a disk the previous run left out ("disks" selection) was reported added and read in full.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { accessAndThreads, expectRestores, startEnv } from './harness.js';
import { THREE, fill } from './vm-helpers.js';

t.test('caFile instead of thumbprint: VDDK is given the thumbprint of the certificate the CA verified', async (t) => {
  const env = await startEnv(t, [{ moref: 'vm-1', disks: THREE.slice(0, 2) }]);
  fill(env, 'vm-1', 11);
  const caFile = path.join(env.dir, '127.0.0.1.crt');
  t.ok(fs.existsSync(caFile), "the simulator's self-signed certificate, its own CA");
  const r = await env.run({ config: { thumbprint: undefined, caFile } });
  t.equal(r.disks.length, 2, 'the run made its point');
  await expectRestores(t, env, [r]);
});

t.test('a snapshot left after its VM point: EndAccess is not called a second time by the next run', async (t) => {
  const env = await startEnv(t, [{ moref: 'vm-1', disks: THREE.slice(0, 2) }]);
  fill(env, 'vm-1', 12);
  env.clearLog();
  env.sim.injectFault('RemoveSnapshot_Task', 'TaskInProgress', 'The operation is not allowed in the current state.', 1);
  const first = await env.run();
  t.equal(first.snapshotRemoved, false, 'the snapshot was left');
  const log: string[] = [];
  const next = await env.run({ log });
  t.notOk(
    [...log, ...(next.warnings ?? [])].some((l) => /without EndAccess/.test(l)),
    'no run "ended without EndAccess"',
  );
  const a = accessAndThreads(env.calls());
  t.same([a.prepare, a.end], [2, 2], 'one PrepareForAccess and one EndAccess per run');
});

t.test('a disk the previous run left out is not "added": it is incremental on its own latest point', async (t) => {
  const env = await startEnv(t, [{ moref: 'vm-1', disks: THREE.slice(0, 2) }]);
  const [a, b] = THREE.slice(0, 2).map((d) => d.key);
  fill(env, 'vm-1', 13);
  const runs = [await env.run({ disks: [a] }), await env.run({ disks: [b] })];
  fill(env, 'vm-1', 14);
  const again = await env.run({ disks: [a] });
  runs.push(again);
  t.same(again.added, [], 'nothing added');
  t.match(again.disks, [{ deviceKey: a, full: false }], 'disk a: incremental');
  t.notOk(again.fullReason, 'no reason to read it in full');
  await expectRestores(t, env, runs);
});
