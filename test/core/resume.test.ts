// Resume: a replicate whose store fails every chunk put from the Nth on (after checkpoints were written, with
// checkpointRecords: 4) fails, leaves a pending checkpoint, and the next run continues it: resumed: true, it
// reads only the rest of the disk (counted at the source), and the point restores byte-exact. Also: an
// incremental, a prune while a point is pending, resume: false, a disk that changed between the two runs (the
// point must be the disk at one moment, not a mix), checkpoints kept when a later chunk fails, stats counted
// once across a resume, back-pressure while one chunk's write stalls, and a cut while an early chunk comes late.
// Repository v2: chunks are stored in packs; with packs of one chunk (packSize = chunk size) a pack put is a chunk
// put, so the faults below count and stall pack puts where they counted chunk objects before.
import t from 'tap';
import type { Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { ErrorCodes } from '../../src/errors.js';
import { prune } from '../../src/jobs/prune-v2.js';
import { listPointSeqs } from '../../src/repository/points.js';
import { pipelineDepths } from '../../src/jobs/replicate/budget.js';
import { verify } from '../../src/jobs/verify.js';
import { type ObjectStore } from '../../src/store/index.js';
import { FaultyStore } from '../../src/testing.js';
import { delegatingSource, type BlockSource } from '../../src/source/types.js';
import { Domain } from '../../src/repository/domain.js';
import { decodePack } from '../../src/repository/pack.js';
import { decodePendingV2 } from '../../src/repository/point-format.js';
import {
  KiB,
  MiB,
  packFiles,
  countingSource,
  expectRestore,
  fingerprint,
  fsStore,
  listFiles,
  randomData,
  restore,
  sha256File,
  snap as snapAny,
  tmpDir,
  writeAt,
  stopCodecWorkersAtEnd,
} from '../helpers/images.js';

stopCodecWorkersAtEnd(t);

const CHUNK = 64 * KiB;
const SIZE = 3 * MiB; // 48 chunks
const COUNT = SIZE / CHUNK;

const isChunk = (k: string) => k.includes('/packs/');
const snap: typeof snapAny = (store, image, disk, opts = {}) => snapAny(store, image, disk, { packSize: CHUNK, ...opts });
const plain = Domain.of(undefined);

/** Chunk indexes of the image whose blobs are in some pack of the store. */
function storedChunks(storeDir: string, img: string): number[] {
  const ids = new Set<string>();
  for (const f of packFiles(storeDir)) for (const e of decodePack(fs.readFileSync(f), 'plain', path.basename(f))) ids.add(e.id.toString('hex'));
  const data = fs.readFileSync(img);
  const out: number[] = [];
  for (let i = 0; i < COUNT; i++) if (ids.has(plain.chunkId(data.subarray(i * CHUNK, (i + 1) * CHUNK)).toString('hex'))) out.push(i);
  return out;
}
const isCheckpoint = (k: string) => k.includes('/tables/') || k.includes('/pending/');

/**
 * A store whose chunk puts fail from the nth on. Chunk puts before that take chunkDelayMs (so checkpoints,
 * written one after another, keep up with them); checkpoint writes take checkpointDelayMs.
 */
function failingChunkPuts(inner: ObjectStore, nth: number, opts: { chunkDelayMs?: number; checkpointDelayMs?: number } = {}): FaultyStore {
  const f = new FaultyStore(inner).addFault('put', {
    match: isChunk,
    nth,
    times: Infinity,
    error: { code: ErrorCodes.STORE_IO, retryable: false, message: 'injected: disk full' },
  });
  if (opts.chunkDelayMs) f.addFault('put', { match: isChunk, delayMs: opts.chunkDelayMs, times: Infinity });
  if (opts.checkpointDelayMs) f.addFault('put', { match: isCheckpoint, delayMs: opts.checkpointDelayMs, times: Infinity });
  return f;
}

function pendingOf(storeDir: string, disk: string): { file: string; ck: any }[] {
  const dir = path.join(storeDir, 'r2', 'plain', 'disks', disk, 'pending');
  return listFiles(dir).map((f) => ({ file: f, ck: decodePendingV2(fs.readFileSync(path.join(dir, f)), plain, disk, Number(f)) as any }));
}

/** Resolves once cond() holds (polled; after 10 s it gives up, so a test fails instead of hanging). */
async function until(cond: () => boolean): Promise<void> {
  for (const end = Date.now() + 10_000; !cond() && Date.now() < end;) await new Promise((r) => setTimeout(r, 2));
}

/** The source with chunk reads held until wait(index) resolves: an early chunk that comes late (cold codec workers did). */
function heldReads(wait: (index: number) => Promise<void> | undefined): (s: BlockSource) => BlockSource {
  return (s) =>
    delegatingSource(s, {
      read: async (offset: number, buf: Buffer, length: number) => {
        await wait(offset / CHUNK);
        return s.read(offset, buf, length);
      },
    });
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
  // Slow chunk puts: checkpoints keep up, and the next chunk is already read when one is checkpointed.
  const faulty = failingChunkPuts(store, 30, { chunkDelayMs: 30 });
  const src1 = { counted: undefined as ReturnType<typeof countingSource> | undefined };
  await t.rejects(
    snap(faulty, img, 'd', { chunkSize: CHUNK, checkpointRecords: 4, concurrency: 2, wrapSource: (s) => (src1.counted = countingSource(s)) }),
    { code: ErrorCodes.STORE_IO },
    'the first run fails',
  );
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
  const faulty = failingChunkPuts(store, 10, { chunkDelayMs: 10 });
  await t.rejects(snap(faulty, img, 'd', { checkpointRecords: 4, concurrency: 2 }), { code: ErrorCodes.STORE_IO });
  t.equal(pendingOf(storeDir, 'd').length, 1, 'a pending checkpoint exists');
  const nextIndex: number = pendingOf(storeDir, 'd')[0]?.ck.nextIndex ?? 0;
  const counted = { c: undefined as ReturnType<typeof countingSource> | undefined };
  const r = await snap(store, img, 'd', { checkpointRecords: 4, wrapSource: (s) => (counted.c = countingSource(s)) });
  t.equal(r.resumed, true);
  t.equal(r.point, 2);
  t.equal(r.parent, 1);
  t.equal(counted.c!.bytes, SIZE - nextIndex * CHUNK, 'only the rest of the disk is read');
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
  await t.rejects(snap(failingChunkPuts(store, 12, { chunkDelayMs: 10 }), img, 'd', { checkpointRecords: 4, concurrency: 2 }), {
    code: ErrorCodes.STORE_IO,
  });
  const pendingChunks = packFiles(storeDir);
  t.ok(pendingChunks.length >= 4, `the pending point wrote packs (${pendingChunks.length} in all)`);
  const before = pendingOf(storeDir, 'd');
  t.equal(before.length, 1);

  const pr = await prune({ store, disk: 'd', keep: 1 });
  t.same(pr.kept, [2]);
  t.same(
    pendingOf(storeDir, 'd').map((p) => p.file),
    before.map((p) => p.file),
    'the checkpoint of the pending point survives prune',
  );
  t.same(packFiles(storeDir), pendingChunks, 'its packs survive prune');

  const r = await snap(store, img, 'd', { checkpointRecords: 4 });
  t.equal(r.resumed, true, 'the pending point resumes after prune');
  t.equal(r.point, 3);
  await expectRestore(t, store, 'd', 3, fp3, dir);
  t.equal((await verify({ store, disk: 'd', point: 'all' })).ok, true);
});

t.test('resume: false starts the pending point over', async (t) => {
  const { dir, img, storeDir, store } = setup(t);
  const fp = fingerprint(img);
  await t.rejects(snap(failingChunkPuts(store, 20, { chunkDelayMs: 10 }), img, 'd', { chunkSize: CHUNK, checkpointRecords: 4, concurrency: 2 }), {
    code: ErrorCodes.STORE_IO,
  });
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
  await t.rejects(snap(failingChunkPuts(store, 30, { chunkDelayMs: 10 }), img, 'd', { chunkSize: CHUNK, checkpointRecords: 4, concurrency: 2 }), {
    code: ErrorCodes.STORE_IO,
  });
  // The disk changes at both ends: the start is inside the checkpoint, the end is not.
  writeAt(img, 0, randomData(4096, 7));
  writeAt(img, SIZE - 4096, randomData(4096, 8));
  const after = fingerprint(img);
  const r = await snap(store, img, 'd', { chunkSize: CHUNK, checkpointRecords: 4 });
  // A raw file changed since the cut (its mtime moved): the checkpoint's chunks may be stale, so the run starts over.
  t.equal(r.resumed, false, 'the second run does not resume a checkpoint of data that has changed since');
  const out = path.join(dir, 'r.img');
  await restore(store, 'd', 'latest', out);
  const got = sha256File(out);
  t.ok(
    got === after.sha256,
    'the restored point equals the disk as it was before or after the change, not a mix of both ' +
      `(got ${got.slice(0, 12)}, before ${before.sha256.slice(0, 12)}, after ${after.sha256.slice(0, 12)})`,
  );
});

t.test('a store failure keeps the checkpoints of chunks already stored (slow checkpoint writes)', async (t) => {
  const { img, storeDir, store } = setup(t);
  // Chunks 0..28 are stored; checkpoints (segment + pending, 40 ms each) trail behind when chunk 29 fails.
  await t.rejects(
    snap(failingChunkPuts(store, 30, { checkpointDelayMs: 20 }), img, 'd', { chunkSize: CHUNK, checkpointRecords: 4, concurrency: 2 }),
    { code: ErrorCodes.STORE_IO },
  );
  const stored = storedChunks(storeDir, img);
  let prefix = 0;
  while (stored.includes(prefix)) prefix++;
  // Puts go in the order encodes finish, which the codec workers may shuffle by up to the chunks being encoded.
  const { encodeDepth } = pipelineDepths(CHUNK, 2);
  t.ok(prefix >= 28 - encodeDepth, `chunks 0..${prefix - 1} are in the store`);
  const nextIndex: number = pendingOf(storeDir, 'd')[0]?.ck.nextIndex ?? 0;
  t.ok(
    nextIndex >= Math.floor(prefix / 4) * 4 - 4,
    `the checkpoint covers the stored chunks (nextIndex ${nextIndex}, ${prefix} chunks stored): a resume need not redo them`,
  );
});

t.test('a resumed point counts each chunk once (the checkpoint holds only the stats of the chunks it covers)', async (t) => {
  const { dir, img, storeDir, store } = setup(t);
  const fp = fingerprint(img);
  // Chunk 3's put is slow, so chunks after it are read and stored before the first checkpoint (nextIndex 4)
  // is taken; the second checkpoint write fails, which ends the run with that first checkpoint in place.
  const faulty = new FaultyStore(store).addFault('put', { match: isChunk, nth: 4, delayMs: 1000 }).addFault('put', {
    match: (k) => k.includes('/pending/'),
    nth: 2,
    times: Infinity,
    error: { code: ErrorCodes.STORE_IO, retryable: false, message: 'injected: checkpoint write failed' },
  });
  await t.rejects(snap(faulty, img, 'd', { chunkSize: CHUNK, checkpointRecords: 4, concurrency: 2 }), { code: ErrorCodes.STORE_IO });
  faulty.assertAllFired();
  const pend = pendingOf(storeDir, 'd');
  t.equal(pend.length, 1, 'the first checkpoint is in the store');
  const ck = pend[0]?.ck;
  t.equal(ck?.nextIndex, 4, 'it covers chunks 0..3');
  t.ok(packFiles(storeDir).length > 4, 'chunks after 3 were stored before it was taken');
  t.equal(ck?.stats.bytesRead, 4 * CHUNK, 'the checkpoint counts the bytes read of chunks 0..3 only');
  t.equal(ck?.stats.chunksChanged, 4, 'the checkpoint counts the changed chunks 0..3 only');

  const counted = { c: undefined as ReturnType<typeof countingSource> | undefined };
  const r = await snap(store, img, 'd', { chunkSize: CHUNK, checkpointRecords: 4, wrapSource: (s) => (counted.c = countingSource(s)) });
  t.equal(r.resumed, true);
  t.equal(counted.c!.bytes, SIZE - 4 * CHUNK, 'the resume reads from chunk 4 on');
  t.equal(r.chunksChanged, COUNT, 'chunksChanged counts each chunk of the point once');
  t.equal(r.bytesRead, SIZE, 'bytesRead counts each byte of the disk once');
  t.ok(r.chunksChanged <= r.chunksTotal, `chunksChanged ${r.chunksChanged} <= chunksTotal ${r.chunksTotal}`);
  t.equal(r.chunksZero, 0, 'a disk of random data has no zero chunks');
  await expectRestore(t, store, 'd', 1, fp, dir);
});

t.test("back-pressure: while the store's writes stall, the reader does not run ahead of the pipeline", async (t) => {
  const { dir, img, store } = setup(t);
  const fp = fingerprint(img);
  const concurrency = 2;
  // From the 4th pack put on, six puts stall: every put turn is held (one stalled pack no longer stops a v2 run: the
  // next packs go out beside it), and what the reader may take meanwhile is bounded by the pipeline's buffers.
  const stalled = new FaultyStore(store).addFault('put', { match: isChunk, nth: 4, times: 6, delayMs: 400 });
  const counted = { c: undefined as ReturnType<typeof countingSource> | undefined };
  const run = snap(stalled, img, 'd', { chunkSize: CHUNK, concurrency, wrapSource: (s) => (counted.c = countingSource(s)) });
  await new Promise((r) => setTimeout(r, 300));
  // In chunks, whether read through read() or by the codec workers through the lent fd (a full point's are).
  const readsDuringStall = Math.ceil((counted.c?.bytes ?? 0) / CHUNK);
  const r = await run;
  // Chunks 0..4 (the 4th and 5th puts stall side by side, each on a turn its chunk settled with; put turns go to the
  // lowest chunk first, so they are chunks 3 and 4) plus what the pipeline may hold behind them (its reorder window).
  t.ok(
    readsDuringStall <= 5 + pipelineDepths(CHUNK, concurrency).reorderWindow,
    `reads while the puts stall: ${readsDuringStall} (of ${COUNT}); what waits for them must be bounded by the pipeline`,
  );
  t.equal(r.chunksChanged, COUNT);
  await expectRestore(t, store, 'd', 1, fp, dir);
});

// Regression (test/crypto/points: "a cut encrypted point resumes...", resumed: false about 1 run in 6 when run alone):
// a checkpoint waited for every pack closed since the previous one, and any failed put among them dropped it, even a
// pack holding only chunks encoded ahead of its records. Here chunk 0's pack is put first, the next one (a later
// chunk's) fails, and chunk 1 comes after that: chunks 0 and 1 are stored, yet the cut run left no checkpoint and the
// next run read the whole disk again.
t.test("a failed pack of chunks after a checkpoint's records does not drop that checkpoint", async (t) => {
  const { dir, img, storeDir, store } = setup(t);
  const fp = fingerprint(img);
  let packPuts = 0;
  const faulty = new FaultyStore(store).addFault('put', {
    match: (k) => isChunk(k) && ++packPuts > 0,
    nth: 2,
    error: { code: ErrorCodes.STORE_IO, retryable: false, message: 'injected: disk full' },
  });
  const opts = { chunkSize: CHUNK, checkpointRecords: 2, concurrency: 2 };
  const held = heldReads((i) => (i === 1 ? until(() => faulty.firedCount > 0) : i > 1 ? until(() => packPuts >= 1) : undefined));
  await t.rejects(snap(faulty, img, 'd', { ...opts, wrapSource: held }), { code: ErrorCodes.STORE_IO }, 'the first run is cut');
  faulty.assertAllFired();
  const nextIndex: number = pendingOf(storeDir, 'd')[0]?.ck.nextIndex ?? 0;
  t.ok(nextIndex >= 2, `a checkpoint covers chunks 0 and 1, which are stored (nextIndex ${nextIndex})`);
  const counted = { c: undefined as ReturnType<typeof countingSource> | undefined };
  const r = await snap(store, img, 'd', { ...opts, wrapSource: (s) => (counted.c = countingSource(s)) });
  t.equal(r.resumed, true, 'the next run resumes');
  t.equal(counted.c!.bytes, SIZE - nextIndex * CHUNK, 'it reads only what the checkpoint does not cover');
  // No index object names the pack that failed: a chunk deduplicated against it would not restore.
  await expectRestore(t, store, 'd', 1, fp, dir);
});

// Regression (same subtest, most of its failures): pack puts went in the order packs closed, so the pack of an early
// chunk encoded late waited behind the packs of the chunks after it, and a cut among those left nothing to
// checkpoint. Put turns now go to the pack with the lowest chunk index. Here puts take 300 ms, two at a time, and
// fail from the 6th on; chunk 1 comes 100 ms after the 2nd put started, when the chunks after it have queued theirs.
