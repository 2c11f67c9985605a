// A VM run whose disk ids (the agent's job names them) start with "prune.", the prefix of prune's leases, is refused
// (RNODE_BAD_DISK_ID) before the VM's snapshot is taken, not by each disk's replicate after it.
import t from 'tap';
import { listPointSeqs } from '../../src/repository/points.js';
import { startEnv } from './harness.js';
import { THREE, fill } from './vm-helpers.js';

t.test('a VM run with a disk id that starts with prune. takes no snapshot and writes no point', async (t) => {
  const env = await startEnv(t, [{ moref: 'vm-1', disks: THREE.slice(0, 2) }]);
  fill(env, 'vm-1', 1);
  const snapshots = () => env.sim.calls.filter((m) => m === 'CreateSnapshot_Task').length;
  const diskId = (k: number) => (k === THREE[1].key ? 'prune.plain' : `vm-1-disk-${k}`);

  await t.rejects(env.run({ diskId }), { code: 'RNODE_BAD_DISK_ID', message: /"prune\.plain" cannot take new points.*reserved for prune's lease/ });
  t.equal(snapshots(), 0, 'no snapshot was taken');
  t.same(await listPointSeqs(env.store, `vm-1-disk-${THREE[0].key}`), [], 'no disk of the VM got a point');

  const ok = await env.run();
  t.equal(ok.disks.length, 2, 'the default ids are fine');
});
