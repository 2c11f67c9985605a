// A writer that died (or lost its link for good) could have PUTs still in the node's store, behind slower ones; stored
// after the next writer had taken the disk's lease, rewritten the same table segment and committed its point, one
// replaced that segment (the fault soak found the committed point's table "replaced, replayed or damaged"). Once
// another writer takes a lease a session held, what that session still sends or has not stored is refused.
import t, { type Test } from 'tap';
import { gated } from '../helpers/gate.js';
import { fsStore, tmpDir } from '../helpers/images.js';
import { relay } from '../helpers/relay.js';
import type { ObjectChecks } from '../../src/transport/object-checks.js';
import { remote, startNode } from './helpers.js';

const KEY = 'objects/victim';
const DISK = 'dd';
const TTL = 30_000;

/** Takes every object, written once or rewritten: this test is about sessions, not about what the node accepts. */
const anyObject = (createOnly: boolean): ObjectChecks => ({
  checkPut: () => Promise.resolve({ kind: 'test', createOnly, replaceable: () => Promise.resolve(true) }),
  checkDelete: () => undefined,
  kindOf: () => 'test',
});

/**
 * A writer that holds the disk's lease, and whose first PUT of KEY is in the node's store when its link goes for good;
 * then the next writer takes the lease (the first one's holder is dead: broken).
 */
async function writerDiesMidPut(t: Test, createOnly: boolean) {
  const dir = tmpDir(t, 'ws-fenced');
  const inner = fsStore(`${dir}/recv`);
  const gate = gated(inner, (key) => key === KEY, 'put');
  const { server } = await startNode(t, dir, { store: gate.store, checks: anyObject(createOnly) });
  const link = await relay(t, server.port);
  const dead = remote(t, `ws://127.0.0.1:${link.port}`, { reconnectBudgetMs: 300 });
  await dead.leases.acquire(DISK, 'writer-1', TTL);
  const stale = dead.put(KEY, Buffer.from('stale bytes of a writer that died')).then(
    () => 'stored',
    () => 'failed',
  );
  await gate.held; // the node has the whole PUT, and its store has begun it
  link.cut(); // the writer is gone
  const next = remote(t, server.url);
  await next.leases.acquire(DISK, 'writer-2', TTL, 'writer-1');
  return { inner, next, gate, stale };
}

t.test('a PUT still in the store when its writer lost the lease does not replace what the next writer stored', async (t) => {
  const { inner, next, gate, stale } = await writerDiesMidPut(t, false);
  await next.put(KEY, Buffer.from('what the next writer stored'));
  gate.release();
  await gate.settled;
  t.equal(await stale, 'failed', 'the writer that died never heard its PUT stored');
  t.equal((await inner.get(KEY)).toString(), 'what the next writer stored', "the fenced session's PUT did not replace it");
});

// A manifest the dead writer sent would otherwise commit its point after the next writer had rewritten the tables it
// names.
t.test('an object written once, still in the store when its writer lost the lease, is not created', async (t) => {
  const { inner, gate, stale } = await writerDiesMidPut(t, true);
  gate.release();
  await gate.settled;
  t.equal(await stale, 'failed');
  await t.rejects(inner.head(KEY), { code: 'RNODE_STORE_NOT_FOUND' }, 'not stored');
});

t.test('a writer whose lease another took has its next PUT and delete refused, and another disk is not fenced', async (t) => {
  const dir = tmpDir(t, 'ws-fenced-live');
  const { server, store } = await startNode(t, dir, { checks: anyObject(false) });
  const first = remote(t, server.url);
  const other = remote(t, server.url);
  await first.leases.acquire(DISK, 'writer-1', TTL);
  await other.leases.acquire('other', 'writer-3', TTL);
  await first.put(KEY, Buffer.from('1'));
  await remote(t, server.url).leases.acquire(DISK, 'writer-2', TTL, 'writer-1');
  await t.rejects(first.put(KEY, Buffer.from('2')), { code: 'RNODE_LEASE_LOST' }, 'its PUT is refused');
  await t.rejects(first.delete(KEY), { code: 'RNODE_LEASE_LOST' }, 'and its delete');
  t.equal((await store.get(KEY)).toString(), '1');
  await other.put('objects/other', Buffer.from('3'));
  t.equal((await store.get('objects/other')).toString(), '3', 'a session holding another disk writes on');
});
