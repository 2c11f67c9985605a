// A crash between chunk writes and the manifest commit: the CLI runs as a child with RNODE_FAILPOINT=before-commit
// (it SIGKILLs itself right before writing the manifest). No new point is visible (`points`, the points/ dir),
// verify is ok, the older point still restores, and the next run succeeds and restores byte-exact. Also the
// first point of a disk crashing, and RNODE_FAILPOINT=after-commit (the point is visible, the next run is fine).
import t from 'tap';
import type { Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { listPointSeqs } from '../../src/repository/points.js';
import { verify } from '../../src/jobs/verify.js';
import {
  KiB,
  MiB,
  packFiles,
  v2PointFiles,
  expectRestore,
  fingerprint,
  fsStore,
  listFiles,
  randomData,
  sha256File,
  stopCodecWorkersAtEnd,
  textData,
  tmpDir,
  writeAt,
} from '../helpers/images.js';
import { json, replicateArgs, runCli } from '../helpers/cli.js';

stopCodecWorkersAtEnd(t);

const SIZE = 2 * MiB + 333;

function setup(t: Test) {
  const dir = tmpDir(t, 'crash');
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, Buffer.concat([randomData(MiB, 1), textData(SIZE - MiB, 1)]));
  return { dir, img, storeDir: path.join(dir, 'store') };
}

const replicateD = (img: string, storeDir: string) => replicateArgs(img, storeDir, 'd', ['--json']);

/**
 * The run after a crash. The crashed writer's lease is still live in the store (SIGKILL skipped its release);
 * the issue wants this run to succeed. When it fails with LEASE_HELD, that is recorded as a failure, and the
 * lease is aged as if its TTL had passed so the rest of the test can still check the data path.
 */
async function nextRun(t: Test, img: string, storeDir: string) {
  let r = await runCli(replicateD(img, storeDir));
  t.equal(r.code, 0, `the next run right after the crash succeeds: ${r.stderr.trim()}`);
  if (r.code !== 0 && /RNODE_LEASE_HELD/.test(r.stderr)) {
    const file = path.join(storeDir, 'disks', 'd', 'lease.json');
    const lease = JSON.parse(fs.readFileSync(file, 'utf8'));
    fs.writeFileSync(file, JSON.stringify({ ...lease, expiresAt: new Date(0).toISOString() }));
    r = await runCli(replicateD(img, storeDir));
    t.equal(r.code, 0, `the run once the dead writer's lease expired succeeds: ${r.stderr.trim()}`);
  }
  return r;
}

async function recoverCli(storeDir: string, point: string, out: string) {
  const r = await runCli(['recover', '--store', storeDir, '--disk', 'd', '--point', point, '--out', out]);
  return r;
}

t.test('crash before commit of an incremental: no half point; verify ok; the next run succeeds', async (t) => {
  const { dir, img, storeDir } = setup(t);
  const first = await runCli(replicateD(img, storeDir));
  t.equal(first.code, 0, `first point: ${first.stderr}`);
  const fp1 = fingerprint(img);
  const packsBefore = packFiles(storeDir).length;

  writeAt(img, 100 * KiB, randomData(200 * KiB, 2));
  const fp2 = fingerprint(img);
  const crashed = await runCli(replicateD(img, storeDir), { env: { RNODE_FAILPOINT: 'before-commit' } });
  t.equal(crashed.signal, 'SIGKILL', 'the child killed itself at the failpoint');
  t.equal(crashed.code, null);
  t.ok(packFiles(storeDir).length > packsBefore, 'packs of point 2 were written before the crash');
  t.same(v2PointFiles(storeDir, 'd'), ['0000000001'], 'no manifest of point 2');
  t.same(await listPointSeqs(fsStore(storeDir), 'd'), [1], 'the library lists point 1 only');

  const pts = await runCli(['points', '--store', storeDir, '--disk', 'd', '--json']);
  t.equal(pts.code, 0, `points exits 0 after the crash: ${pts.stderr.trim()}`);
  if (pts.code === 0)
    t.same(
      json(pts).points.map((p: any) => p.point),
      [1],
      '`points` shows only point 1',
    );

  const v = await runCli(['verify', '--store', storeDir, '--disk', 'd', '--point', 'all']);
  t.equal(v.code, 0, `verify --point all is ok after the crash: ${v.stderr.trim()}`);

  const out1 = path.join(dir, 'r1.img');
  const rec1 = await recoverCli(storeDir, 'latest', out1);
  t.equal(rec1.code, 0, 'latest (point 1) restores after the crash');
  t.equal(sha256File(out1), fp1.sha256, 'latest after the crash is point 1, byte-exact');

  const next = await nextRun(t, img, storeDir);
  const r = json(next);
  t.equal(r.point, 2, 'it commits point 2');
  t.equal(r.parent, 1);

  // The CLI's recover and verify are covered above and in cli.test.ts: check the outcome in-process.
  const store = fsStore(storeDir);
  await expectRestore(t, store, 'd', 2, fp2, dir);
  await expectRestore(t, store, 'd', 1, fp1, dir, 'point 1 (still)');
  t.equal((await verify({ store, disk: 'd', point: 'all' })).ok, true, 'verify all ok');
  t.same(listFiles(path.join(storeDir, 'r2', 'plain', 'disks', 'd', 'pending')), [], 'no checkpoint left once the point is committed');
});

t.test('crash before commit of the first point: no point at all; the next run makes point 1', async (t) => {
  const { dir, img, storeDir } = setup(t);
  const fp = fingerprint(img);
  const crashed = await runCli(replicateD(img, storeDir), { env: { RNODE_FAILPOINT: 'before-commit' } });
  t.equal(crashed.signal, 'SIGKILL');
  t.ok(packFiles(storeDir).length > 0, 'packs were written before the crash');
  t.same(v2PointFiles(storeDir, 'd'), [], 'no manifest');

  const pts = await runCli(['points', '--store', storeDir, '--disk', 'd', '--json']);
  t.equal(pts.code, 0, `points exits 0: ${pts.stderr.trim()}`);
  if (pts.code === 0) t.same(json(pts).points, [], '`points` shows no point');
  const out0 = path.join(dir, 'none.img');
  const rec0 = await recoverCli(storeDir, 'latest', out0);
  t.equal(rec0.code, 1, 'nothing to recover');
  t.match(rec0.stderr, 'RNODE_DISK_NOT_FOUND');
  t.notOk(fs.existsSync(out0));

  const next = await nextRun(t, img, storeDir);
  t.equal(json(next).point, 1);
  const store = fsStore(storeDir);
  await expectRestore(t, store, 'd', 'latest', fp, dir, 'point 1');
  t.equal((await verify({ store, disk: 'd', point: 'all' })).ok, true, 'verify all ok');
});

t.test('crash right after commit: the point is visible and whole; the next run is fine', async (t) => {
  const { dir, img, storeDir } = setup(t);
  const fp1 = fingerprint(img);
  const crashed = await runCli(replicateD(img, storeDir), { env: { RNODE_FAILPOINT: 'after-commit' } });
  t.equal(crashed.signal, 'SIGKILL');
  t.same(await listPointSeqs(fsStore(storeDir), 'd'), [1], 'point 1 is committed');
  const pts = await runCli(['points', '--store', storeDir, '--disk', 'd', '--json']);
  t.equal(pts.code, 0, `points exits 0: ${pts.stderr.trim()}`);
  if (pts.code === 0)
    t.same(
      json(pts).points.map((p: any) => p.point),
      [1],
      '`points` shows point 1',
    );
  t.equal((await runCli(['verify', '--store', storeDir, '--disk', 'd', '--point', 'all'])).code, 0, 'verify ok');
  const store = fsStore(storeDir);
  await expectRestore(t, store, 'd', 1, fp1, dir);

  writeAt(img, 2 * MiB - 5000, randomData(5000, 3)); // inside chunk 31
  const fp2 = fingerprint(img);
  const next = await nextRun(t, img, storeDir);
  const r = json(next);
  t.equal(r.point, 2);
  t.equal(r.full, false);
  t.equal(r.chunksChanged, 1);
  await expectRestore(t, store, 'd', 2, fp2, dir);
  await expectRestore(t, store, 'd', 1, fp1, dir, 'point 1 (still)');
  t.equal((await verify({ store, disk: 'd', point: 'all' })).ok, true, 'verify all ok');
  t.same(await listPointSeqs(store, 'd'), [1, 2]);
});
