// A key that opens none of a store's encrypted repositories is a mistake to say, not a store to call fine: check,
// stats, disks and prune (maintenance) reported success over only what needs no key (check: "ok", exit 0), and
// prune --disk called a disk encrypted with another key, or an unencrypted one given a key, missing; and a mistyped
// --disk in a store holding an encrypted repository was answered "pass its key".
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { runCli } from '../helpers/cli.js';
import { randomData, tmpDir } from '../helpers/images.js';

/** A store folder, a 1 MiB image and two key files (right, wrong) in a fresh folder. */
function setup(t: Parameters<typeof tmpDir>[0], tag: string, seed: number) {
  const dir = tmpDir(t, tag);
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, randomData(1024 * 1024, seed));
  const key = (name: string, byte: number) => {
    const f = path.join(dir, name);
    fs.writeFileSync(f, Buffer.alloc(32, byte).toString('hex'), { mode: 0o600 });
    return f;
  };
  return { dir, store: path.join(dir, 'store'), img, right: key('right', 1), wrong: key('wrong', 2) };
}

t.test('the wrong key: RNODE_KEY_MISMATCH (exit 2) from check, stats, disks, prune; the right one still works', async (t) => {
  const { dir, store, img, right, wrong } = setup(t, 'wrong-key', 3);
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

// What a key-less or wrong-key writer, and an encrypted disk's retention, leave in the store: nothing that names the
// disk in clear. A refused replicate took the disk's lease before it read the claim (a key-less one under the plain
// disk id), and prune --keep with the key took a lease under the plain disk id too, on every retention run.
t.test('refused writers and an encrypted disk retention leave nothing naming the disk in the store', async (t) => {
  const { store, img, right, wrong } = setup(t, 'no-clear-name', 4);
  for (const [args, code] of [
    [['--disk', 'secret-vm-disk', '--encryption-key-file', right], 0],
    [['--disk', 'secret-vm-disk', '--encryption-key-file', right], 0],
    [['--disk', 'secret-vm-disk'], 2],
    [['--disk', 'secret-vm-disk', '--encryption-key-file', wrong], 2],
    [['--disk', 'open'], 0],
  ] as const) {
    const r = await runCli(['replicate', '--source', img, '--target', store, ...args]);
    t.equal(r.code, code, `replicate ${args.join(' ')}: ${r.stderr}`);
  }
  const before = listTree(store);
  const open = await runCli(['replicate', '--source', img, '--target', store, '--disk', 'open', '--encryption-key-file', right]);
  t.equal(open.code, 2, 'a key for a plain disk is refused');
  t.same(listTree(store), before, 'and it wrote nothing (no lease under the keyed name)');
  const prune = await runCli(['prune', '--store', store, '--disk', 'secret-vm-disk', '--keep', '1', '--encryption-key-file', right]);
  t.equal(prune.code, 0, prune.stderr);
  const named = listTree(store).filter((f) => f.includes('secret-vm') || fs.readFileSync(path.join(store, f)).includes('secret-vm'));
  t.same(named, [], 'no object name or content holds the disk id');
});

function listTree(dir: string): string[] {
  return (fs.readdirSync(dir, { recursive: true, withFileTypes: true }) as fs.Dirent[])
    .filter((e) => e.isFile())
    .map((e) => path.relative(dir, path.join(e.parentPath, e.name)))
    .sort();
}

// A disk an rnode wrote before disk claims has none: without its key it was "not found, check --disk", with no word of
// the encrypted disks the store holds, where it is.
t.test('an encrypted disk without a claim: the not-found error says the store holds disks found only with their key', async (t) => {
  const { dir, store, img, right: keyFile } = setup(t, 'no-claim', 5);
  t.equal((await runCli(['replicate', '--source', img, '--target', store, '--disk', 'old', '--encryption-key-file', keyFile])).code, 0);
  fs.rmSync(path.join(store, 'claims'), { recursive: true });
  for (const cmd of [['points'], ['recover', '--out', path.join(dir, 'o.img')]]) {
    const r = await runCli([cmd[0], '--store', store, '--disk', 'old', ...cmd.slice(1)]);
    t.equal(r.code, 1, r.stderr);
    t.match(
      r.stderr,
      /RNODE_DISK_NOT_FOUND: .*the store also holds encrypted disks that are named only with their key .*pass its key with --encryption-key-file/,
    );
  }
  const r = await runCli(['points', '--store', store, '--disk', 'old', '--encryption-key-file', keyFile]);
  t.equal(r.code, 0, r.stderr);
});
