// FaultyStore: each kind of scripted fault fires where it was scripted, and assertAllFired catches a
// scripted fault that never fired (a test that "passes" without exercising its fault path).

import t from 'tap';
import { ErrorCodes, RnodeError } from '../../src/errors.js';
import { collect } from '../../src/store/index.js';
import { FaultyStore, MemoryStore } from '../../src/testing.js';

const UNAVAILABLE = { code: ErrorCodes.STORE_UNAVAILABLE, retryable: true };

t.test('error on the Nth call, then calls pass through', async (t) => {
  const f = new FaultyStore(new MemoryStore()).addFault('put', { nth: 2, error: UNAVAILABLE });
  await f.put('a', Buffer.from('1'));
  await t.rejects(f.put('b', Buffer.from('2')), { code: ErrorCodes.STORE_UNAVAILABLE, retryable: true });
  await f.put('c', Buffer.from('3'));
  await t.rejects(f.head('b'), { code: ErrorCodes.STORE_NOT_FOUND }, 'the failed put did not write');
  t.equal(f.calls.put, 3);
  f.assertAllFired();
});

t.test('times, match, afterCall and a given Error', async (t) => {
  const boom = new RnodeError(ErrorCodes.STORE_AUTH, 'denied');
  const f = new FaultyStore(new MemoryStore())
    .addFault('get', { times: 2, match: (k) => k.startsWith('x/'), error: boom })
    .addFault('put', { afterCall: true, error: UNAVAILABLE });
  await t.rejects(f.put('x/1', Buffer.from('v')), UNAVAILABLE);
  await f.put('y', Buffer.from('w'));
  t.equal((await f.get('y')).toString(), 'w', 'unmatched keys pass');
  await t.rejects(f.get('x/1'), boom);
  await t.rejects(f.get('x/1'), boom);
  t.equal((await f.get('x/1')).toString(), 'v', 'afterCall wrote before failing; get fault spent');
  f.assertAllFired();
});

t.test('delay, and hang until its timeout with a retryable error', async (t) => {
  const f = new FaultyStore(new MemoryStore()).addFault('head', { delayMs: 50 }).addFault('get', { hang: true, hangMs: 30 });
  await f.put('k', Buffer.from('v'));
  const t0 = Date.now();
  await f.head('k');
  t.ok(Date.now() - t0 >= 45, 'head delayed');
  await t.rejects(f.get('k'), UNAVAILABLE);
  f.assertAllFired();
});

t.test('a hang without timeout is released by close', async (t) => {
  const f = new FaultyStore(new MemoryStore()).addFault('delete', { hang: true });
  const p = f.delete('k');
  await f.close();
  await t.rejects(p, UNAVAILABLE);
});

t.test('list faults act when the listing starts', async (t) => {
  const f = new FaultyStore(new MemoryStore()).addFault('list', { error: UNAVAILABLE });
  await f.put('a', Buffer.from('1'));
  await t.rejects(collect(f.list('')), UNAVAILABLE);
  t.same(
    (await collect(f.list(''))).map((i) => i.key),
    ['a'],
  );
});

t.test('probabilistic faults are reproducible from the seed and exempt from assertAllFired', async (t) => {
  const run = async (seed: number) => {
    const f = new FaultyStore(new MemoryStore(), { seed }).addFault('put', { probability: 0.3, times: Infinity, error: UNAVAILABLE });
    const out: boolean[] = [];
    for (let i = 0; i < 100; i++)
      out.push(
        await f.put(`k${i}`, Buffer.from('x')).then(
          () => true,
          () => false,
        ),
      );
    f.assertAllFired();
    return out;
  };
  const a = await run(42);
  t.same(await run(42), a, 'same seed, same faults');
  const failures = a.filter((ok) => !ok).length;
  t.ok(failures > 15 && failures < 45, `about 30% fail (${failures})`);
  t.notSame(await run(7), a, 'another seed, other faults');
});

t.test('assertAllFired fails when a scripted fault did not fire', async (t) => {
  const f = new FaultyStore(new MemoryStore()).addFault('put', { nth: 3, error: UNAVAILABLE }).addFault('get', { times: 2, error: UNAVAILABLE });
  await f.put('a', Buffer.from('1'));
  await f.get('a').catch(() => {});
  t.throws(() => f.assertAllFired(), /put fault #1 \(call 3\) fired 0\/1, get fault #2 fired 1\/2/);
});
