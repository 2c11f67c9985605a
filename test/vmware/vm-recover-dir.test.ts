// recover --vm into a folder that holds an earlier restore: a run that fails midway must not leave that restore's
// vm-point.json beside disks of two points (it did: the folder looked like a finished restore of point 1 while one
// disk was point 2's). And an --out-dir inside the store is refused before anything is made there.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { recoverVm } from '../../src/jobs/vm.js';
import { startEnv } from './harness.js';
import { THREE, fill } from './vm-helpers.js';

t.test('a failed recover --vm over an earlier restore leaves no vm-point.json', async (t) => {
  const env = await startEnv(t, [{ moref: 'vm-70', disks: THREE.slice(0, 2) }]);
  fill(env, 'vm-70', 3);
  await env.run();
  const packsDir = path.join(env.store.location, 'r2', 'plain', 'packs');
  const packs = () => fs.readdirSync(packsDir, { recursive: true, withFileTypes: true }).filter((e) => e.isFile());
  const before = new Set(packs().map((e) => path.join(e.parentPath, e.name)));
  env.sim.writeToVmDisk('vm-70', 2000, 0, crypto.randomBytes(64 * 1024));
  env.sim.writeToVmDisk('vm-70', 2001, 0, crypto.randomBytes(64 * 1024));
  await env.run();
  const out = path.join(env.dir, 'restore');
  const first = await recoverVm({ store: env.store, vm: 'vm-70', point: '1', outDir: out });
  t.equal(first.disks.length, 2);
  t.ok(fs.existsSync(path.join(out, 'vm-point.json')), 'a finished restore has its vm-point.json');

  // Point 2's new chunks are in packs of their own: damaged, its restore fails on one of the disks.
  const fresh = packs()
    .map((e) => path.join(e.parentPath, e.name))
    .filter((f) => !before.has(f));
  t.ok(fresh.length > 0, 'point 2 wrote packs');
  for (const f of fresh) fs.writeFileSync(f, crypto.randomBytes(fs.statSync(f).size));
  await t.rejects(recoverVm({ store: env.store, vm: 'vm-70', point: '2', outDir: out }), { code: /RNODE_CHUNK_/ });
  t.notOk(fs.existsSync(path.join(out, 'vm-point.json')), 'no vm-point.json: the folder does not look like a finished restore');

  const inside = path.join(env.store.location, 'inside');
  await t.rejects(recoverVm({ store: env.store, vm: 'vm-70', point: '1', outDir: inside }), { code: 'RNODE_OUTPUT_IN_STORE' });
  t.notOk(fs.existsSync(inside), 'nothing was made inside the store');
});
