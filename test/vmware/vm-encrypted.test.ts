// Regression: VM points of encrypted disks were plain JSON that anyone with the bucket could edit (e.g. name
// another, older disk point, so `recover --vm` restored a VM state that never existed, or widen what prune
// deletes). With a key, a VM point carries a MAC bound to the VM and its number; an edited, stripped or moved one
// is METADATA_FORGED before anything is restored.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { EncryptionKey } from '../../src/crypto/keys.js';
import { vmLayout } from '../../src/repository/names.js';
import { recoverVm } from '../../src/jobs/vm.js';
import { loadVmPoint } from '../../src/repository/vm-points.js';
import { startEnv } from './harness.js';
import { THREE, fill } from './vm-helpers.js';

t.test('an encrypted VM point is authenticated: edits, a stripped MAC and a moved point are refused', async (t) => {
  const env = await startEnv(t, [{ moref: 'vm-60', disks: THREE.slice(0, 2) }]);
  const key = EncryptionKey.fromBytes(crypto.randomBytes(32));
  fill(env, 'vm-60', 1);
  await env.run({ encryption: key });
  env.sim.writeToVmDisk('vm-60', 2000, 0, crypto.randomBytes(64 * 1024));
  await env.run({ encryption: key });
  const p2 = await loadVmPoint(env.store, 'vm-60', 2, key);
  t.match(p2.mac, /^[0-9a-f]{64}$/, 'the VM point carries a MAC');
  const out = path.join(env.dir, 'restore');
  const ok = await recoverVm({ store: env.store, vm: 'vm-60', point: '2', outDir: out, encryption: key });
  t.equal(ok.disks.length, 2, 'the genuine VM point restores');
  fs.rmSync(out, { recursive: true });

  const k2 = vmLayout.point('vm-60', 2);
  const original = await env.store.get(k2);
  const rewrite = async (edit: (p: Record<string, any>) => void) => {
    const p = JSON.parse(original.toString('utf8'));
    edit(p);
    await env.store.put(k2, Buffer.from(JSON.stringify(p)));
  };
  await rewrite((p) => {
    p.disks[0].point = 1;
  });
  await t.rejects(
    recoverVm({ store: env.store, vm: 'vm-60', point: '2', outDir: out, encryption: key }),
    { code: 'RNODE_METADATA_FORGED' },
    'a disk re-pointed to an older point is refused',
  );
  t.notOk(fs.existsSync(out), 'nothing was restored');
  await rewrite((p) => {
    delete p.mac;
  });
  await t.rejects(
    loadVmPoint(env.store, 'vm-60', 2, key),
    { code: 'RNODE_METADATA_FORGED', message: /not authenticated/ },
    'a stripped MAC is refused',
  );
  // VM point 1 replayed as point 2: same VM, valid MAC for number 1.
  const p1 = JSON.parse((await env.store.get(vmLayout.point('vm-60', 1))).toString('utf8'));
  await env.store.put(k2, Buffer.from(JSON.stringify({ ...p1, seq: 2 })));
  await t.rejects(
    loadVmPoint(env.store, 'vm-60', 2, key),
    { code: 'RNODE_METADATA_FORGED' },
    'an older VM point replayed under a newer number is refused',
  );
  await env.store.put(k2, original);
  t.ok(await loadVmPoint(env.store, 'vm-60', 2, key), 'the original verifies again');
});
