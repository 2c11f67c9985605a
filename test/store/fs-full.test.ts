// A local store folder that fills up in the middle of a run. Bugs: a put's ENOSPC was RNODE_PATH_UNUSABLE, exit 2
// ("the command line is wrong, the same command fails again until it changes"), though the same command succeeded
// once space was freed (and the same store behind `rnode serve` gave the sender RNODE_STORE_IO, exit 1); a prune that
// failed so after deleting points did not say it had deleted them, nor that --max-unused 0 (no repack, which needs new
// space) frees what it can on a full store. Now: RNODE_STORE_IO, exit 1, "free space"; prune names what it deleted.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { runCli } from '../helpers/cli.js';
import { MiB, randomData, stopCodecWorkersAtEnd, tmpDir } from '../helpers/images.js';
import { mountTmpfs } from '../helpers/loop.js';

stopCodecWorkersAtEnd(t);

const skip = process.getuid?.() !== 0 && 'needs root to mount a small tmpfs';

/** Takes all but `leave` bytes of the filesystem's free space, in a file that freeSpace removes. */
function fill(mnt: string, leave: number): void {
  const avail = fs.statfsSync(mnt).bavail * fs.statfsSync(mnt).bsize;
  execFileSync('fallocate', ['-l', String(Math.max(avail - leave, 4096)), path.join(mnt, 'filler')]);
}

t.test(
  'replicate into a store folder that fills up: RNODE_STORE_IO exit 1, and the same command succeeds once space is freed',
  { skip },
  async (t) => {
    const dir = tmpDir(t, 'fs-full-replicate');
    const mnt = mountTmpfs(t, dir, '16m');
    const img = path.join(dir, 'disk.img');
    fs.writeFileSync(img, randomData(8 * MiB, 41)); // incompressible
    fill(mnt, 2 * MiB);
    const args = ['replicate', '--source', img, '--target', path.join(mnt, 'store'), '--disk', 'd', '--pack-size', '1MiB', '--cache-dir', 'none'];

    const full = await runCli(args);
    t.equal(full.code, 1, `exit 1: a later try may succeed (${full.stderr.trim()})`);
    t.match(full.stderr, /^rnode: RNODE_STORE_IO: store folder \S+ has no space left \(ENOSPC\); free space/);
    t.equal(full.stderr.trim().split('\n').length, 1, 'one line');

    fs.rmSync(path.join(mnt, 'filler'));
    const again = await runCli(args);
    t.equal(again.code, 0, `the same command, once there is space: ${again.stderr}`);
    const rec = await runCli(['recover', '--store', path.join(mnt, 'store'), '--disk', 'd', '--out', path.join(dir, 'out.img')]);
    t.equal(rec.code, 0, rec.stderr);
    t.ok(fs.readFileSync(path.join(dir, 'out.img')).equals(fs.readFileSync(img)), 'byte-exact');
  },
);

t.test('prune on a full store: exit 1, names the points it deleted and --max-unused 0', { skip }, async (t) => {
  const dir = tmpDir(t, 'fs-full-prune');
  const mnt = mountTmpfs(t, dir, '40m');
  const store = path.join(mnt, 'store');
  const img = path.join(dir, 'disk.img');
  const data = randomData(12 * MiB, 42);
  fs.writeFileSync(img, data);
  const rep = ['replicate', '--source', img, '--target', store, '--disk', 'd', '--pack-size', '4MiB', '--cache-dir', 'none'];
  t.equal((await runCli(rep)).code, 0, 'point 1');
  // Points 2 and 3 each replace 3 MiB of a 4 MiB pack of point 1: keeping point 3 leaves two packs mostly unused,
  // which prune repacks, writing new packs.
  for (const [at, seed] of [
    [1, 43],
    [5, 44],
  ]) {
    const fd = fs.openSync(img, 'r+');
    fs.writeSync(fd, randomData(3 * MiB, seed), 0, 3 * MiB, at * MiB);
    fs.closeSync(fd);
    t.equal((await runCli(rep)).code, 0, 'another point');
  }
  fill(mnt, 200_000);

  const pr = await runCli(['prune', '--store', store, '--disk', 'd', '--keep', '1', '--grace', '0s']);
  t.equal(pr.code, 1, `exit 1: a later try may succeed (${pr.stderr.trim()})`);
  t.match(pr.stderr, /^rnode: RNODE_STORE_IO: store folder \S+ has no space left \(ENOSPC\); free space/);
  t.match(pr.stderr, /this prune deleted points 1, 2 of disk d: they stay deleted/, 'says what it had deleted');
  t.match(pr.stderr, /add --max-unused 0 to free what needs no repack/, 'the way out on a full store');
  const points = await runCli(['points', '--store', store, '--disk', 'd', '--json']);
  t.same(
    (JSON.parse(points.stdout) as { points: { point: number }[] }).points.map((p) => p.point),
    [3],
    'points 1 and 2 are gone, as the error said',
  );
  t.equal((await runCli(['prune', '--store', store, '--grace', '0s', '--max-unused', '0'])).code, 0, 'with --max-unused 0: no new space needed');

  fs.rmSync(path.join(mnt, 'filler'));
  const again = await runCli(['prune', '--store', store, '--disk', 'd', '--keep', '1', '--grace', '0s']);
  t.equal(again.code, 0, `the same command, once there is space: ${again.stderr}`);
  t.equal((await runCli(['check', '--store', store, '--read-data'])).code, 0, 'check --read-data is clean');
});
