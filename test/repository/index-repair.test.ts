// Lost and damaged index objects. An index object names where each chunk is; the chunks themselves, and a trailer
// naming them, are in the packs. A lost index object made prune take the packs of its chunks for unused ones and
// delete them two runs later, exit 0 each time: every point lost. A damaged one stopped every replicate of the
// repository, and nothing repaired it. Now prune deletes nothing (exit 1) while chunks the points use are in no index
// object, and check --read-data --repair indexes the intact blobs again from the trailers and deletes the damaged index.
import t from 'tap';
import type { Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { json, replicateArgs, runCli } from '../helpers/cli.js';
import { pruneStore } from '../../src/jobs/prune-v2.js';
import { gated } from '../helpers/gate.js';
import { fingerprint, fsStore, KiB, listFiles, randomData, snap, stopCodecWorkersAtEnd, tmpDir } from '../helpers/images.js';

stopCodecWorkersAtEnd(t);

const replicateWithoutCache = (img: string, storeDir: string, disk: string, extra: string[] = []) =>
  replicateArgs(img, storeDir, disk, ['--cache-dir', 'none', ...extra]);

async function replicate(t: Test, img: string, storeDir: string, disk: string, extra: string[] = []) {
  const r = await runCli(replicateWithoutCache(img, storeDir, disk, extra));
  t.equal(r.code, 0, `replicate ${disk}: ${r.stderr}`);
}

t.test('a lost index object: prune deletes nothing and says what to run; repair indexes the chunks again', async (t) => {
  const dir = tmpDir(t, 'index-lost');
  const storeDir = path.join(dir, 'store');
  const img = path.join(dir, 'd.img');
  fs.writeFileSync(img, randomData(1024 * KiB, 51));
  await replicate(t, img, storeDir, 'd');
  const want = fingerprint(img);
  const indexRoot = path.join(storeDir, 'r2', 'plain', 'index');
  const packRoot = path.join(storeDir, 'r2', 'plain', 'packs');
  for (const f of listFiles(indexRoot)) fs.rmSync(path.join(indexRoot, f));
  const packs = listFiles(packRoot);
  t.ok(packs.length > 0);

  for (let i = 0; i < 3; i++) {
    const p = await runCli(['prune', '--store', storeDir, '--grace', '0', '--json']);
    t.equal(p.code, 1, `prune ${i + 1} exits 1: the repository is damaged`);
    const d = json(p).domains[0];
    t.equal(d.missingChunks, 16, 'the 16 chunks of the point are in no index object');
    t.equal(d.packsDeleted, 0, 'nothing deleted');
    t.match(d.deferred, /check --read-data --repair/, 'it names the repair');
  }
  t.same(listFiles(packRoot), packs, 'every pack is still there');

  const repair = await runCli(['check', '--store', storeDir, '--read-data', '--repair', '--json']);
  t.equal(repair.code, 1, 'the check that repairs still reports what it found');
  t.match(json(repair).domains[0].repair, { blobsIndexed: 16, damagedIndexesDeleted: 0 });
  const check = await runCli(['check', '--store', storeDir, '--read-data']);
  t.equal(check.code, 0, `whole again: ${check.stderr}`);
  for (let i = 0; i < 3; i++) t.equal((await runCli(['prune', '--store', storeDir, '--grace', '0'])).code, 0, 'prune runs again');
  const out = path.join(dir, 'out.img');
  const r = await runCli(['recover', '--store', storeDir, '--disk', 'd', '--out', out]);
  t.equal(r.code, 0, r.stderr);
  t.same(fingerprint(out), want, 'the point restores byte-exact after three prunes');
});

// Encrypted, a damaged index object fails authentication (METADATA_FORGED): check did not count it as damaged, so
// --repair wrote its re-index and then failed on it, run after run, and every disk of the repository stayed blocked.
for (const encrypted of [false, true]) {
  t.test(
    `a damaged index object${encrypted ? ' (encrypted)' : ''}: replicate says how to repair it; repair deletes it and every disk replicates again`,
    async (t) => {
      const dir = tmpDir(t, 'index-damaged');
      const storeDir = path.join(dir, 'store');
      const keyFile = path.join(dir, 'key');
      fs.writeFileSync(keyFile, randomData(32, 58).toString('hex'), { mode: 0o600 });
      const key = encrypted ? ['--encryption-key-file', keyFile] : [];
      const a = path.join(dir, 'a.img');
      const b = path.join(dir, 'b.img');
      fs.writeFileSync(a, randomData(512 * KiB, 52));
      fs.writeFileSync(b, randomData(512 * KiB, 53));
      await replicate(t, a, storeDir, 'a', key);
      await replicate(t, b, storeDir, 'b', key);
      const r2 = path.join(storeDir, 'r2');
      const indexRoot = path.join(
        r2,
        fs.readdirSync(r2).find((d) => (d === 'plain') !== encrypted)!,
        'index',
      );
      const victim = path.join(indexRoot, listFiles(indexRoot)[0]);
      const bytes = fs.readFileSync(victim);
      bytes[60] ^= 0x5a;
      fs.writeFileSync(victim, bytes);

      const blocked = await runCli(['replicate', '--source', b, '--target', storeDir, '--disk', 'c', '--cache-dir', 'none', ...key]);
      t.equal(blocked.code, 1, 'a new disk is refused while the index is damaged');
      t.match(
        blocked.stderr,
        encrypted
          ? /RNODE_METADATA_FORGED: index .* fails authentication.*rnode check --read-data --repair/
          : /RNODE_MANIFEST_CORRUPT: index .* is corrupt .*rnode check --read-data --repair/,
      );

      const repair = await runCli(['check', '--store', storeDir, '--read-data', '--repair', '--json', ...key]);
      t.match(json(repair).domains.find((d: { domain: string }) => (d.domain === 'plain') !== encrypted).repair, {
        blobsIndexed: 8,
        damagedIndexesDeleted: 1,
      });
      t.notOk(fs.existsSync(victim), 'the damaged index object is gone');
      t.equal((await runCli(['check', '--store', storeDir, '--read-data', ...key])).code, 0, 'whole again');
      await replicate(t, b, storeDir, 'c', key);
      for (const [disk, img] of [
        ['a', a],
        ['b', b],
        ['c', b],
      ]) {
        const out = path.join(dir, `${disk}.out`);
        const r = await runCli(['recover', '--store', storeDir, '--disk', disk, '--out', out, ...key]);
        t.equal(r.code, 0, r.stderr);
        t.same(fingerprint(out), fingerprint(img), `disk ${disk} restores byte-exact`);
      }
    },
  );
}

// A first point of an encrypted disk, stopped after its checkpoint and never run again: its disk id was in no object a
// prune can read (the repository names disks by keyed hashes, and the checkpoint did not say), and every sweep of the
// repository deferred for good. The checkpoint now names its disk.
t.test('an encrypted disk whose first replicate stopped after a checkpoint does not hold up the sweep', async (t) => {
  const dir = tmpDir(t, 'enc-first-stopped');
  const storeDir = path.join(dir, 'store');
  const keyFile = path.join(dir, 'key');
  fs.writeFileSync(keyFile, randomData(32, 54).toString('hex'), { mode: 0o600 });
  const x = path.join(dir, 'x.img');
  const y = path.join(dir, 'y.img');
  fs.writeFileSync(x, randomData(512 * KiB, 55));
  fs.writeFileSync(y, randomData(512 * KiB, 56));
  const args = (img: string, disk: string) => replicateWithoutCache(img, storeDir, disk, ['--encryption-key-file', keyFile]);
  t.equal((await runCli(args(x, 'x'))).code, 0);
  fs.writeFileSync(x, randomData(512 * KiB, 57));
  t.equal((await runCli(args(x, 'x'))).code, 0);
  const stopped = await runCli(args(y, 'y'), { env: { RNODE_FAILPOINT: 'after-checkpoint' } });
  t.not(stopped.code, 0, 'the first replicate of y stopped after its checkpoint');
  const kept = await runCli(['prune', '--store', storeDir, '--disk', 'x', '--keep', '1', '--grace', '0', '--encryption-key-file', keyFile, '--json']);
  t.equal(kept.code, 0, kept.stderr);
  let deleted = 0;
  for (let i = 0; i < 3; i++) {
    const p = await runCli(['prune', '--store', storeDir, '--grace', '0', '--encryption-key-file', keyFile, '--json']);
    t.equal(p.code, 0, p.stderr);
    const d = json(p).domains.find((d: { domain: string }) => d.domain !== 'plain');
    t.equal(d.deferred, undefined, `sweep ${i + 1} is not deferred`);
    deleted += d.packsDeleted;
  }
  t.ok(deleted > 0, 'the packs only point 1 of x used are deleted');
  const out = path.join(dir, 'x.out');
  t.equal((await runCli(['recover', '--store', storeDir, '--disk', 'x', '--out', out, '--encryption-key-file', keyFile])).code, 0);
  t.same(fingerprint(out), fingerprint(x), 'the kept point restores byte-exact');
});

// Damaged prune marks stop every replicate and prune of the repository; check said ok and the error sent the operator
// to check. check now reports them, and the error names the way out.
t.test('damaged prune marks: check reports them, the error names prune --reset-marks, which clears them', async (t) => {
  const dir = tmpDir(t, 'marks-damaged');
  const storeDir = path.join(dir, 'store');
  const img = path.join(dir, 'm.img');
  fs.writeFileSync(img, randomData(256 * KiB, 58));
  await replicate(t, img, storeDir, 'm');
  t.equal((await runCli(['prune', '--store', storeDir])).code, 0);
  const marks = path.join(storeDir, 'r2', 'plain', 'prune', 'marks');
  const bytes = fs.readFileSync(marks);
  bytes[30] ^= 0x55;
  fs.writeFileSync(marks, bytes);
  const check = await runCli(['check', '--store', storeDir, '--json']);
  t.equal(check.code, 1, 'check finds the damaged marks');
  t.match(json(check).problems[0], { code: 'RNODE_MANIFEST_CORRUPT', message: /prune marks .* prune --reset-marks/ });
  const blocked = await runCli(['replicate', '--source', img, '--target', storeDir, '--disk', 'm', '--cache-dir', 'none']);
  t.equal(blocked.code, 1);
  t.match(blocked.stderr, /prune --reset-marks/, 'the replicate error names the way out');
  t.equal((await runCli(['prune', '--store', storeDir, '--reset-marks'])).code, 0);
  t.equal((await runCli(['check', '--store', storeDir])).code, 0, 'check is clean again');
  await replicate(t, img, storeDir, 'm');
});

// The same count of missing chunks also comes from a race, not from damage: a point committed while the sweep scans
// names chunks in index objects written after the sweep read the index. Looked up again at the end, they are found:
// the sweep goes on (deferring it, and exiting 1, would fail every prune that ran beside a replicate).
t.test('a point committed while prune scans: its chunks are found again, nothing is deferred', async (t) => {
  const dir = tmpDir(t, 'scan-race');
  const store = fsStore(path.join(dir, 'store'));
  const a = path.join(dir, 'a.img');
  const b = path.join(dir, 'b.img');
  fs.writeFileSync(a, randomData(256 * KiB, 59));
  fs.writeFileSync(b, randomData(256 * KiB, 60));
  await snap(store, a, 'a', { chunkSize: 64 * KiB });
  // The listing of disks comes after the index is read: hold it while disk b commits a point with chunks of its own.
  const g = gated(store, (prefix) => prefix === 'r2/plain/disks/', 'list');
  const running = pruneStore({ store: g.store, graceMs: 0, maxUnused: 0 });
  running.catch(() => undefined);
  await g.held;
  await snap(store, b, 'b', { chunkSize: 64 * KiB });
  g.release();
  const r = await running;
  const d = r.domains.find((x) => x.domain === 'plain')!;
  t.equal(d.missingChunks, 0, 'the chunks of b are found in the index as it is now');
  t.equal(d.deferred, undefined, 'the sweep is not deferred');
});
