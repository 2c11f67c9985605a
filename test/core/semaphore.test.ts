// The semaphore behind the agent's job slots and an NBD connection's requests in flight: a free slot is taken at
// once (a burst cannot overshoot), waiters are served first come first served with the slot handed over on
// release, an aborted wait leaves the queue and holds nothing, and failing the waiters rejects only them.
import t from 'tap';
import { Semaphore } from '../../src/semaphore.js';

const tick = () => new Promise((resolve) => setImmediate(resolve));

t.test('a burst takes the free slots synchronously and the rest wait', async (t) => {
  const sem = new Semaphore(2);
  const got: number[] = [];
  const all = [0, 1, 2, 3].map((i) => sem.acquire().then(() => got.push(i)));
  t.equal(sem.inUse, 2, 'two slots taken before any promise settles');
  t.equal(sem.waiting, 2);
  await tick();
  t.same(got, [0, 1]);
  sem.release();
  sem.release();
  await Promise.all(all);
  t.same(got, [0, 1, 2, 3], 'waiters in arrival order');
  t.equal(sem.inUse, 2, 'each release handed its slot over instead of freeing it');
  sem.release();
  sem.release();
  t.equal(sem.inUse, 0);
});

t.test('a released slot goes to the oldest waiter, not to a caller arriving after the release', async (t) => {
  const sem = new Semaphore(1);
  await sem.acquire();
  let waiterGot = false;
  const waiter = sem.acquire().then(() => {
    waiterGot = true;
  });
  sem.release();
  let lateGot = false;
  const late = sem.acquire().then(() => {
    lateGot = true;
  });
  await waiter;
  await tick();
  t.ok(waiterGot);
  t.notOk(lateGot, 'the late caller waits behind the handed-over slot');
  sem.release();
  await late;
  t.equal(sem.inUse, 1);
});

t.test('an aborted wait rejects with the reason, leaves the queue and holds no slot', async (t) => {
  const sem = new Semaphore(1);
  await sem.acquire();
  const controller = new AbortController();
  const reason = new Error('stop');
  const aborted = sem.acquire(controller.signal);
  const next = sem.acquire();
  t.equal(sem.waiting, 2);
  controller.abort(reason);
  await t.rejects(aborted, reason);
  t.equal(sem.waiting, 1, 'only the aborted waiter left');
  sem.release();
  await next;
  t.equal(sem.inUse, 1, 'the slot went to the remaining waiter');
  await t.rejects(sem.acquire(AbortSignal.abort(reason)), reason, 'an already aborted signal never waits');
  t.equal(sem.waiting, 0);
  t.equal(sem.inUse, 1);
});

t.test('an abort after the slot was handed over changes nothing', async (t) => {
  const sem = new Semaphore(1);
  await sem.acquire();
  const controller = new AbortController();
  const waiter = sem.acquire(controller.signal);
  sem.release();
  controller.abort(new Error('too late'));
  await waiter;
  t.equal(sem.inUse, 1, 'the waiter holds the slot');
});

t.test('failWaiters rejects every waiter and keeps the held slots', async (t) => {
  const sem = new Semaphore(1);
  await sem.acquire();
  const err = new Error('connection lost');
  const waiters = [sem.acquire(), sem.acquire(new AbortController().signal)];
  sem.failWaiters(err);
  for (const w of waiters) await t.rejects(w, err);
  t.equal(sem.waiting, 0);
  t.equal(sem.inUse, 1);
  sem.release();
  t.equal(sem.inUse, 0);
});

t.test('at least one slot', async (t) => {
  t.throws(() => new Semaphore(0), RangeError);
});
