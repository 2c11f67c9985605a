// Resume: a replicate whose store fails every chunk put from the Nth on (after checkpoints were written, with
// checkpointRecords: 4) fails, leaves a pending checkpoint, and the next run continues it: resumed: true, it
// reads only the rest of the disk (counted at the source), its stats are those of the whole point (not
// counted twice), and the point restores byte-exact. Also for an incremental, across a prune that runs while a
// point is pending, with resume: false, and when the disk changed between the two runs (the point must still
// be the disk at one moment, not a mix of two).
import t from 'tap';
import type { Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { ErrorCodes } from '../../src/errors.js';
import { prune } from '../../src/recovery/prune.js';
import { listPointSeqs } from '../../src/recovery/points.js';
import { verify } from '../../src/recovery/verify.js';
import { FaultyStore, type ObjectStore } from '../../src/store/index.js';
import {
  KiB, MiB, chunkObjects, countingSource, expectRestore, fingerprint, fsStore, listFiles, randomData, restore, sha256File,
  snap, tmpDir, writeAt, stopCodecWorkersAtEnd,
} from '../helpers/images.js';

stopCodecWorkersAtEnd(t);

const CHUNK = 64 * KiB;
const SIZE = 3 * MiB; // 48 chunks
const COUNT = SIZE / CHUNK;

function failingChunkPuts(inner: ObjectStore, nth: number): FaultyStore {
  return new FaultyStore(inner).addFault('put', {
    match: (k) => k.includes('/chunks/'), nth, times: Infinity,
    error: { code: ErrorCodes.STORE_IO, retryable: false, message: 'injected: disk full' },
  });
}

function pendingOf(storeDir: string, disk: string): { file: string; ck: any }[] {
  const dir = path.join(storeDir, 'disks', disk, 'pending');
  return listFiles(dir).map((f) => ({ file: f, ck: JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8')) }));
}

function setup(t: Test) {
  const dir = tmpDir(t, 'resume');
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, randomData(SIZE, 42));
  const storeDir = path.join(dir, 'store');
  return { dir, img, storeDir, store: fsStore(storeDir) };
}

t.test('a full point cut by a permanent store failure resumes from its checkpoint', async (t) => {
  const { dir, img, storeDir, store } = setup(t);
  const fp = fingerprint(img);
  const faulty = failingChunkPuts(store, 30);
  const src1 = { counted: undefined as ReturnType<typeof countingSource> | undefined };
  await t.rejects(snap(faulty, img, 'd', { chunkSize: CHUNK, checkpointRecords: 4, concurrency: 2,
    wrapSource: (s) => (src1.counted = countingSource(s)) }), { code: ErrorCodes.STORE_IO }, 'the first run fails');
  faulty.assertAllFired();
  t.same(await listPointSeqs(store, 'd'), [], 'no point was committed');
  const pend = pendingOf(storeDir, 'd');
  t.equal(pend.length, 1, 'a pending checkpoint exists');
  const nextIndex: number = pend[0]?.ck.nextIndex ?? 0;
  t.ok(nextIndex >= 4 && nextIndex < COUNT, `the checkpoint covers part of the disk (nextIndex ${nextIndex})`);

  const src2 = { counted: undefined as ReturnType<typeof countingSource> | undefined };
  // The same command again (same flags): a first point has no earlier point to take its chunk size from.
  const r = await snap(store, img, 'd', { chunkSize: CHUNK, checkpointRecords: 4, wrapSource: (s) => (src2.counted = countingSource(s)) });
  t.equal(r.resumed, true, 'the second run resumed');
  t.equal(r.point, 1);
  t.equal(src2.counted!.bytes, SIZE - nextIndex * CHUNK, 'the second run read only what the checkpoint does not cover');
  t.ok(src2.counted!.bytes < SIZE, `fewer bytes than a full run (${src2.counted!.bytes} < ${SIZE})`);
  t.equal(r.chunksTotal, COUNT);
  t.equal(r.chunksChanged, COUNT, 'chunksChanged counts each chunk of the point once');
  t.ok(r.bytesRead <= SIZE, `bytesRead ${r.bytesRead} is not more than the disk (nothing counted twice)`);
  t.same(pendingOf(storeDir, 'd'), [], 'the checkpoint is gone after the commit');
  await expectRestore(t, store, 'd', 1, fp, dir);
  t.equal((await verify({ store, disk: 'd', point: 'all' })).ok, true, 'verify ok');
});

t.test('an incremental point cut by a store failure resumes and restores byte-exact', async (t) => {
  const { dir, img, storeDir, store } = setup(t);
  const fp1 = fingerprint(img);
  await snap(store, img, 'd', { chunkSize: CHUNK });
  const changed = [1, 4, 6, 9, 13, 17, 20, 22, 25, 28, 31, 33, 36, 40, 44, 47];
  for (const i of changed) writeAt(img, i * CHUNK + 7, randomData(50, i));
  const fp2 = fingerprint(img);
  const faulty = failingChunkPuts(store, 10);
  await t.rejects(snap(faulty, img, 'd', { checkpointRecords: 4, concurrency: 2 }), { code: ErrorCodes.STORE_IO });
  t.equal(pendingOf(storeDir, 'd').length, 1, 'a pending checkpoint exists');
  const nextIndex: number = pendingOf(storeDir, 'd')[0]?.ck.nextIndex ?? 0;
  const counted = { c: undefined as ReturnType<typeof countingSource> | undefined };
  const r = await snap(store, img, 'd', { checkpointRecords: 4, wrapSource: (s) => (counted.c = countingSource(s)) });
  t.equal(r.resumed, true);
  t.equal(r.point, 2);
  t.equal(r.parent, 1);
  t.equal(counted.c!.bytes, SIZE - nextIndex * CHUNK, 'only the rest of the disk is read');
  t.equal(r.chunksChanged, changed.length, 'chunksChanged counts each changed chunk once');
  await expectRestore(t, store, 'd', 1, fp1, dir);
  await expectRestore(t, store, 'd', 2, fp2, dir);
});

t.test('prune while a point is pending keeps its chunks and checkpoint; the resume still restores', async (t) => {
  const { dir, img, storeDir, store } = setup(t);
  await snap(store, img, 'd', { chunkSize: CHUNK });
  writeAt(img, 0, randomData(CHUNK, 2));
  await snap(store, img, 'd');
  for (let i = 0; i < COUNT; i += 2) writeAt(img, i * CHUNK, randomData(100, 1000 + i));
  const fp3 = fingerprint(img);
  await t.rejects(snap(failingChunkPuts(store, 12), img, 'd', { checkpointRecords: 4, concurrency: 2 }), { code: ErrorCodes.STORE_IO });
  const pendingChunks = chunkObjects(storeDir, 'd').filter((c) => c.startsWith('3/'));
  t.ok(pendingChunks.length >= 4, `the pending point wrote chunks (${pendingChunks.length})`);
  const before = pendingOf(storeDir, 'd');
  t.equal(before.length, 1);

  const pr = await prune({ store, disk: 'd', keep: 1 });
  t.same(pr.kept, [2]);
  t.same(pendingOf(storeDir, 'd').map((p) => p.file), before.map((p) => p.file), 'the checkpoint of the pending point survives prune');
  t.same(chunkObjects(storeDir, 'd').filter((c) => c.startsWith('3/')), pendingChunks, 'its chunks survive prune');

  const r = await snap(store, img, 'd', { checkpointRecords: 4 });
  t.equal(r.resumed, true, 'the pending point resumes after prune');
  t.equal(r.point, 3);
  await expectRestore(t, store, 'd', 3, fp3, dir);
  t.equal((await verify({ store, disk: 'd', point: 'all' })).ok, true);
});

t.test('resume: false starts the pending point over', async (t) => {
  const { dir, img, storeDir, store } = setup(t);
  const fp = fingerprint(img);
  await t.rejects(snap(failingChunkPuts(store, 20), img, 'd', { chunkSize: CHUNK, checkpointRecords: 4, concurrency: 2 }), { code: ErrorCodes.STORE_IO });
  t.equal(pendingOf(storeDir, 'd').length, 1);
  const counted = { c: undefined as ReturnType<typeof countingSource> | undefined };
  const r = await snap(store, img, 'd', { chunkSize: CHUNK, resume: false, wrapSource: (s) => (counted.c = countingSource(s)) });
  t.equal(r.resumed, false);
  t.equal(counted.c!.bytes, SIZE, 'the whole disk is read again');
  t.equal(r.chunksChanged, COUNT);
  await expectRestore(t, store, 'd', 1, fp, dir);
});

t.test('a disk changed between the cut run and the resume: the point is the disk at one moment, not a mix', async (t) => {
  const { dir, img, store } = setup(t);
  const before = fingerprint(img);
  await t.rejects(snap(failingChunkPuts(store, 30), img, 'd', { chunkSize: CHUNK, checkpointRecords: 4, concurrency: 2 }), { code: ErrorCodes.STORE_IO });
  // The disk changes at both ends: the start is inside the checkpoint, the end is not.
  writeAt(img, 0, randomData(4096, 7));
  writeAt(img, SIZE - 4096, randomData(4096, 8));
  const after = fingerprint(img);
  const r = await snap(store, img, 'd', { chunkSize: CHUNK, checkpointRecords: 4 });
  t.equal(r.resumed, true, 'the second run resumed the checkpoint');
  const out = path.join(dir, 'r.img');
  await restore(store, 'd', 'latest', out);
  const got = sha256File(out);
  t.ok(got === after.sha256 || got === before.sha256,
    'the restored point equals the disk as it was before or after the change, not a mix of both ' +
    `(got ${got.slice(0, 12)}, before ${before.sha256.slice(0, 12)}, after ${after.sha256.slice(0, 12)})`);
});
