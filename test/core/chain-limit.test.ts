// Issue 13 (incremental time proportional to what changed): each incremental point's table is a delta against its
// parent, and every read of a point merges its whole chain, walking the manifests one by one (a round trip each on a
// cloud store). Under an hourly policy the chain grew with every point, and so did every job. Once the parent's
// chain has maxChain points, the next point's table stands alone: it carries the chain's entries, the data is not
// stored again, and every point still restores byte-exact (a closing point cut by a failure included).
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { EncryptionKey } from '../../src/crypto/keys.js';
import { ErrorCodes } from '../../src/errors.js';
import { prune } from '../../src/jobs/prune-v2.js';
import { MAX_CHAIN_POINTS } from '../../src/jobs/replicate/plan.js';
import { verify } from '../../src/jobs/verify.js';
import { loadChain, loadPoint } from '../../src/repository/points.js';
import { FaultyStore } from '../../src/testing.js';
import {
  KiB,
  expectRestore,
  fingerprint,
  fsStore,
  mixedChunkImage,
  randomData,
  snap,
  stopCodecWorkersAtEnd,
  tmpDir,
  writeAt,
  type Fingerprint,
} from '../helpers/images.js';

stopCodecWorkersAtEnd(t);

const CHUNK = 64 * KiB;

/** Chunks of the image that hold a non-zero byte: what a table standing alone must list, no more. */
function dataChunks(img: string): number {
  const b = fs.readFileSync(img);
  let n = 0;
  for (let o = 0; o < b.length; o += CHUNK) if (b.subarray(o, o + CHUNK).some((x) => x !== 0)) n++;
  return n;
}

t.test('the default keeps a chain short enough to walk quickly on a cloud store', async (t) => {
  t.ok(MAX_CHAIN_POINTS >= 8 && MAX_CHAIN_POINTS <= 64, `${MAX_CHAIN_POINTS} points`);
});

for (const encrypted of [false, true]) {
  t.test(`${encrypted ? 'encrypted' : 'plain'}: with maxChain 3, points 4 and 7 stand alone, every point restores exact`, async (t) => {
    const dir = tmpDir(t, 'chain');
    const img = path.join(dir, 'disk.img');
    const store = fsStore(path.join(dir, 'store'));
    const encryption = encrypted ? EncryptionKey.fromBytes(crypto.createHash('sha256').update('chain-limit').digest()) : undefined;
    mixedChunkImage(img, CHUNK); // 0-39 random, 40-59 text, 60-79 zeros, 80-99 a hole, 100-128 random
    const opts = { chunkSize: CHUNK, encryption, maxChain: 3, checkpointRecords: 16 };
    const fps = new Map<number, Fingerprint>();
    const results = [];
    for (let p = 1; p <= 7; p++) {
      if (p > 1) writeAt(img, ((p * 17) % 40) * CHUNK + 99, randomData(300, 100 + p)); // one chunk of data rewritten
      if (p === 4) {
        writeAt(img, 5 * CHUNK, Buffer.alloc(CHUNK)); // data turned to zeros in the closing point itself
        writeAt(img, 85 * CHUNK, randomData(CHUNK, 7)); // and a hole turned to data
      }
      if (p === 6) writeAt(img, 101 * CHUNK, Buffer.alloc(CHUNK)); // zeroed in a delta, carried as absent by point 7
      fps.set(p, fingerprint(img));
      const r = await snap(store, img, 'd', opts);
      results.push(r);
      t.equal(r.point, p);
      if (p === 4 || p === 7) {
        const m = await loadPoint(store, 'd', p, encryption);
        t.equal(r.parent, null, `point ${p}'s table stands alone`);
        t.equal(m.parent, null, `and its manifest says so`);
        t.equal(r.full, false, `point ${p} was still read as an incremental`);
        t.equal(r.rebasedFrom, p - 1, `compared with point ${p - 1}`);
        t.equal(r.chunksChanged, p === 4 ? 3 : 1, 'only the changed chunks are recorded as changed');
        t.ok(r.bytesWritten < 8 * CHUNK, `and only they are stored, with the table (${r.bytesWritten} bytes)`);
        t.equal(m.table.records, dataChunks(img), 'its table lists every chunk with data, carried from the chain or new, and no zeros');
        t.ok(m.table.segments.length > 1, 'over several segments (and checkpoints)');
      } else if (p > 1) {
        t.equal(r.parent, p - 1, `point ${p} is a delta on point ${p - 1}`);
        t.equal(r.rebasedFrom, undefined);
        t.equal(r.chunksChanged, p === 6 ? 2 : 1);
      }
    }
    const chains = [];
    for (let p = 1; p <= 7; p++) chains.push((await loadChain(store, 'd', p, encryption)).map((m) => m.point));
    t.same(chains, [[1], [2, 1], [3, 2, 1], [4], [5, 4], [6, 5, 4], [7]], 'no chain is longer than 3 points');
    for (const [p, fp] of fps) await expectRestore(t, store, 'd', p, fp, dir, `point ${p}`, { encryption });
    const v = await verify({ store, disk: 'd', all: true, encryption });
    t.equal(v.ok, true, 'verify finds every chunk of every point');

    // Retention keeps points 6 and 7: 6 is rebased onto its own table, 7 already stands alone.
    await prune({ store, disk: 'd', keep: 2, encryption });
    t.same(
      (await loadChain(store, 'd', 7, encryption)).map((m) => m.point),
      [7],
    );
    t.same(
      (await loadChain(store, 'd', 6, encryption)).map((m) => m.point),
      [6],
    );
    await expectRestore(t, store, 'd', 7, fps.get(7)!, dir, 'point 7 after the prune', { encryption });
    await expectRestore(t, store, 'd', 6, fps.get(6)!, dir, 'point 6 after the prune', { encryption });
  });
}

t.test('a closing point cut after its first checkpoint resumes, and its table still stands alone and exact', async (t) => {
  const dir = tmpDir(t, 'chain');
  const img = path.join(dir, 'disk.img');
  const store = fsStore(path.join(dir, 'store'));
  mixedChunkImage(img, CHUNK);
  const opts = { chunkSize: CHUNK, maxChain: 2, checkpointRecords: 8 };
  await snap(store, img, 'd', opts);
  writeAt(img, 3 * CHUNK, randomData(CHUNK, 21));
  await snap(store, img, 'd', opts);
  writeAt(img, 50 * CHUNK, randomData(CHUNK, 22));
  writeAt(img, 120 * CHUNK, Buffer.alloc(CHUNK));
  const fp = fingerprint(img);
  // The second checkpoint's write fails: the run ends with the first one (8 carried records) in the store.
  const faulty = new FaultyStore(store).addFault('put', {
    match: (k) => k.includes('/pending/'),
    nth: 2,
    error: { code: ErrorCodes.STORE_IO, retryable: false, message: 'injected: checkpoint write failed' },
  });
  await t.rejects(snap(faulty, img, 'd', opts), { code: ErrorCodes.STORE_IO });
  faulty.assertAllFired();
  const r = await snap(store, img, 'd', opts);
  t.equal(r.resumed, true, 'the closing point resumed from its checkpoint');
  t.equal(r.parent, null);
  t.equal(r.rebasedFrom, 2);
  const m = await loadPoint(store, 'd', 3);
  t.equal(m.table.records, dataChunks(img), 'each chunk with data is listed once across the cut');
  await expectRestore(t, store, 'd', 3, fp, dir, 'the resumed closing point');
});

t.test('a chain is walked with its manifests fetched ahead; one damaged below its first point is never read', async (t) => {
  const dir = tmpDir(t, 'chain');
  const img = path.join(dir, 'disk.img');
  const storeDir = path.join(dir, 'store');
  const store = fsStore(storeDir);
  mixedChunkImage(img, CHUNK);
  for (let p = 1; p <= 9; p++) {
    writeAt(img, p * CHUNK, randomData(100, 40 + p));
    await snap(store, img, 'd', { chunkSize: CHUNK, maxChain: 5 }); // chains: 1..5, then 6 stands alone
  }
  const fp = fingerprint(img);
  // Point 5 is below point 9's chain (9, 8, 7, 6): fetched ahead in vain, its damage must not fail the walk.
  fs.writeFileSync(path.join(storeDir, 'r2', 'plain', 'disks', 'd', 'points', '0000000005'), 'not a manifest');
  let inFlight = 0;
  let most = 0;
  const slow = new FaultyStore(store).addFault('get', { delayMs: 5, times: Infinity });
  const get = slow.get.bind(slow);
  slow.get = async (...a: Parameters<typeof get>) => {
    most = Math.max(most, ++inFlight);
    try {
      return await get(...a);
    } finally {
      inFlight--;
    }
  };
  t.same(
    (await loadChain(slow, 'd', 9)).map((m) => m.point),
    [9, 8, 7, 6],
  );
  t.ok(most >= 3, `manifests were fetched side by side (${most} at most), not one round trip per point`);
  await expectRestore(t, slow, 'd', 9, fp, dir, 'point 9');
  await t.rejects(loadChain(store, 'd', 5), { code: ErrorCodes.MANIFEST_CORRUPT }, 'the damage itself is still found where it matters');
});

t.test('maxChain must be a whole number of points', async (t) => {
  const dir = tmpDir(t, 'chain');
  const img = path.join(dir, 'disk.img');
  mixedChunkImage(img, CHUNK);
  for (const maxChain of [0, 1.5, -1]) {
    await t.rejects(snap(fsStore(path.join(dir, 'store')), img, 'd', { chunkSize: CHUNK, maxChain }), { code: ErrorCodes.USAGE });
  }
});
