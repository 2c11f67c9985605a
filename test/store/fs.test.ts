// FsStore against the conformance suite in a temp directory, plus what only a filesystem can get
// wrong: temp files a crash left behind, and the root created on first put.

import { mkdtemp, readdir, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import t from 'tap';
import { ErrorCodes } from '../../src/errors.js';
import { collect, FsStore, openStore } from '../../src/store/index.js';
import { runConformance } from './conformance.js';

// 1100 fsync'ed puts on a busy 2-core machine can pass tap's default 30 s per file.
t.setTimeout(120_000);

const tmp = () => mkdtemp(path.join(tmpdir(), 'rnode-fs-'));

runConformance(t, 'fs', async () => {
  const dir = await tmp();
  return { store: new FsStore(path.join(dir, 'root')), cleanup: () => rm(dir, { recursive: true, force: true }) };
});

t.test('fs: a temp file left by a crash is invisible to list, get and head', async (t) => {
  const dir = await tmp();
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const store = new FsStore(dir);
  await store.put('disks/a/k1', Buffer.from('one'));
  // What a crash between write and rename leaves: a temp file beside the key.
  await writeFile(path.join(dir, 'disks', 'a', '.tmp\\k2.deadbeef'), 'partial');
  t.same(
    (await collect(store.list('disks/'))).map((i) => i.key),
    ['disks/a/k1'],
  );
  t.same(
    (await collect(store.list(''))).map((i) => i.key),
    ['disks/a/k1'],
  );
  await t.rejects(store.get('disks/a/k2'), { code: ErrorCodes.STORE_NOT_FOUND });
  await store.put('disks/a/k2', Buffer.from('two'));
  t.equal((await store.get('disks/a/k2')).toString(), 'two');
});

t.test('fs: put leaves no temp file, delete removes emptied directories but not the root', async (t) => {
  const dir = await tmp();
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const root = path.join(dir, 'not', 'yet');
  const store = new FsStore(root);
  await store.put('a/b/c', Buffer.from('x'));
  await t.rejects(store.put('a/b/c', Buffer.from('y'), { ifNoneMatch: true }), { code: ErrorCodes.STORE_PRECONDITION });
  t.same(await readdir(path.join(root, 'a', 'b')), ['c'], 'no temp file left, also after a failed ifNoneMatch');
  await store.delete('a/b/c');
  t.same(await readdir(root), [], 'emptied directories removed');
});

t.test('fs: a key cannot also be a prefix (a file is not a directory)', async (t) => {
  const dir = await tmp();
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const store = new FsStore(dir);
  await store.put('a/b', Buffer.from('x'));
  await t.rejects(store.put('a/b/c', Buffer.from('y')), { code: ErrorCodes.STORE_IO });
  await mkdir(path.join(dir, 'd', 'e'), { recursive: true });
  await t.rejects(store.put('d', Buffer.from('y')), { code: ErrorCodes.STORE_IO });
  await t.rejects(store.put('d', Buffer.from('y'), { ifNoneMatch: true }), { code: ErrorCodes.STORE_IO });
});

t.test('fs: openStore takes a path and file:// URLs', async (t) => {
  const dir = await tmp();
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const a = await openStore(dir);
  await a.put('k', Buffer.from('v'));
  const b = await openStore(`file://${dir}`);
  t.equal((await b.get('k')).toString(), 'v');
  t.equal(a.location, dir);
  t.equal(b.metrics().ops.get.calls, 1, 'wrapped with metrics');
});

t.test('fs: get into a caller buffer reads straight into it when it fits, and allocates when it does not', async (t) => {
  const dir = await tmp();
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const store = await openStore(dir); // through the wrappers, which must pass the buffer on
  const data = Buffer.from('0123456789abcdef');
  await store.put('k', data);
  const into = Buffer.alloc(32, 0xee);
  const whole = await store.get('k', undefined, into);
  t.ok(whole.equals(data) && whole.buffer === into.buffer && whole.byteOffset === into.byteOffset, 'a view of into, whole object');
  const part = await store.get('k', { offset: 4, length: 6 }, into);
  t.ok(part.equals(data.subarray(4, 10)) && part.buffer === into.buffer, 'a view of into, ranged');
  const small = Buffer.alloc(4);
  const other = await store.get('k', undefined, small);
  t.ok(other.equals(data) && other.buffer !== small.buffer, 'too small: a buffer of its own, into untouched');
  t.ok(small.equals(Buffer.alloc(4)));
  const past = await store.get('k', { offset: 100 }, into);
  t.equal(past.length, 0, 'a range past the end: empty');
  const tail = await store.get('k', { offset: 10 }, into);
  t.ok(tail.equals(data.subarray(10)), 'to the end from an offset');
  await t.rejects(store.get('missing', undefined, into), { code: ErrorCodes.STORE_NOT_FOUND }, 'a missing key');
  await mkdir(path.join(dir, 'dir'));
  await t.rejects(store.get('dir', undefined, into), { code: ErrorCodes.STORE_NOT_FOUND }, 'a directory is no object');
  await t.rejects(store.get('k', { offset: -1 }, into), { code: ErrorCodes.INTERNAL }, 'a bad range');
  await store.close();
});
