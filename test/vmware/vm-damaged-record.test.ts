// A damaged VM point record (vms/<vm>/points/<n>.json not readable) is that record's problem, not the VM's: the latest
// one damaged stopped every later VM run for good (RNODE_MANIFEST_CORRUPT, no advice), `prune --vm` could not clear it,
// and `points --vm` hid every VM point behind one damaged record. Now a run plans from the newest readable VM point
// and warns, retention counts readable records only and deletes a damaged one once it is older than those kept, and
// `points --vm` names it in place of its row (exit 1).
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { pruneVm } from '../../src/jobs/vm.js';
import { vmLayout } from '../../src/repository/names.js';
import { listVmPointSeqs } from '../../src/repository/vm-points.js';
import { runCli } from '../helpers/cli.js';
import { startEnv } from './harness.js';
import { THREE, expectVmRestore, fill, randomData } from './vm-helpers.js';

t.test('a damaged latest VM point record: the next run plans from the one before, points --vm names it, prune --vm deletes it', async (t) => {
  const env = await startEnv(t, [{ moref: 'vm-46', disks: THREE }]);
  fill(env, 'vm-46', 21);
  await env.run();
  env.sim.writeToVmDisk('vm-46', 2000, 0, randomData(4096, 22));
  await env.run();
  const record = path.join(env.store.location, vmLayout.point('vm-46', 2));
  fs.writeFileSync(record, 'garbage\n');

  const listed = await runCli(['points', '--store', env.store.location, '--vm', 'vm-46', '--json']);
  t.equal(listed.code, 1, 'points --vm exits 1');
  const doc = JSON.parse(listed.stdout);
  t.same(
    doc.vmPoints.map((p: { vmPoint: number }) => p.vmPoint),
    [1],
    'the readable VM point is listed',
  );
  t.match(doc.problems, [{ vmPoint: 2, code: 'RNODE_MANIFEST_CORRUPT' }], 'the damaged one is named');

  env.sim.writeToVmDisk('vm-46', 2001, 0, randomData(4096, 23));
  const r = await env.run();
  t.equal(r.vmPoint, 3, 'the next run makes VM point 3');
  t.match(r.warnings, [/VM point vms\/vm-46\/points\/0000000002\.json is not valid JSON.*plans from the VM point before it/], 'and says why');
  await expectVmRestore(t, env, 'vm-46', 3);

  const pruned = await pruneVm({ store: env.store, vm: 'vm-46', keep: 1, graceMs: 0 });
  t.same([pruned.kept, pruned.deletedVmPoints], [[3], [1, 2]], 'retention keeps VM point 3 and deletes the damaged record with point 1');
  t.same(await listVmPointSeqs(env.store, 'vm-46'), [3]);
  await expectVmRestore(t, env, 'vm-46', 3);
});
