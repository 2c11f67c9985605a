// Issue 13: a full point read each chunk on a libuv pool thread and tested it for zeros on the main thread before its
// trip to a codec worker: two thread wake-ups and a 1 MiB scan on the thread that sequences the pipeline, per chunk.
// A raw source now lends its fd and the codec worker reads the chunk itself in the same trip. These tests fail where a
// full point's chunks go through read().
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { EncryptionKey } from '../../src/crypto/keys.js';
import { ErrorCodes } from '../../src/errors.js';
import { replicate } from '../../src/jobs/replicate.js';
import { listPointSeqs } from '../../src/repository/points.js';
import { openSource } from '../../src/source/index.js';
import { delegatingSource, type BlockSource } from '../../src/source/types.js';
import {
  KiB,
  MiB,
  countingSource,
  expectRestore,
  fingerprint,
  fsStore,
  mixedChunkImage,
  randomData,
  snap,
  stopCodecWorkersAtEnd,
  tmpDir,
} from '../helpers/images.js';

stopCodecWorkersAtEnd(t);

const CHUNK = 64 * KiB;

for (const encrypted of [false, true]) {
  t.test(`${encrypted ? 'encrypted' : 'plain'} full point: the codec workers read every chunk, read() sees none`, async (t) => {
    const dir = tmpDir(t, 'worker-reads');
    const img = path.join(dir, 'disk.img');
    const store = fsStore(path.join(dir, 'store'));
    const encryption = encrypted ? EncryptionKey.fromBytes(crypto.createHash('sha256').update('worker-reads').digest()) : undefined;
    mixedChunkImage(img, CHUNK);
    const fp = fingerprint(img);
    const counted = { c: undefined as ReturnType<typeof countingSource> | undefined };
    const p = await snap(store, img, 'd', { chunkSize: CHUNK, encryption, wrapSource: (s) => (counted.c = countingSource(s)) });
    t.equal(p.full, true);
    t.equal(counted.c!.reads, 0, 'no chunk went through read()');
    t.equal(counted.c!.elsewhere, p.bytesRead, 'the workers read what the point read, and it is counted once');
    t.equal(p.bytesRead, 108 * CHUNK + 1234, 'every allocated chunk was read, the hole was not');
    t.equal(p.chunksZero, 40, 'the written zeros (found zero on the workers, not stored) and the hole');
    t.equal(p.chunksChanged, 89, 'random, text and the short last chunk are stored');
    t.ok(p.stages && p.stages.read > 0 && p.stages.compress > 0, "the workers' reading shows in the stage times");
    await expectRestore(t, store, 'd', 1, fp, dir, 'the full point', { encryption });
  });
}

t.test('a wrapper that replaces read() sees every read: the fd is lent past it only if it says so', async (t) => {
  const dir = tmpDir(t, 'worker-reads');
  const img = path.join(dir, 'disk.img');
  const store = fsStore(path.join(dir, 'store'));
  fs.writeFileSync(img, randomData(16 * CHUNK, 4));
  const fp = fingerprint(img);
  let reads = 0;
  const watching = (s: BlockSource) =>
    delegatingSource(s, {
      read: (o: number, b: Buffer, l: number) => {
        reads++;
        return s.read(o, b, l);
      },
    });
  const raw = await openSource(img);
  t.teardown(() => raw.close());
  t.equal(watching(raw).lendFd?.(), undefined, 'such a wrapper lends nothing');
  await snap(store, img, 'd', { chunkSize: CHUNK, wrapSource: watching });
  t.equal(reads, 16, 'all 16 chunks went through its read()');
  await expectRestore(t, store, 'd', 1, fp, dir);
});

t.test('a direct (O_DIRECT) source lends nothing: its full point is read through read()', async (t) => {
  const dir = tmpDir(t, 'worker-reads');
  const img = path.join(dir, 'disk.img');
  const store = fsStore(path.join(dir, 'store'));
  fs.writeFileSync(img, randomData(16 * CHUNK, 5));
  const fp = fingerprint(img);
  const source = countingSource(await openSource(img, { direct: true }));
  try {
    await replicate({ store, source, disk: 'd', chunkSize: CHUNK });
  } finally {
    await source.close();
  }
  t.equal(source.reads, 16);
  t.equal(source.elsewhere, 0);
  await expectRestore(t, store, 'd', 1, fp, dir);
});

t.test('a source cut short while the workers read a full point fails with SOURCE_CHANGED, nothing committed', async (t) => {
  const dir = tmpDir(t, 'worker-reads');
  const img = path.join(dir, 'disk.img');
  const store = fsStore(path.join(dir, 'store'));
  fs.writeFileSync(img, randomData(64 * MiB, 6));
  const source = await openSource(img);
  let cut = false;
  try {
    await t.rejects(
      replicate({
        store,
        source,
        disk: 'd',
        // At the first report a few chunks are read: most of the disk is gone before the workers get to it.
        onProgress: () => {
          if (!cut) fs.truncateSync(img, 20 * MiB);
          cut = true;
        },
      }),
      { code: ErrorCodes.SOURCE_CHANGED, message: /ended at \d+, expected 67108864 bytes/ },
    );
  } finally {
    await source.close();
  }
  t.ok(cut, 'the source was cut during the run');
  t.same(await listPointSeqs(store, 'd', undefined), [], 'nothing is committed');
});

t.test('a read that fails on a worker fails a full point with SOURCE_IO, not as a bug', async (t) => {
  const dir = tmpDir(t, 'worker-reads');
  const img = path.join(dir, 'disk.img');
  const store = fsStore(path.join(dir, 'store'));
  fs.writeFileSync(img, randomData(4 * MiB, 7));
  // A directory's fd: every pread on it fails (EISDIR), as a dying device's would (EIO).
  const bad = fs.openSync(dir, 'r');
  t.teardown(() => fs.closeSync(bad));
  await t.rejects(snap(store, img, 'd', { wrapSource: (s) => delegatingSource(s, { lendFd: () => ({ fd: bad, release: () => {} }) }) }), {
    code: ErrorCodes.SOURCE_IO,
    message: /reading source .* on a codec worker failed: EISDIR/,
  });
  t.same(await listPointSeqs(store, 'd', undefined), [], 'nothing committed');
});
