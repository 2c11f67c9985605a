// Issue 13: an incremental from a raw source reads the whole disk to find what changed, and chunk by chunk through the
// pipeline (a read and a worker trip each, settled on the main thread) it ran at 0.16x of `xxhsum -H2` over the same
// image. The codec workers now read runs of chunks through the source's lent fd and compare them with the parent point
// there; only the changed chunks come back through read(). These tests fail where every chunk goes through read().
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { EncryptionKey } from '../../src/crypto/keys.js';
import { ErrorCodes } from '../../src/errors.js';
import { openSource } from '../../src/source/index.js';
import { delegatingSource } from '../../src/source/types.js';
import { replicate } from '../../src/jobs/replicate.js';
import { listPointSeqs } from '../../src/repository/points.js';
import {
  changeFiveChunks,
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
  writeAt,
} from '../helpers/images.js';

stopCodecWorkersAtEnd(t);

const CHUNK = 64 * KiB;

for (const encrypted of [false, true]) {
  t.test(
    `${encrypted ? 'encrypted' : 'plain'} incremental: the workers compare the unchanged chunks, read() sees only the changed ones`,
    async (t) => {
      const dir = tmpDir(t, 'prescan');
      const img = path.join(dir, 'disk.img');
      const store = fsStore(path.join(dir, 'store'));
      const encryption = encrypted ? EncryptionKey.fromBytes(crypto.createHash('sha256').update('prescan-test').digest()) : undefined;
      const size = mixedChunkImage(img, CHUNK);
      const p1 = await snap(store, img, 'd', { chunkSize: CHUNK, encryption });
      const fp1 = fingerprint(img);

      // One changed byte, text turned to zeros, zeros and a hole turned to data, the short last chunk.
      changeFiveChunks(img, CHUNK, size);
      const fp2 = fingerprint(img);

      const counted = { c: undefined as ReturnType<typeof countingSource> | undefined };
      const p2 = await snap(store, img, 'd', { encryption, wrapSource: (s) => (counted.c = countingSource(s)) });
      t.equal(p2.full, false, 'an incremental');
      t.equal(p2.chunksChanged, 5, 'exactly the five chunks written are recorded');
      t.equal(counted.c!.reads, 5, 'only they were read through read()');
      t.ok(counted.c!.elsewhere > 0, `the workers read the unchanged chunks (${counted.c!.elsewhere} bytes)`);
      t.equal(counted.c!.bytes, p2.bytesRead, 'each byte read counts once (a changed chunk when the pipeline reads it again)');
      t.ok(p2.bytesRead <= p1.bytesRead + 2 * CHUNK, 'the allocated chunks, as the full point read them and the two newly written');
      t.ok(p2.stages && p2.stages.read > 0 && p2.stages.hash > 0, "the workers' reading and hashing show in the stage times");
      await expectRestore(t, store, 'd', 2, fp2, dir, 'the incremental', { encryption });
      await expectRestore(t, store, 'd', 1, fp1, dir, 'the full point before it', { encryption });

      // Nothing changed: nothing recorded, nothing read through read().
      const p3 = await snap(store, img, 'd', { encryption, wrapSource: (s) => (counted.c = countingSource(s)) });
      t.equal(p3.chunksChanged, 0);
      t.equal(counted.c!.reads, 0, 'an unchanged disk is compared on the workers only');
      t.equal(counted.c!.elsewhere, p3.bytesRead);
      await expectRestore(t, store, 'd', 3, fp2, dir, 'the unchanged point', { encryption });
    },
  );
}

t.test('a scan that finds most chunks changed goes back to the pipeline, and every point stays exact', async (t) => {
  const dir = tmpDir(t, 'prescan');
  const img = path.join(dir, 'disk.img');
  const store = fsStore(path.join(dir, 'store'));
  const size = 32 * MiB;
  const chunks = size / CHUNK;
  fs.writeFileSync(img, randomData(size, 7));
  await snap(store, img, 'd', { chunkSize: CHUNK });
  // Every chunk but each 8th rewritten: 87.5% changed, unchanged ones all over the disk.
  for (let i = 0; i < chunks; i++) if (i % 8 !== 0) writeAt(img, i * CHUNK, randomData(CHUNK, 100 + i));
  const fp = fingerprint(img);
  const counted = { c: undefined as ReturnType<typeof countingSource> | undefined };
  const p2 = await snap(store, img, 'd', { wrapSource: (s) => (counted.c = countingSource(s)) });
  t.equal(p2.chunksChanged, (chunks * 7) / 8, 'the rewritten chunks are recorded');
  t.ok(counted.c!.elsewhere > 0, 'the first runs compared on the workers');
  t.ok(
    counted.c!.reads > p2.chunksChanged,
    `then it gave up: unchanged chunks too went through the pipeline (${counted.c!.reads} reads for ${p2.chunksChanged} changed)`,
  );
  t.equal(counted.c!.bytes, size, 'each byte read counts once');
  await expectRestore(t, store, 'd', 2, fp, dir);
});

t.test('a source cut short while the workers read it fails the run with SOURCE_CHANGED, nothing committed', async (t) => {
  const dir = tmpDir(t, 'prescan');
  const img = path.join(dir, 'disk.img');
  const store = fsStore(path.join(dir, 'store'));
  fs.writeFileSync(img, randomData(64 * MiB, 9));
  await snap(store, img, 'd', { chunkSize: CHUNK });
  const source = await openSource(img);
  let cut = false;
  try {
    await t.rejects(
      replicate({
        store,
        source,
        disk: 'd',
        // At the first report the workers have read at most the runs first sent (4 of 4 MiB): the rest is gone.
        onProgress: () => {
          if (!cut) fs.truncateSync(img, 20 * MiB);
          cut = true;
        },
      }),
      { code: ErrorCodes.SOURCE_CHANGED },
    );
  } finally {
    await source.close();
  }
  t.ok(cut, 'the source was cut during the run');
  t.same(await listPointSeqs(store, 'd', undefined), [1], 'only the first point is committed');
});

t.test('a read that fails on a worker fails the run with SOURCE_IO, not as a bug', async (t) => {
  const dir = tmpDir(t, 'prescan');
  const img = path.join(dir, 'disk.img');
  const store = fsStore(path.join(dir, 'store'));
  fs.writeFileSync(img, randomData(4 * MiB, 10));
  await snap(store, img, 'd', { chunkSize: CHUNK });
  // A directory's fd: every pread on it fails (EISDIR), as a dying device's would (EIO).
  const bad = fs.openSync(dir, 'r');
  t.teardown(() => fs.closeSync(bad));
  await t.rejects(snap(store, img, 'd', { wrapSource: (s) => delegatingSource(s, { lendFd: () => ({ fd: bad, release: () => {} }) }) }), {
    code: ErrorCodes.SOURCE_IO,
    message: /reading source .* on a codec worker failed: EISDIR/,
  });
  t.same(await listPointSeqs(store, 'd', undefined), [1], 'nothing committed');
});
