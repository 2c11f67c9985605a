// The permissions of a restored image: an encrypted disk's plaintext was written 0644, readable by every user of the
// host, and a restore over an existing image reset that file's mode to 0644 too.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { recover } from '../../src/jobs/restore.js';
import { EncryptionKey } from '../../src/crypto/keys.js';
import { fsStore, randomData, snap, stopCodecWorkersAtEnd, tmpDir } from '../helpers/images.js';

stopCodecWorkersAtEnd(t);

const mode = (f: string) => fs.statSync(f).mode & 0o777;

t.test("a restored image's mode: owner-only for an encrypted disk, kept when it replaces a file", async (t) => {
  const dir = tmpDir(t, 'out-mode');
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, randomData(256 * 1024, 1));
  const key = EncryptionKey.fromBytes(Buffer.alloc(32, 9));
  const store = fsStore(path.join(dir, 'store'));
  await snap(store, img, 'sealed', { encryption: key });
  await snap(store, img, 'plain');
  const umask = process.umask(0o022);
  t.teardown(() => void process.umask(umask));

  const sealed = path.join(dir, 'sealed.img');
  await recover({ store, disk: 'sealed', out: sealed, encryption: key });
  t.equal(mode(sealed), 0o600, 'an encrypted disk restored to a new file: 0600');
  t.ok(fs.readFileSync(sealed).equals(fs.readFileSync(img)), 'byte-exact');

  const plain = path.join(dir, 'plain.img');
  await recover({ store, disk: 'plain', out: plain });
  t.equal(mode(plain), 0o644, 'an unencrypted disk: 0644, as before');

  fs.chmodSync(plain, 0o640);
  await recover({ store, disk: 'plain', out: plain });
  t.equal(mode(plain), 0o640, 'a file replaced keeps its mode');
  fs.chmodSync(sealed, 0o604);
  await recover({ store, disk: 'sealed', out: sealed, encryption: key });
  t.equal(mode(sealed), 0o604, 'even where the owner chose a wider one for an encrypted disk');
});

t.test('a file replaced keeps its permissions, not its setuid, setgid or sticky bit', async (t) => {
  const dir = tmpDir(t, 'out-suid');
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, randomData(64 * 1024, 2));
  const store = fsStore(path.join(dir, 'store'));
  await snap(store, img, 'plain');
  const out = path.join(dir, 'plain.img');
  fs.writeFileSync(out, 'old');
  fs.chmodSync(out, 0o7755);
  await recover({ store, disk: 'plain', out });
  t.equal(fs.statSync(out).mode & 0o7777, 0o755, 'rwxr-xr-x kept, the special bits dropped');
  t.ok(fs.readFileSync(out).equals(fs.readFileSync(img)), 'byte-exact');
});
