// Regression: the VM replicate summary said "from snapshot snapshot-N (removed)" whatever happened, also when the
// removal failed and a warning said the snapshot could not be removed. Now it says the snapshot was left on the
// VM, and the result (--json) has snapshotRemoved.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { replicateVmwareCommand } from '../../src/cli/vmware.js';
import { startEnv } from './harness.js';
import { THREE, fill } from './vm-helpers.js';

t.test('a snapshot that could not be removed is not reported as removed', async (t) => {
  const env = await startEnv(t, [{ moref: 'vm-1', disks: THREE.slice(0, 2) }]);
  fill(env, 'vm-1', 1);
  const cfg = path.join(env.dir, 'vm.json');
  fs.writeFileSync(cfg, JSON.stringify(env.config));
  const out: string[] = [];
  const io = { out: (l: string) => out.push(l), err: () => {} };
  const args = { 'source-config': cfg, target: env.store.location };

  const fault = () => env.sim.injectFault('RemoveSnapshot_Task', 'TaskInProgress', 'The operation is not allowed in the current state.', 1);
  fault();
  t.equal(await replicateVmwareCommand({ ...args, json: true }, io), 0);
  const r = JSON.parse(out[0]);
  t.equal(r.snapshotRemoved, false, 'the JSON result says the snapshot was not removed');
  t.match(r.warnings, [new RegExp(`snapshot ${r.snapshot} of VM vm-1 could not be removed`)]);
  out.length = 0;

  t.equal(await replicateVmwareCommand(args, io), 0, 'the next run removes the leftover');
  t.match(out[0], /from snapshot snapshot-\d+ \(removed\)/);
  t.equal(env.sim.vms.get('vm-1')!.snapshots.length, 0);
  out.length = 0;

  fault();
  t.equal(await replicateVmwareCommand(args, io), 0);
  t.match(out[0], /from snapshot (snapshot-\d+) \(left on the VM: see the warning\)/);
  t.notMatch(out[0], /\(removed\)/);
  const snapshot = /from snapshot (snapshot-\d+)/.exec(out[0])![1];
  t.ok(
    out.some((l) => l.includes(`warning: snapshot ${snapshot} of VM vm-1 could not be removed`)),
    'the warning says why',
  );
  t.same(
    env.sim.vms.get('vm-1')!.snapshots.map((s) => s.moref),
    [snapshot],
    'it is on the VM',
  );
});
