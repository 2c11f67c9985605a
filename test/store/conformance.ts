// The one conformance suite every ObjectStore backend runs: it checks each guarantee written in
// src/store/types.ts. A backend's test file only starts its server and calls runConformance.

import { randomBytes } from 'node:crypto';
import type { Test } from 'tap';
import { ErrorCodes } from '../../src/errors.js';
import { collect, type ObjectStore } from '../../src/store/index.js';

export interface StoreUnderTest {
  store: ObjectStore;
  cleanup(): Promise<void>;
}

export interface ConformanceOptions {
  /** Keys for the >1000-key paging test (default 1100; backends that page at 1000 need more than 1000). */
  manyKeys?: number;
  /** False where the etag is a content hash (S3's MD5 ETag): re-putting identical bytes keeps it. */
  etagChangesOnIdenticalPut?: boolean;
  /**
   * 'unordered' only for emulators known to list in another order (s3rver walks its directories):
   * the keys are then compared as sets. Every real backend must list in byte order.
   */
  listOrder?: 'bytes' | 'unordered';
}

type Case = (t: Test, store: ObjectStore) => Promise<void>;

const NOT_FOUND = { code: ErrorCodes.STORE_NOT_FOUND };
const PRECONDITION = { code: ErrorCodes.STORE_PRECONDITION };

/** Runs fn with at most n in flight; keeps parallel setup from opening thousands of sockets at once. */
async function parallel<T>(items: T[], n: number, fn: (x: T) => Promise<unknown>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(n, items.length) }, async () => {
      while (next < items.length) await fn(items[next++]);
    }),
  );
}

const byteOrder = (a: string, b: string): number => Buffer.compare(Buffer.from(a), Buffer.from(b));

export function runConformance(t: Test, name: string, makeStore: () => Promise<StoreUnderTest>, opts: ConformanceOptions = {}): void {
  const unordered = opts.listOrder === 'unordered';
  /** Keys a listing yields; sorted here only for emulators that are known to list out of order. */
  const keysOf = async (store: ObjectStore, prefix: string): Promise<string[]> => {
    const keys = (await collect(store.list(prefix))).map((i) => i.key);
    return unordered ? keys.sort(byteOrder) : keys;
  };
  if (unordered) t.comment(`${name}: list order is NOT checked (the emulator lists out of byte order)`);

  const cases: Record<string, Case> = {
    'put/get round-trip: empty, 1 byte, 5 MiB binary, a Uint8Array view': async (t, store) => {
      const big = randomBytes(5 * 1024 * 1024);
      const backing = Buffer.from('0123456789abcdefghij');
      const view = new Uint8Array(backing.buffer, backing.byteOffset + 5, 10); // '56789abcde'
      const cases: Array<[string, Uint8Array]> = [
        ['rt/empty', Buffer.alloc(0)],
        ['rt/one', Buffer.from([0xff])],
        ['rt/big', big],
        ['rt/view', view],
      ];
      for (const [key, data] of cases) {
        const info = await store.put(key, data);
        t.equal(info.key, key, `${key}: put returns the key`);
        t.equal(info.size, data.length, `${key}: put returns the size`);
        const got = await store.get(key);
        t.ok(Buffer.isBuffer(got), `${key}: get returns a Buffer`);
        t.ok(got.equals(Buffer.from(data.buffer, data.byteOffset, data.byteLength)), `${key}: content round-trips`);
        const head = await store.head(key);
        t.equal(head.size, data.length, `${key}: head size`);
        t.equal(head.key, key);
        if (info.etag !== undefined) t.equal(head.etag, info.etag, `${key}: head etag equals put etag`);
      }
      t.same((await store.get('rt/view')).toString(), '56789abcde', 'only the view bytes are stored');
    },

    'overwrite replaces content, size and etag': async (t, store) => {
      const a = await store.put('ow/k', Buffer.from('first version'));
      const b = await store.put('ow/k', Buffer.from('second'));
      t.equal((await store.get('ow/k')).toString(), 'second');
      const head = await store.head('ow/k');
      t.equal(head.size, 6);
      t.ok(head.etag, 'head has an etag');
      t.not(a.etag, b.etag, 'etag changes on overwrite');
      t.equal(head.etag, b.etag);
      // Same size and content again: the etag must still change (it is a version tag, not a hash).
      if (opts.etagChangesOnIdenticalPut !== false) {
        const c = await store.put('ow/k', Buffer.from('second'));
        t.not(c.etag, b.etag, 'etag changes even when the content does not');
      }
      t.equal((await collect(store.list('ow/'))).length, 1, 'one key after overwrites');
    },

    'ranges: start, middle, to end, past end, clipped, empty': async (t, store) => {
      const data = Buffer.from(Array.from({ length: 1000 }, (_, i) => i % 251));
      await store.put('rg/k', data);
      const check = async (offset: number, length: number | undefined, start: number, end: number) => {
        const got = await store.get('rg/k', length === undefined ? { offset } : { offset, length });
        t.ok(got.equals(data.subarray(start, end)), `range ${offset}+${length ?? 'end'} -> [${start}, ${end})`);
      };
      await check(0, 10, 0, 10);
      await check(100, 50, 100, 150);
      await check(900, undefined, 900, 1000);
      await check(999, 1, 999, 1000);
      await check(990, 100, 990, 1000);
      await check(0, undefined, 0, 1000);
      await check(0, 1000, 0, 1000);
      await check(1000, undefined, 1000, 1000);
      await check(2000, 10, 1000, 1000);
      await check(5, 0, 5, 5);
      await store.put('rg/empty', Buffer.alloc(0));
      t.equal((await store.get('rg/empty', { offset: 0 })).length, 0, 'range of an empty object');
      t.equal((await store.get('rg/empty', { offset: 3, length: 2 })).length, 0);
    },

    'missing keys: get, ranged get and head fail with STORE_NOT_FOUND': async (t, store) => {
      await t.rejects(store.get('nf/missing'), NOT_FOUND);
      await t.rejects(store.get('nf/missing', { offset: 0, length: 1 }), NOT_FOUND);
      await t.rejects(store.head('nf/missing'), NOT_FOUND);
      await store.put('nf/dir/child', Buffer.from('x'));
      await t.rejects(store.get('nf/dir'), NOT_FOUND, 'a prefix is not an object');
      await t.rejects(store.head('nf/dir'), NOT_FOUND);
    },

    'list: byte order, exact prefixes, nested and mid-segment': async (t, store) => {
      // '-' 0x2d < '.' 0x2e < '/' 0x2f < '0' 0x30: a naive per-directory walk gets this order wrong.
      const keys = [
        'ls/a/b/c',
        'ls/a/b-c',
        'ls/a/b.d',
        'ls/a/b0',
        'ls/a-x',
        'ls/a0',
        'ls/b',
        'ls/disks/a/chunks/0001',
        'ls/disks/a/chunks/00010',
        'ls/disks/a/chunks/0001x',
        'ls/disks/a/chunks/0002',
        'ls/disks/ab/chunks/0001',
      ];
      const shuffled = [...keys].sort(() => Math.random() - 0.5);
      await parallel(shuffled, 8, (k) => store.put(k, Buffer.from(k)));
      await store.put('ls0', Buffer.from('outside'));
      const sorted = [...keys].sort(byteOrder);
      const all = await collect(store.list('ls/'));
      if (unordered) all.sort((a, b) => byteOrder(a.key, b.key));
      t.same(
        all.map((i) => i.key),
        sorted,
        'everything under ls/ in byte order',
      );
      t.same(
        all.map((i) => i.size),
        sorted.map((k) => k.length),
        'list gives sizes',
      );
      const expect = async (prefix: string, want: string[]) => t.same(await keysOf(store, prefix), want, `list(${JSON.stringify(prefix)})`);
      await expect('ls/a/', ['ls/a/b-c', 'ls/a/b.d', 'ls/a/b/c', 'ls/a/b0']);
      await expect('ls/a', ['ls/a-x', 'ls/a/b-c', 'ls/a/b.d', 'ls/a/b/c', 'ls/a/b0', 'ls/a0']);
      await expect('ls/a/b', ['ls/a/b-c', 'ls/a/b.d', 'ls/a/b/c', 'ls/a/b0']);
      await expect('ls/a/b/', ['ls/a/b/c']);
      await expect('ls/disks/a/chunks/0001', ['ls/disks/a/chunks/0001', 'ls/disks/a/chunks/00010', 'ls/disks/a/chunks/0001x']);
      await expect('ls/disks/a/', ['ls/disks/a/chunks/0001', 'ls/disks/a/chunks/00010', 'ls/disks/a/chunks/0001x', 'ls/disks/a/chunks/0002']);
      await expect('ls/disks/a', [...sorted.filter((k) => k.startsWith('ls/disks/a'))]);
      await expect('ls/nothing', []);
      await expect('ls/nothing/', []);
      await expect('nothing-at-all/', []);
      t.ok((await keysOf(store, '')).includes('ls0'), 'empty prefix lists everything');
    },

    'list pages through more than 1000 keys': async (t, store) => {
      const n = opts.manyKeys ?? 1100;
      const keys = Array.from({ length: n }, (_, i) => `many/k${String(i).padStart(5, '0')}`);
      await parallel(keys, 32, (k) => store.put(k, Buffer.from('x')));
      await store.put('many0', Buffer.from('outside'));
      const got = await keysOf(store, 'many/');
      t.equal(got.length, n, `${n} keys listed`);
      t.same(got, keys, 'each key once, in order');
    },

    'delete is idempotent and removes the key from get, head and list': async (t, store) => {
      await store.delete('del/never-existed');
      await store.put('del/x/y', Buffer.from('1'));
      await store.put('del/z', Buffer.from('2'));
      await store.delete('del/x/y');
      await t.rejects(store.get('del/x/y'), NOT_FOUND);
      await t.rejects(store.head('del/x/y'), NOT_FOUND);
      t.same(await keysOf(store, 'del/'), ['del/z']);
      await store.delete('del/x/y');
      // The emptied prefix can now hold an object of that name.
      await store.put('del/x', Buffer.from('3'));
      t.same(await keysOf(store, 'del/'), ['del/x', 'del/z']);
      await store.delete('del/x');
      await store.delete('del/z');
      t.same(await keysOf(store, 'del/'), []);
    },

    'ifNoneMatch: create once, then STORE_PRECONDITION; one winner of 8 racing writers': async (t, store) => {
      const first = await store.put('inm/k', Buffer.from('first'), { ifNoneMatch: true });
      t.equal(first.size, 5, 'ifNoneMatch on a new key succeeds');
      if (!store.capabilities.conditionalPut) {
        t.comment(`${store.location} does not enforce conditions (capabilities.conditionalPut=false)`);
        return;
      }
      await t.rejects(store.put('inm/k', Buffer.from('second'), { ifNoneMatch: true }), PRECONDITION);
      t.equal((await store.get('inm/k')).toString(), 'first', 'content unchanged after a failed ifNoneMatch');
      const results = await Promise.allSettled(
        Array.from({ length: 8 }, (_, i) => store.put('inm/race', Buffer.from(`writer ${i}`), { ifNoneMatch: true })),
      );
      const won = results.flatMap((r, i) => (r.status === 'fulfilled' ? [i] : []));
      t.equal(won.length, 1, 'exactly one racing writer wins');
      for (const r of results) {
        if (r.status === 'rejected') t.match(r.reason, PRECONDITION, 'losers get STORE_PRECONDITION');
      }
      t.equal((await store.get('inm/race')).toString(), `writer ${won[0]}`, "the winner's content is stored");
    },

    'ifMatch: succeeds on the current etag, fails on a stale one or a missing key': async (t, store) => {
      const v1 = await store.put('im/k', Buffer.from('v1'));
      const v2 = await store.put('im/k', Buffer.from('v2'), { ifMatch: v1.etag! });
      t.equal((await store.get('im/k')).toString(), 'v2');
      t.not(v2.etag, v1.etag);
      if (!store.capabilities.conditionalPut) {
        t.comment(`${store.location} does not enforce conditions (capabilities.conditionalPut=false)`);
        return;
      }
      await t.rejects(store.put('im/k', Buffer.from('v3'), { ifMatch: v1.etag! }), PRECONDITION);
      t.equal((await store.get('im/k')).toString(), 'v2', 'content unchanged after a failed ifMatch');
      await t.rejects(store.put('im/missing', Buffer.from('x'), { ifMatch: v2.etag! }), PRECONDITION);
      await t.rejects(store.head('im/missing'), NOT_FOUND, 'a failed ifMatch creates nothing');
    },

    'parallel puts of 50 distinct keys': async (t, store) => {
      const keys = Array.from({ length: 50 }, (_, i) => `par/${i}`);
      await Promise.all(keys.map((k) => store.put(k, Buffer.from(`data of ${k}`))));
      const got = await Promise.all(keys.map(async (k) => (await store.get(k)).toString()));
      t.same(
        got,
        keys.map((k) => `data of ${k}`),
      );
      t.equal((await keysOf(store, 'par/')).length, 50);
    },

    'keys with punctuation and digits': async (t, store) => {
      const keys = ['pn/a-b_c.d/0-1_2.3', 'pn/UPPER.lower', 'pn/9', 'pn/x.y.z', 'pn/_lead', 'pn/-dash', 'pn/v1.0-rc_2'];
      for (const k of keys) await store.put(k, Buffer.from(k));
      for (const k of keys) t.equal((await store.get(k)).toString(), k, k);
      t.same(await keysOf(store, 'pn/'), [...keys].sort(byteOrder));
    },

    'invalid keys are refused': async (t, store) => {
      for (const k of ['', '/abs', 'a//b', 'a/../b', 'a/./b', 'trailing/']) {
        await t.rejects(store.put(k, Buffer.from('x')), `put ${JSON.stringify(k)} refused`);
      }
    },
  };

  t.test(name, async (t) => {
    for (const [title, fn] of Object.entries(cases)) {
      await t.test(title, async (t) => {
        const { store, cleanup } = await makeStore();
        try {
          await fn(t, store);
        } finally {
          await store.close();
          await cleanup();
        }
      });
    }
  });
}
