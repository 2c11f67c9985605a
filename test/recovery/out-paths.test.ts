// Regression: `recover --out` took whatever stat() said was not a directory or block device as a new file, written
// as a partial file beside the path and renamed over it. So /dev/null, a FIFO or a socket was replaced by a regular
// file (exit 0: on a shared machine the real /dev/null went); a symlink (a VM's disk path pointing at its image) was
// replaced by a file while the image kept its old bytes; a dangling link became a file; `--out -` wrote a file named
// "-"; and a missing folder was an OUTPUT_IO failure (exit 1) rather than a usage error. Now each is refused with
// RNODE_USAGE (exit 2) leaving the path as it was, and a symlink's target is what gets written.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import t, { type Test } from 'tap';
import { runCli, type CliResult } from '../helpers/cli.js';
import { randomData, tmpDir } from '../helpers/images.js';
import { fingerprintOf, snapshotFingerprints, startEnv } from '../vmware/harness.js';
import { THREE, fill } from '../vmware/vm-helpers.js';

const DISK = 'src.img';
const image = randomData(300_000, 3);

t.test('recover --out paths', async (t) => {
  const dir = tmpDir(t, 'out-paths');
  const src = path.join(dir, DISK);
  fs.writeFileSync(src, image);
  const store = path.join(dir, 'store');
  const rep = await runCli(['replicate', '--source', src, '--target', store]);
  t.equal(rep.code, 0, `replicate (stderr: ${rep.stderr})`);
  let n = 0;
  /** A fresh folder per case, so leftovers (partial files, a file named "-") are easy to see. */
  const caseDir = () => {
    const d = path.join(dir, `case-${n++}`);
    fs.mkdirSync(d);
    return d;
  };
  const recover = (out: string, cwd?: string) => runCli(['recover', '--store', store, '--disk', DISK, '--out', out], { cwd });

  /** Exit 2, RNODE_USAGE with a sentence (no stack), the words expected, and nothing new in the folders. */
  const refused = (t: Test, r: CliResult, words: RegExp, folders: Record<string, string[]>) => {
    t.equal(r.code, 2, `exit 2 (stdout: ${r.stdout} stderr: ${r.stderr})`);
    t.match(r.stderr, /RNODE_USAGE/);
    t.match(r.stderr, words);
    t.notMatch(r.stderr, /\n\s+at /, 'no stack trace');
    t.notMatch(r.stdout, /recovered/);
    for (const [d, names] of Object.entries(folders)) t.same(fs.readdirSync(d).sort(), names.sort(), `nothing created or removed in ${d}`);
  };

  t.test('a FIFO is refused and stays a FIFO', async (t) => {
    const d = caseDir();
    const fifo = path.join(d, 'pipe');
    execFileSync('mkfifo', [fifo]);
    refused(t, await recover(fifo), /is a FIFO.*give a file path or a block device/, { [d]: ['pipe'] });
    t.ok(fs.lstatSync(fifo).isFIFO(), 'still a FIFO');
  });

  t.test('a character device is refused and stays one', { skip: process.getuid?.() !== 0 && 'mknod needs root' }, async (t) => {
    const d = caseDir();
    const dev = path.join(d, 'null');
    execFileSync('mknod', [dev, 'c', '1', '3']); // our own /dev/null node: the real /dev is never touched
    const rdev = fs.lstatSync(dev).rdev;
    refused(t, await recover(dev), /is a character device.*give a file path or a block device/, { [d]: ['null'] });
    const st = fs.lstatSync(dev);
    t.ok(st.isCharacterDevice(), 'still a character device');
    t.equal(st.rdev, rdev, 'the same device');
  });

  t.test('a socket is refused and stays a socket', async (t) => {
    const d = caseDir();
    const sock = path.join(d, 'sock');
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(sock, resolve));
    t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
    refused(t, await recover(sock), /is a socket/, { [d]: ['sock'] });
    t.ok(fs.lstatSync(sock).isSocket(), 'still a socket');
  });

  t.test('a symlink to a file: the target is written, the link stays', async (t) => {
    // The link and its target in different folders: the partial file goes beside the target, not the link.
    const linkDir = caseDir();
    const imgDir = caseDir();
    const target = path.join(imgDir, 'vm-disk.img');
    fs.writeFileSync(target, Buffer.alloc(100_000, 0xab)); // the stale image
    const link = path.join(linkDir, 'disk.img');
    const rel = path.relative(linkDir, target);
    fs.symlinkSync(rel, link);
    const r = await recover(link);
    t.equal(r.code, 0, `exit 0 (stderr: ${r.stderr})`);
    t.ok(fs.lstatSync(link).isSymbolicLink(), 'the link is still a link');
    t.equal(fs.readlinkSync(link), rel, 'pointing where it did');
    t.ok(fs.readFileSync(target).equals(image), 'the target holds the recovered disk');
    t.same(fs.readdirSync(linkDir), ['disk.img'], 'nothing left beside the link');
    t.same(fs.readdirSync(imgDir), ['vm-disk.img'], 'no partial file left beside the target');
  });

  t.test('a symlink to a FIFO is refused', async (t) => {
    const d = caseDir();
    const fifo = path.join(d, 'pipe');
    execFileSync('mkfifo', [fifo]);
    const link = path.join(d, 'link');
    fs.symlinkSync(fifo, link);
    refused(t, await recover(link), /symlink to .*pipe.* is a FIFO/, { [d]: ['link', 'pipe'] });
    t.ok(fs.lstatSync(link).isSymbolicLink(), 'still a link');
    t.ok(fs.lstatSync(fifo).isFIFO(), 'its target still a FIFO');
  });

  t.test('a dangling symlink is refused, not replaced', async (t) => {
    const d = caseDir();
    const link = path.join(d, 'disk.img');
    const missing = path.join(d, 'gone', 'disk.img');
    fs.symlinkSync(missing, link);
    refused(t, await recover(link), /symlink to .*gone.*a path that does not exist/, { [d]: ['disk.img'] });
    t.ok(fs.lstatSync(link).isSymbolicLink(), 'still a link');
    t.equal(fs.readlinkSync(link), missing, 'pointing where it did');
  });

  t.test('--out - is refused: no file named "-"', async (t) => {
    const d = caseDir();
    refused(t, await recover('-', d), /stdout.*not supported/, { [d]: [] });
    // Named: a pipe's /dev/stdout was "a symlink to /proc/self/fd/1, a path that does not exist".
    for (const out of ['/dev/stdout', '/proc/self/fd/1', '/dev/stderr'])
      refused(t, await recover(out, d), /\((stdout|stderr)\) is not supported/, { [d]: [] });
  });

  t.test('a path under /proc or /sys is RNODE_PATH_UNUSABLE, exit 2, as every other unusable path (was OUTPUT_IO, exit 1)', async (t) => {
    for (const out of ['/proc/rnode-x.img', '/sys/rnode-x.img']) {
      const r = await recover(out);
      t.equal(r.code, 2, `${out}: exit 2 (${r.stderr})`);
      t.match(r.stderr, /RNODE_PATH_UNUSABLE: --out \S+ is on a kernel virtual filesystem/);
    }
  });

  t.test('a folder that does not exist is a usage error', async (t) => {
    const d = caseDir();
    refused(t, await recover(path.join(d, 'no-such-folder', 'disk.img')), /folder .*no-such-folder does not exist/, { [d]: [] });
  });

  // file:///abs/disk.img was taken for a relative path: "the folder file:///abs does not exist" (it did), and once the
  // user made that folder, exit 0 with the image under ./file:/abs/. http:// and the like went the same way.
  t.test('--out file:///path writes that path; any other URL kind is RNODE_BAD_OUTPUT', async (t) => {
    const d = caseDir();
    const target = path.join(d, 'as url.img');
    const r = await recover(`file://${encodeURI(target)}`, d);
    t.equal(r.code, 0, `exit 0 (${r.stderr})`);
    t.same(fs.readFileSync(target), image, 'the image is at the path the URL names, byte-exact');
    for (const out of ['http://host/disk.img', `file://host${target}`, `file://${d}/a%zz.img`]) {
      const bad = await recover(out, d);
      t.equal(bad.code, 2, `${out}: exit 2`);
      t.match(bad.stderr, /^rnode: RNODE_BAD_OUTPUT: --out .+? (is a URL \(http:\/\/\)|names a host|has a path that does not decode)/, out);
    }
    t.same(fs.readdirSync(d).sort(), ['as url.img'], 'nothing else was made: no ./file: or ./http: folders');
    // A URL pasted with its credentials: the refusal does not print them back.
    for (const out of [
      'https://backup:hunter2pw@images.example.com/a.img?sig=SIGNATUREabc',
      'ftp://u:hunter2pw@h/x.img',
      `file://u:hunter2pw@h${target}`,
    ]) {
      const bad = await recover(out, d);
      t.equal(bad.code, 2, `${out}: exit 2`);
      t.notMatch(bad.stderr, /hunter2pw|SIGNATUREabc/, 'no credentials in the message');
    }
  });
});

// recover --vm writes <out-dir>/<disk>.img through the same output: the same rules hold for each disk's path.
t.test('recover --vm --out-dir: a disk path that is a symlink or a FIFO', async (t) => {
  const env = await startEnv(t, [{ moref: 'vm-1', disks: THREE.slice(0, 2) }]);
  fill(env, 'vm-1', 1);
  const run = await env.run();
  const want = snapshotFingerprints(env, run.snapshot);
  const recover = (outDir: string) => runCli(['recover', '--store', env.store.location, '--vm', 'vm-1', '--out-dir', outDir]);

  const images = path.join(env.dir, 'images');
  fs.mkdirSync(images);
  const target = path.join(images, 'real-2000.img');
  fs.writeFileSync(target, 'stale');
  const linked = path.join(env.dir, 'linked');
  fs.mkdirSync(linked);
  const link = path.join(linked, 'vm-1-disk-2000.img');
  fs.symlinkSync(target, link);
  const ok = await recover(linked);
  t.equal(ok.code, 0, ok.stderr);
  t.ok(fs.lstatSync(link).isSymbolicLink(), 'the disk path is still a link');
  t.equal(fingerprintOf(target), want.get(2000), "the link's target holds disk 2000");
  t.same(fs.readdirSync(images), ['real-2000.img'], 'no partial file left beside the target');

  const piped = path.join(env.dir, 'piped');
  fs.mkdirSync(piped);
  const fifo = path.join(piped, 'vm-1-disk-2001.img');
  execFileSync('mkfifo', [fifo]);
  const r = await recover(piped);
  t.equal(r.code, 2, r.stderr);
  t.match(r.stderr, /RNODE_USAGE: --out .*vm-1-disk-2001\.img is a FIFO/);
  t.ok(fs.lstatSync(fifo).isFIFO(), 'the FIFO stays a FIFO');
  t.notOk(fs.existsSync(path.join(piped, 'vm-point.json')), 'no vm-point.json: the VM point was not recovered');
});
