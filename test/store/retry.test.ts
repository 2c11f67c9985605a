// The wrappers assembled by wrapStore: retry (what it retries, how often, its backoff), the
// concurrency limit, and the metrics; faults come from FaultyStore.

import t from 'tap';
import { ErrorCodes, RnodeError } from '../../src/errors.js';
import { collect, RetryingStore, wrapStore, type RetryOptions } from '../../src/store/index.js';
import { FaultyStore, MemoryStore } from '../../src/testing.js';
import { runConformance } from './conformance.js';

const UNAVAILABLE = { code: ErrorCodes.STORE_UNAVAILABLE, retryable: true };
const noSleep = (delays: number[] = []): RetryOptions => ({
  sleep: async (ms) => {
    delays.push(ms);
  },
  random: () => 1,
});

t.test('retry recovers from retryable errors', async (t) => {
  const f = new FaultyStore(new MemoryStore())
    .addFault('put', { times: 2, error: UNAVAILABLE })
    .addFault('get', { error: { code: ErrorCodes.STORE_THROTTLED, retryable: true } });
  const delays: number[] = [];
  const s = new RetryingStore(f, { ...noSleep(delays), baseDelayMs: 100 });
  await s.put('k', Buffer.from('v'));
  t.equal((await s.get('k')).toString(), 'v');
  t.equal(f.calls.put, 3);
  t.same(delays, [100, 200, 100], 'exponential backoff (jitter pinned to its cap)');
  f.assertAllFired();
});

t.test('no retry of non-retryable errors, not-found or precondition', async (t) => {
  const f = new FaultyStore(new MemoryStore())
    .addFault('put', { error: { code: ErrorCodes.STORE_AUTH } })
    .addFault('head', { error: { code: ErrorCodes.STORE_NOT_FOUND, retryable: true } });
  const s = new RetryingStore(f, noSleep());
  await t.rejects(s.put('k', Buffer.from('v')), { code: ErrorCodes.STORE_AUTH });
  t.equal(f.calls.put, 1);
  await t.rejects(s.head('k'), { code: ErrorCodes.STORE_NOT_FOUND });
  t.equal(f.calls.head, 1, 'not-found is an answer even if flagged retryable');
  await s.put('k', Buffer.from('v'));
  await t.rejects(s.put('k', Buffer.from('w'), { ifNoneMatch: true }), { code: ErrorCodes.STORE_PRECONDITION });
  t.equal(f.calls.put, 3);
  f.assertAllFired();
});

t.test('gives up after N attempts with the last error', async (t) => {
  let n = 0;
  const mem = new MemoryStore();
  // Distinct errors per attempt so we can see which one comes out.
  mem.delete = async () => {
    throw new RnodeError(ErrorCodes.STORE_UNAVAILABLE, `attempt ${++n}`, { retryable: true });
  };
  const s = new RetryingStore(mem, { ...noSleep(), attempts: 4 });
  await t.rejects(s.delete('k'), { message: 'attempt 4' });
  t.equal(n, 4);
});

t.test('full jitter stays within [0, cap] and the cap stops at maxDelayMs', async (t) => {
  const delays: number[] = [];
  const f = new FaultyStore(new MemoryStore()).addFault('head', { times: 6, error: UNAVAILABLE });
  const rnd = [0, 0.5, 1, 1, 1, 1];
  const s = new RetryingStore(f, {
    attempts: 7,
    baseDelayMs: 10,
    maxDelayMs: 50,
    random: () => rnd.shift()!,
    sleep: async (ms) => {
      delays.push(ms);
    },
  });
  await t.rejects(s.head('k'), { code: ErrorCodes.STORE_NOT_FOUND });
  t.same(delays, [0, 10, 40, 50, 50, 50]);
});

t.test('a listing that fails midway resumes after the last key it yielded', async (t) => {
  const mem = new MemoryStore();
  for (const k of ['a', 'b', 'c', 'd']) await mem.put(k, Buffer.from(k));
  let failOnce = true;
  const flaky = Object.create(mem) as MemoryStore;
  flaky.list = async function* (prefix: string) {
    for await (const i of mem.list(prefix)) {
      if (i.key === 'c' && failOnce) {
        failOnce = false;
        throw new RnodeError(ErrorCodes.STORE_IO, 'reset', { retryable: true });
      }
      yield i;
    }
  };
  const s = new RetryingStore(flaky, noSleep());
  t.same(
    (await collect(s.list(''))).map((i) => i.key),
    ['a', 'b', 'c', 'd'],
  );
});

t.test('wrapStore: concurrency limit and metrics', async (t) => {
  const f = new FaultyStore(new MemoryStore());
  let inFlight = 0;
  let peak = 0;
  const put = f.put.bind(f);
  f.put = async (k, d, o) => {
    inFlight++;
    peak = Math.max(peak, inFlight);
    await new Promise((r) => setTimeout(r, 5));
    try {
      return await put(k, d, o);
    } finally {
      inFlight--;
    }
  };
  f.addFault('get', { error: UNAVAILABLE });
  const s = wrapStore(f, { concurrency: 3, retry: noSleep() });
  await Promise.all(Array.from({ length: 12 }, (_, i) => s.put(`k${i}`, Buffer.alloc(10))));
  t.equal(peak, 3, 'at most 3 calls in flight');
  t.equal((await s.get('k1')).length, 10);
  await t.rejects(s.head('missing'), { code: ErrorCodes.STORE_NOT_FOUND });
  await collect(s.list(''));
  const m = s.metrics();
  t.equal(m.ops.put.calls, 12);
  t.equal(m.ops.put.bytes, 120);
  t.equal(m.ops.get.calls, 2, 'metrics see each attempt');
  t.equal(m.ops.get.errors, 1);
  t.equal(m.ops.get.bytes, 10);
  t.equal(m.ops.list.bytes, 12, 'objects listed');
  t.same(m.errorsByCode, { [ErrorCodes.STORE_UNAVAILABLE]: 1, [ErrorCodes.STORE_NOT_FOUND]: 1 });
  t.ok(m.ops.put.totalMs > 0 && m.ops.put.maxMs > 0);
  t.equal(s.backend, f);
});

// The whole contract still holds through retries when a fifth of all calls fail retryably before
// reaching the backend (faults after the call would make conditional puts ambiguous, see RetryingStore).
runConformance(t, 'memory behind 20% retryable faults, through wrapStore', async () => {
  const faulty = new FaultyStore(new MemoryStore(), { seed: 2024 });
  for (const m of ['put', 'get', 'head', 'list', 'delete'] as const) {
    faulty.addFault(m, { probability: 0.2, times: Infinity, error: UNAVAILABLE });
  }
  const store = wrapStore(faulty, { retry: { attempts: 12, sleep: async () => {} } });
  return {
    store,
    cleanup: async () => {
      const m = store.metrics();
      if (m.errorsByCode[ErrorCodes.STORE_UNAVAILABLE] === undefined && m.ops.put.calls > 20) {
        throw new Error('no fault fired: the test did not exercise retries');
      }
    },
  };
});

// A cancelled job on a store that does not answer waited out every attempt (five request timeouts: ten minutes for an
// agent's job.cancel or SIGTERM): once its stop signal aborts, a failed call is not tried again and a backoff ends.
t.test('the stop signal ends retries: no attempt after it, a backoff in progress ends at once', async (t) => {
  const f = new FaultyStore(new MemoryStore()).addFault('put', { times: 10, error: UNAVAILABLE });
  const stop = new AbortController();
  const s = wrapStore(f, { retry: { baseDelayMs: 60_000, maxDelayMs: 60_000, random: () => 1 }, signal: stop.signal });
  const started = Date.now();
  const put = s.put('k', Buffer.from('v'));
  setTimeout(() => stop.abort(), 50);
  await t.rejects(put, { code: ErrorCodes.STORE_UNAVAILABLE }, 'the call fails with its own error');
  t.ok(Date.now() - started < 5000, `at once, not after a minute's backoff (${Date.now() - started} ms)`);
  t.equal(f.calls.put, 1, 'no attempt after the stop');
  await t.rejects(s.put('k2', Buffer.from('v')), { code: ErrorCodes.STORE_UNAVAILABLE });
  t.equal(f.calls.put, 2, 'a call after the stop is tried once');
});
