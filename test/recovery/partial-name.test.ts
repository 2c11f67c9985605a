// Regression: recover opened its partial file (.<name>.rnode-partial beside --out) by name with O_CREAT|O_TRUNC. A
// symlink planted under that name (a shared folder) had the restored image written over the file it points at, and
// the symlink itself was then renamed to --out; a FIFO under that name hung the restore for good. Now whatever is
// under the name is removed first and the partial file is created anew (O_EXCL, O_NOFOLLOW), and locked while it is
// written: a second recover to the same --out is refused instead of writing into the first one's file.
import fs from 'node:fs';
import { execFileSync, spawnSync } from 'node:child_process';
import path from 'node:path';
import t from 'tap';
import { tryLockExclusive } from '../../src/native/index.js';
import { runCli } from '../helpers/cli.js';
import { randomData, tmpDir } from '../helpers/images.js';

const hasStrace = spawnSync('strace', ['-V']).status === 0;

// Not a multiple of 4 KiB: the tail goes through the buffered handle, reopened from the open file.
const image = randomData(300_000, 5);

t.test('recover --out with something already under the partial file name', async (t) => {
  const dir = tmpDir(t, 'partial-name');
  const src = path.join(dir, 'src.img');
  fs.writeFileSync(src, image);
  const store = path.join(dir, 'store');
  const rep = await runCli(['replicate', '--source', src, '--target', store, '--disk', 'd']);
  t.equal(rep.code, 0, `replicate (stderr: ${rep.stderr})`);
  const recover = (out: string) => runCli(['recover', '--store', store, '--disk', 'd', '--out', out], { timeoutMs: 30_000 });

  t.test('a symlink: its target is left alone, --out becomes a regular file with the image', async (t) => {
    const victim = path.join(dir, 'victim.txt');
    fs.writeFileSync(victim, 'not yours\n');
    const out = path.join(dir, 'a.img');
    fs.symlinkSync(victim, path.join(dir, '.a.img.rnode-partial'));
    const r = await recover(out);
    t.equal(r.code, 0, `recover (stderr: ${r.stderr})`);
    t.equal(fs.readFileSync(victim, 'utf8'), 'not yours\n', 'the symlink target is unchanged');
    t.ok(fs.lstatSync(out).isFile(), '--out is a regular file, not the planted symlink');
    t.ok(fs.readFileSync(out).equals(image), 'byte-exact');
    t.notOk(fs.existsSync(path.join(dir, '.a.img.rnode-partial')), 'no partial file left');
  });

  t.test('a FIFO: no hang, the restore completes', async (t) => {
    const out = path.join(dir, 'b.img');
    execFileSync('mkfifo', [path.join(dir, '.b.img.rnode-partial')]);
    const r = await recover(out);
    t.equal(r.code, 0, `recover (stderr: ${r.stderr}, signal ${r.signal})`);
    t.ok(fs.readFileSync(out).equals(image), 'byte-exact');
  });

  t.test("an earlier run's partial file (read-only, other bytes) is replaced", async (t) => {
    const out = path.join(dir, 'c.img');
    const partial = path.join(dir, '.c.img.rnode-partial');
    fs.writeFileSync(partial, randomData(500_000, 9));
    fs.chmodSync(partial, 0o444);
    const r = await recover(out);
    t.equal(r.code, 0, `recover (stderr: ${r.stderr})`);
    t.ok(fs.readFileSync(out).equals(image), 'byte-exact, nothing of the old partial file kept');
    t.equal(fs.statSync(out).mode & 0o777, 0o644, 'made with the usual mode');
  });

  t.test('a partial file locked by another recover: refused, left alone', async (t) => {
    const out = path.join(dir, 'd.img');
    const partial = path.join(dir, '.d.img.rnode-partial');
    fs.writeFileSync(partial, 'being written');
    const fd = fs.openSync(partial, 'r');
    t.teardown(() => fs.closeSync(fd));
    t.ok(tryLockExclusive(fd), 'the test holds the lock a running recover holds');
    const r = await recover(out);
    t.equal(r.code, 2, `exit 2 (stderr: ${r.stderr})`);
    t.match(r.stderr, /RNODE_USAGE.*is being written by another recover/);
    t.equal(fs.readFileSync(partial, 'utf8'), 'being written', "the other recover's file is untouched");
    t.notOk(fs.existsSync(out), 'no --out made');
  });

  t.test('a filesystem that cannot hold the disk (EFBIG): a clear message, no partial file left', async (t) => {
    const out = path.join(dir, 'e.img');
    // RLIMIT_FSIZE below the disk's size: the partial file's truncate to the disk size fails with EFBIG, as on a
    // filesystem whose largest file is smaller than the disk.
    const r = await runCli(['recover', '--store', store, '--disk', 'd', '--out', out], {
      wrap: ['bash', '-c', 'ulimit -f 100 && exec "$@"', 'bash'],
    });
    t.equal(r.code, 1, `exit 1 (stderr: ${r.stderr})`);
    t.match(r.stderr, /RNODE_OUTPUT_IO.*cannot hold a file of 300000 bytes.*nothing was written/);
    t.same(
      fs.readdirSync(dir).filter((f) => f.startsWith('.e.img') || f === 'e.img'),
      [],
      'neither --out nor its partial file is left',
    );
  });

  // Regression: the partial file was synced and renamed into place, but the folder was not synced after the rename:
  // after "recovered" (exit 0) a power loss could leave the old image, or none, under --out. strace shows the order.
  t.test('the rename into place is made durable: its folder is synced after it', { skip: !hasStrace && 'needs strace' }, async (t) => {
    const out = path.join(dir, 'f.img');
    const log = path.join(dir, 'strace.log');
    const r = await runCli(['recover', '--store', store, '--disk', 'd', '--out', out], {
      wrap: ['strace', '-f', '-y', '-qq', '-e', 'trace=rename,renameat,renameat2,fsync', '-o', log],
    });
    t.equal(r.code, 0, `exit 0 (stderr: ${r.stderr})`);
    t.same(fs.readFileSync(out), image, 'byte-exact');
    const calls = fs.readFileSync(log, 'utf8').split('\n');
    const renamed = calls.findIndex((l) => l.includes('rename') && l.includes('.f.img.rnode-partial') && / = 0$/.test(l));
    t.ok(renamed >= 0, 'the partial file was renamed into place');
    const folder = `<${fs.realpathSync(dir)}>`;
    t.ok(
      calls.slice(renamed + 1).some((l) => l.includes('fsync(') && l.includes(folder) && / = 0$/.test(l)),
      'then its folder was synced',
    );
  });
});
