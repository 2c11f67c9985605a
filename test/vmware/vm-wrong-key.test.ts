// Regression: a VM whose points were sealed with one key, replicated or recovered with another, failed with
// RNODE_METADATA_FORGED ("fails its MAC: it was modified, moved or forged", exit 1), and a run with no VM point
// to check took a vSphere snapshot before its disks refused the key. A wrong key is RNODE_KEY_MISMATCH (exit 2,
// as for a disk), found before any snapshot; only a record that fails under its disks' own key is forged.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { EncryptionKey } from '../../src/crypto/keys.js';
import { vmLayout } from '../../src/repository/names.js';
import { loadVmPoint } from '../../src/repository/vm-points.js';
import { runCli } from '../helpers/cli.js';
import { startEnv } from './harness.js';
import { THREE, fill } from './vm-helpers.js';

t.test('a VM sealed with k1: replicate and recover --vm with k2 are KEY_MISMATCH (exit 2), no snapshot taken', async (t) => {
  const env = await startEnv(t, [{ moref: 'vm-1', disks: THREE.slice(0, 2) }]);
  const k1 = crypto.randomBytes(32);
  const k2 = crypto.randomBytes(32);
  const kf2 = path.join(env.dir, 'k2');
  fs.writeFileSync(kf2, k2.toString('hex'), { mode: 0o600 });
  fill(env, 'vm-1', 1);
  await env.run({ encryption: EncryptionKey.fromBytes(k1) });
  const cfg = path.join(env.dir, 'vm.json');
  fs.writeFileSync(cfg, JSON.stringify(env.config));
  const store = env.store.location;
  const snapshots = () => env.sim.calls.filter((m) => m === 'CreateSnapshot_Task').length;

  await t.rejects(loadVmPoint(env.store, 'vm-1', 1, EncryptionKey.fromBytes(k2)), { code: 'RNODE_KEY_MISMATCH' }, 'loadVmPoint with k2');
  const before = snapshots();
  const rep = await runCli(['replicate', '--source-config', cfg, '--target', store, '--encryption-key-file', kf2]);
  t.equal(rep.code, 2, rep.stderr);
  t.match(rep.stderr, /RNODE_KEY_MISMATCH: the key given \(key id [0-9a-f]+\) is not the key the disks of VM vm-1 are encrypted with/);
  t.notMatch(rep.stderr, /FORGED/);
  t.equal(snapshots(), before, 'no snapshot was taken');
  const rec = await runCli(['recover', '--store', store, '--vm', 'vm-1', '--out-dir', path.join(env.dir, 'o'), '--encryption-key-file', kf2]);
  t.equal(rec.code, 2, rec.stderr);
  t.match(rec.stderr, /RNODE_KEY_MISMATCH/);

  // No VM point to check (a first run that failed on a disk): the disks' claims still refuse k2 before a snapshot.
  fs.rmSync(path.join(store, vmLayout.pointsPrefix('vm-1')), { recursive: true });
  const again = await runCli(['replicate', '--source-config', cfg, '--target', store, '--encryption-key-file', kf2]);
  t.equal(again.code, 2, again.stderr);
  t.match(again.stderr, /RNODE_KEY_MISMATCH/);
  t.equal(snapshots(), before, 'still no snapshot');
});

t.test('a key given for an unencrypted VM is KEY_MISMATCH, not a forged VM point', async (t) => {
  const env = await startEnv(t, [{ moref: 'vm-2', disks: THREE.slice(0, 2) }]);
  fill(env, 'vm-2', 2);
  await env.run();
  await t.rejects(loadVmPoint(env.store, 'vm-2', 1, EncryptionKey.fromBytes(crypto.randomBytes(32))), {
    code: 'RNODE_KEY_MISMATCH',
    message: /disks of VM vm-2 are not encrypted; leave out the encryption key/,
  });
  const before = env.sim.calls.filter((m) => m === 'CreateSnapshot_Task').length;
  await t.rejects(env.run({ encryption: EncryptionKey.fromBytes(crypto.randomBytes(32)) }), { code: 'RNODE_KEY_MISMATCH' });
  t.equal(env.sim.calls.filter((m) => m === 'CreateSnapshot_Task').length, before, 'no snapshot was taken');
});
