// Replicate and recover through injected faults: FaultyStore over an FsStore, wrapped by wrapStore
// (retry -> limit -> metrics -> faulty -> fs). Random retryable failures are absorbed; a permanent error
// fails the run clearly and leaves no half point; a put that times out after it was applied is re-sent
// and the committed point is still byte-exact.

import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import { ErrorCodes, RnodeError } from '../../src/errors.js';
import { classify, PLAIN_DOMAIN, r2 } from '../../src/repository/names.js';
import { codecWorkers } from '../../src/pipeline/codec-workers.js';
import { listPointSeqs } from '../../src/repository/points.js';
import { replicate } from '../../src/jobs/replicate.js';
import { recover } from '../../src/jobs/restore.js';
import { verify } from '../../src/jobs/verify.js';
import { generateSampleDisk, scatterWrites } from '../../src/sample/sample-disk.js';
import { openSource } from '../../src/source/index.js';
import { FsStore, wrapStore, type ObjectStore, type StoreOp } from '../../src/store/index.js';
import { FaultyStore } from '../../src/testing.js';

const CHUNK = 64 * 1024;
const SIZE = 2 * 1024 * 1024 + 777;
const DISK = 'f';

t.setTimeout(120_000);

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rnode-faults-e2e-'));
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
t.teardown(() => codecWorkers().close());

let n = 0;
/** A fresh store: retry (fast backoff) over FaultyStore over FsStore. */
function makeStore(seed = 7) {
  const root = path.join(dir, `store-${++n}`);
  fs.mkdirSync(root);
  const faulty = new FaultyStore(new FsStore(root, { fsync: false }), { seed });
  const retries: string[] = [];
  const store = wrapStore(faulty, {
    retry: { attempts: 6, baseDelayMs: 2, maxDelayMs: 20, onRetry: (i) => retries.push(`${i.op} ${i.key}`) },
  });
  return { faulty, store, retries, root };
}

async function rep(store: ObjectStore, image: string) {
  const source = await openSource(image);
  try {
    // Packs of one 64 KiB chunk or a few compressed ones: a point makes enough pack puts for the faults to land.
    return await replicate({ store, source, disk: DISK, chunkSize: CHUNK, packSize: CHUNK, checkpointRecords: 8 });
  } finally {
    await source.close();
  }
}

async function newImage(name: string, seed: number): Promise<string> {
  const image = path.join(dir, name);
  await generateSampleDisk(image, { size: SIZE, seed, holeEvery: 4 });
  return image;
}

async function snapshot(image: string, name: string): Promise<string> {
  const copy = path.join(dir, name);
  await fsp.copyFile(image, copy);
  return copy;
}

async function restoresExact(t: Test, store: ObjectStore, point: number, expected: string) {
  const out = path.join(dir, `out-${++n}.img`);
  await recover({ store, disk: DISK, point: String(point), out });
  const [a, b] = await Promise.all([fsp.readFile(out), fsp.readFile(expected)]);
  t.ok(a.equals(b), `point ${point} restores byte-exact`);
  await fsp.rm(out, { force: true });
}

/** Chunks are stored in packs (repository v2): a pack put is what carries chunk data. */
const isPack = (key: string) => classify(key)?.kind === 'pack';

t.test('5% of get/put/head/list fail with a retryable error: full and incremental points commit byte-exact', async (t) => {
  const { faulty, store, retries } = makeStore(42);
  const flaky = { probability: 0.05, error: { code: ErrorCodes.STORE_UNAVAILABLE, retryable: true } };
  for (const m of ['get', 'put', 'head', 'list'] as StoreOp[]) faulty.addFault(m, flaky);

  const image = await newImage('flaky.img', 3);
  const p1 = await rep(store, image);
  const at1 = await snapshot(image, 'flaky-1.img');
  await scatterWrites(image, SIZE, 12, 4);
  const p2 = await rep(store, image);
  const at2 = await snapshot(image, 'flaky-2.img');
  t.equal(p1.point, 1);
  t.ok(p1.full);
  t.equal(p2.point, 2);
  t.notOk(p2.full, 'incremental');
  t.same(await listPointSeqs(store, DISK), [1, 2]);

  await restoresExact(t, store, 1, at1);
  await restoresExact(t, store, 2, at2);
  const v = await verify({ store, disk: DISK, point: 'all' });
  t.ok(v.ok, 'verify all ok');
  t.same(v.problems, []);

  const errors = store.metrics();
  t.ok(
    retries.length > 0,
    `faults fired and were retried (${retries.length} retries over ${Object.values(faulty.calls).reduce((a, b) => a + b, 0)} calls)`,
  );
  t.ok(JSON.stringify(errors).includes(ErrorCodes.STORE_UNAVAILABLE), 'metrics count the injected errors');
  faulty.assertAllFired();
});

t.test('a permanent error on pack puts: replicate fails clearly, no half point, the next run succeeds', async (t) => {
  const { faulty, store, root } = makeStore();
  const image = await newImage('perm.img', 5);
  const p1 = await rep(store, image);
  t.equal(p1.point, 1);
  const at1 = await snapshot(image, 'perm-1.img');

  await scatterWrites(image, SIZE, 20, 6);
  const at2 = await snapshot(image, 'perm-2.img');
  // Point 2's 5th pack put and every later one is denied (packs put from here on are point 2's).
  faulty.addFault('put', {
    match: isPack,
    nth: 5,
    times: Infinity,
    error: { code: ErrorCodes.STORE_AUTH, retryable: false, message: 'access denied (injected, permanent)' },
  });
  const putsBefore = faulty.calls.put;
  const err = await rep(store, image).then(
    () => null,
    (e: unknown) => e,
  );
  t.ok(err instanceof RnodeError, 'rejects with an RnodeError');
  t.equal((err as RnodeError).code, ErrorCodes.STORE_AUTH, `clear code: ${(err as Error).message}`);
  t.match((err as Error).message, /access denied/);
  t.ok(faulty.calls.put - putsBefore < 200, 'not retried endlessly');
  faulty.assertAllFired();

  t.same(await listPointSeqs(store, DISK), [1], 'no new point is visible');
  await t.rejects(store.head(r2.point(PLAIN_DOMAIN, DISK, 2)), { code: ErrorCodes.STORE_NOT_FOUND }, 'no manifest for point 2');
  const v = await verify({ store, disk: DISK, point: 'all' });
  t.ok(v.ok, 'existing points verify ok');
  t.same(v.points, [1]);
  await restoresExact(t, store, 1, at1);

  // The next run, without faults (a fresh stack over the same directory), commits and restores exactly.
  const clean = wrapStore(new FsStore(root, { fsync: false }));
  const p2 = await rep(clean, image);
  t.equal(p2.point, 2, 'the next run commits point 2');
  t.same(await listPointSeqs(clean, DISK), [1, 2]);
  await restoresExact(t, clean, 2, at2);
  await restoresExact(t, clean, 1, at1);
  const v2 = await verify({ store: clean, disk: DISK, point: 'all' });
  t.ok(v2.ok, 'verify all ok after the clean run');
});

t.test('a pack put times out after it was applied; the retry re-sends it; the point is byte-exact', async (t) => {
  const { faulty, store, retries } = makeStore();
  const image = await newImage('timeout.img', 8);
  // The 3rd pack put is slow, lands in the store, and is then reported as a timeout (retryable).
  faulty.addFault('put', {
    match: isPack,
    nth: 3,
    delayMs: 50,
    afterCall: true,
    error: { code: ErrorCodes.STORE_UNAVAILABLE, retryable: true, message: 'put timed out (injected)' },
  });
  // And one more pack put hangs like a dead connection, then times out without reaching the store.
  faulty.addFault('put', { match: isPack, nth: 7, hang: true, hangMs: 30 });
  const p1 = await rep(store, image);
  faulty.assertAllFired();
  t.equal(p1.point, 1);
  const resent = retries.filter((r) => r.startsWith('put ') && isPack(r.slice(4)));
  t.equal(resent.length, 2, `two pack puts were re-sent: ${resent.join(', ')}`);
  t.equal(new Set(resent).size, 2, 'each re-sent to its own key');
  const at1 = await snapshot(image, 'timeout-1.img');
  await restoresExact(t, store, 1, at1);

  await scatterWrites(image, SIZE, 10, 9);
  faulty.addFault('put', {
    match: isPack,
    nth: 1,
    delayMs: 20,
    afterCall: true,
    error: { code: ErrorCodes.STORE_UNAVAILABLE, retryable: true, message: 'put timed out (injected)' },
  });
  const p2 = await rep(store, image);
  faulty.assertAllFired();
  t.equal(p2.point, 2);
  const at2 = await snapshot(image, 'timeout-2.img');
  await restoresExact(t, store, 2, at2);
  await restoresExact(t, store, 1, at1);
  const v = await verify({ store, disk: DISK, point: 'all' });
  t.ok(v.ok, 'verify all ok: no duplicate or corrupt chunk');
  t.same(v.problems, []);
});
