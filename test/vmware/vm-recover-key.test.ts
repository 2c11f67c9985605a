// Regression: recover --vm of an encrypted VM without its key failed with RNODE_KEY_REQUIRED, but only when the
// first disk was read, and left the --out-dir it had made behind (empty). The key is checked before the folder is
// made, as for a disk's recover.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { EncryptionKey } from '../../src/crypto/keys.js';
import { runCli } from '../helpers/cli.js';
import { startEnv } from './harness.js';
import { THREE, fill } from './vm-helpers.js';

t.test('recover --vm without the key (or with another) makes no --out-dir', async (t) => {
  const env = await startEnv(t, [{ moref: 'vm-1', disks: THREE.slice(0, 2) }]);
  const k1 = crypto.randomBytes(32);
  const kf = path.join(env.dir, 'k1');
  const kf2 = path.join(env.dir, 'k2');
  fs.writeFileSync(kf, k1.toString('hex'), { mode: 0o600 });
  fs.writeFileSync(kf2, crypto.randomBytes(32).toString('hex'), { mode: 0o600 });
  fill(env, 'vm-1', 1);
  await env.run({ encryption: EncryptionKey.fromBytes(k1) });
  const recover = (out: string, ...key: string[]) => runCli(['recover', '--store', env.store.location, '--vm', 'vm-1', '--out-dir', out, ...key]);

  const o3 = path.join(env.dir, 'o3');
  const noKey = await recover(o3);
  t.equal(noKey.code, 2, noKey.stderr);
  t.match(noKey.stderr, /RNODE_KEY_REQUIRED: the disks of VM vm-1 are encrypted/);
  t.notOk(fs.existsSync(o3), 'no output folder without the key');

  const o4 = path.join(env.dir, 'o4');
  const wrong = await recover(o4, '--encryption-key-file', kf2);
  t.equal(wrong.code, 2, wrong.stderr);
  t.match(wrong.stderr, /RNODE_KEY_MISMATCH/);
  t.notOk(fs.existsSync(o4), 'no output folder with another key');

  const ok = await recover(o3, '--encryption-key-file', kf);
  t.equal(ok.code, 0, ok.stderr);
  t.same(fs.readdirSync(o3).sort(), ['vm-1-disk-2000.img', 'vm-1-disk-2001.img', 'vm-point.json'], 'with the key the VM point is recovered');
});
