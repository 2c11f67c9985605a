// recover's result and output handling: bytesWritten, chunksRestored and bytesFetched count what the restore
// did (with several chunks in flight, so concurrent updates must not be lost); a point restores over an
// existing file; an output in a missing directory is RNODE_USAGE (exit 2) and leaves nothing behind; unknown disks
// and points are RNODE_DISK_NOT_FOUND / RNODE_POINT_NOT_FOUND, a point that is not a number RNODE_USAGE.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { ErrorCodes } from '../../src/errors.js';
import { recover } from '../../src/jobs/restore.js';
import { PLAIN_DOMAIN } from '../../src/repository/names.js';
import { readPackTrailer } from '../../src/repository/pack.js';
import {
  KiB,
  MiB,
  expectRestore,
  fingerprint,
  fsStore,
  listFiles,
  randomData,
  restore,
  snap,
  stopCodecWorkersAtEnd,
  tmpDir,
  writeAt,
} from '../helpers/images.js';

stopCodecWorkersAtEnd(t);

const CHUNK = 64 * KiB;

t.test('recover counts the bytes it wrote, the chunks it restored and the bytes it fetched', async (t) => {
  const dir = tmpDir(t, 'restore');
  const img = path.join(dir, 'disk.img');
  const store = fsStore(path.join(dir, 'store'));
  const size = 2 * MiB + 777;
  fs.writeFileSync(img, randomData(size, 1)); // no zero 4 KiB block anywhere: every byte is written
  const p = await snap(store, img, 'd', { chunkSize: CHUNK });
  // v2: the chunk objects are the blobs in the plain repository's packs (each pack's trailer lists them)
  let storedBytes = 0;
  for (const f of listFiles(path.join(dir, 'store', 'r2', PLAIN_DOMAIN, 'packs'))) {
    const { entries } = await readPackTrailer(store, PLAIN_DOMAIN, path.basename(f));
    storedBytes += entries.reduce((n, e) => n + e.length, 0);
  }
  t.ok(storedBytes > 0, 'the point stored its chunks in v2 packs');
  for (const concurrency of [1, 8]) {
    const out = path.join(dir, `out-${concurrency}.img`);
    const r = await recover({ store, disk: 'd', out, concurrency });
    t.equal(r.point, 1);
    t.equal(r.diskSize, size);
    t.equal(r.chunkSize, CHUNK);
    t.equal(r.chunksRestored, p.chunksChanged, `concurrency ${concurrency}: chunksRestored`);
    t.equal(r.bytesFetched, storedBytes, `concurrency ${concurrency}: bytesFetched is the size of the chunk objects`);
    t.equal(r.bytesWritten, size, `concurrency ${concurrency}: bytesWritten is every byte of a disk without zero blocks`);
    t.equal(fingerprint(out).sha256, fingerprint(img).sha256);
  }
});

t.test('a point restores over an existing file, and a restore into a missing directory leaves nothing', async (t) => {
  const dir = tmpDir(t, 'restore');
  const img = path.join(dir, 'disk.img');
  const store = fsStore(path.join(dir, 'store'));
  fs.writeFileSync(img, randomData(MiB, 2));
  const fp1 = fingerprint(img);
  await snap(store, img, 'd', { chunkSize: CHUNK });
  writeAt(img, 5, Buffer.from('x'));
  await snap(store, img, 'd');

  const out = path.join(dir, 'out.img');
  fs.writeFileSync(out, randomData(3 * MiB, 9)); // larger than the disk, other bytes
  await restore(store, 'd', 1, out);
  t.equal(fingerprint(out).sha256, fp1.sha256, 'the existing file now holds point 1 exactly (and its size)');

  const missing = path.join(dir, 'no', 'such', 'dir', 'out.img');
  await t.rejects(restore(store, 'd', 1, missing), { code: ErrorCodes.USAGE, message: /the folder \S+ does not exist/ });
  t.notOk(fs.existsSync(path.join(dir, 'no')), 'nothing was created');

  await t.rejects(restore(store, 'nope', 1, path.join(dir, 'x.img')), { code: ErrorCodes.DISK_NOT_FOUND });
  await t.rejects(restore(store, 'd', 3, path.join(dir, 'x.img')), { code: ErrorCodes.POINT_NOT_FOUND });
  await t.rejects(restore(store, 'd', 'first', path.join(dir, 'x.img')), { code: ErrorCodes.USAGE }, 'a non-numeric point is a usage error');
  t.same(fs.readdirSync(dir).sort(), ['disk.img', 'out.img', 'store'], 'failed restores leave no files');
  await expectRestore(t, store, 'd', 'latest', fingerprint(img), dir);
});
