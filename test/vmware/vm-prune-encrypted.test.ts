// Regression: prune --vm of a VM whose disks are encrypted listed the disks' points without the key, which finds
// none. Without the key it deleted VM point records and exited 0; with the key it reported "disks": [] and never
// pruned a disk point. Now: no key is KEY_REQUIRED and a wrong one KEY_MISMATCH (exit 2) before anything is
// deleted, and with the key the disks' points are pruned as for an unencrypted VM.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { EncryptionKey } from '../../src/crypto/keys.js';
import { listPointSeqs } from '../../src/repository/points.js';
import { listVmPointSeqs } from '../../src/repository/vm-points.js';
import { json, runCli } from '../helpers/cli.js';
import { startEnv } from './harness.js';
import { THREE, expectVmRestore, fill } from './vm-helpers.js';

t.test('prune --vm of an encrypted VM: refused without the key or with another, prunes the disks with it', async (t) => {
  const env = await startEnv(t, [{ moref: 'vm-1', disks: THREE.slice(0, 2) }]);
  const k1 = crypto.randomBytes(32);
  const key = EncryptionKey.fromBytes(k1);
  const kf = path.join(env.dir, 'k1');
  const kf2 = path.join(env.dir, 'k2');
  fs.writeFileSync(kf, k1.toString('hex'), { mode: 0o600 });
  fs.writeFileSync(kf2, crypto.randomBytes(32).toString('hex'), { mode: 0o600 });
  fill(env, 'vm-1', 1);
  for (let i = 0; i < 4; i++) {
    env.sim.writeToVmDisk('vm-1', 2000, 0, crypto.randomBytes(64 * 1024));
    await env.run({ encryption: key });
  }
  const store = env.store.location;
  const disks = ['vm-1-disk-2000', 'vm-1-disk-2001'];
  const state = async () => [await listVmPointSeqs(env.store, 'vm-1'), ...(await Promise.all(disks.map((d) => listPointSeqs(env.store, d, key))))];
  const all = [
    [1, 2, 3, 4],
    [1, 2, 3, 4],
    [1, 2, 3, 4],
  ];
  t.same(await state(), all);

  const noKey = await runCli(['prune', '--store', store, '--vm', 'vm-1', '--keep', '1']);
  t.equal(noKey.code, 2, noKey.stderr);
  t.match(noKey.stderr, /RNODE_KEY_REQUIRED: the disks of VM vm-1 are encrypted \(key id [0-9a-f]+\); pass their key with --encryption-key-file/);
  t.same(await state(), all, 'without the key nothing was deleted');

  const wrong = await runCli(['prune', '--store', store, '--vm', 'vm-1', '--keep', '1', '--encryption-key-file', kf2]);
  t.equal(wrong.code, 2, wrong.stderr);
  t.match(wrong.stderr, /RNODE_KEY_MISMATCH/);
  t.same(await state(), all, 'with another key nothing was deleted');

  const ok = await runCli(['prune', '--store', store, '--vm', 'vm-1', '--keep', '1', '--encryption-key-file', kf, '--json']);
  t.equal(ok.code, 0, ok.stderr);
  t.same(json(ok), {
    vm: 'vm-1',
    kept: [4],
    deletedVmPoints: [1, 2, 3],
    disks: disks.map((disk) => ({ disk, deleted: [1, 2, 3] })),
  });
  t.same(await state(), [[4], [4], [4]], 'the disks keep the points VM point 4 uses');
  await expectVmRestore(t, env, 'vm-1', 4, key);
});
