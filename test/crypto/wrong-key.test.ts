// A key that opens none of a store's encrypted repositories is a mistake to say, not a store to call fine: check,
// stats, disks and prune (maintenance) reported success over only what needs no key (check: "ok", exit 0), and
// prune --disk called a disk encrypted with another key, or an unencrypted one given a key, missing; and a mistyped
// --disk in a store holding an encrypted repository was answered "pass its key".
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { runCli } from '../helpers/cli.js';
import { randomData, tmpDir } from '../helpers/images.js';

t.test('the wrong key: RNODE_KEY_MISMATCH (exit 2) from check, stats, disks, prune; the right one still works', async (t) => {
  const dir = tmpDir(t, 'wrong-key');
  const store = path.join(dir, 'store');
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, randomData(1024 * 1024, 3));
  const key = (name: string, byte: number) => {
    const f = path.join(dir, name);
    fs.writeFileSync(f, Buffer.alloc(32, byte).toString('hex'), { mode: 0o600 });
    return f;
  };
  const right = key('right', 1);
  const wrong = key('wrong', 2);
  for (const args of [
    ['--disk', 'sealed', '--encryption-key-file', right],
    ['--disk', 'open'],
  ]) {
    const r = await runCli(['replicate', '--source', img, '--target', store, ...args]);
    t.equal(r.code, 0, r.stderr);
  }
  for (const cmd of [['check'], ['check', '--read-data'], ['stats'], ['disks'], ['prune']]) {
    const r = await runCli([...cmd, '--store', store, '--encryption-key-file', wrong]);
    t.equal(r.code, 2, `${cmd.join(' ')}: exit 2 (${r.stdout.trim()})`);
    t.match(r.stderr, /^rnode: RNODE_KEY_MISMATCH: no repository in \S+ is encrypted with the key given \(key id [0-9a-f]+\)/, cmd.join(' '));
    const ok = await runCli([...cmd, '--store', store, '--encryption-key-file', right]);
    t.equal(ok.code, 0, `${cmd.join(' ')} with the right key: ${ok.stderr}`);
  }
  // A mistyped disk id is a missing disk, not a missing key, though the store holds an encrypted repository.
  for (const cmd of [['recover', '--out', path.join(dir, 'out.img')], ['verify'], ['prune', '--keep', '1']]) {
    const r = await runCli([cmd[0], '--store', store, '--disk', 'sealedd', ...cmd.slice(1)]);
    t.equal(r.code, 1, `${cmd[0]} --disk <typo>: exit 1`);
    t.match(
      r.stderr,
      /RNODE_DISK_NOT_FOUND: disk sealedd has no committed points in \S+; check --disk and --store \("rnode disks --store \S+" lists its disks\)/,
    );
  }
  for (const [disk, k, why] of [
    ['sealed', wrong, /is not the key disk sealed is encrypted with/],
    ['open', right, /disk open is not encrypted/],
  ] as const) {
    const r = await runCli(['prune', '--store', store, '--disk', disk, '--keep', '1', '--encryption-key-file', k]);
    t.equal(r.code, 2, `prune --disk ${disk}: exit 2`);
    t.match(r.stderr, /RNODE_KEY_MISMATCH/);
    t.match(r.stderr, why);
  }
});
