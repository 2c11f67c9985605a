// check and verify --point all beside a prune: a pack, index object or point listed at the start and deleted before it
// is read is not damage when nothing still references it (a note, not a problem), and is when a point still needs
// it. The prune's deletes are made deterministic by a store that runs them on the first read of a chosen object.
// And check beside a replicate: a point committed while check reads the packs is not checked.
import t from 'tap';
import { ErrorCodes } from '../../src/errors.js';
import { check } from '../../src/jobs/check.js';
import { pruneStore, scanDomain } from '../../src/jobs/prune-v2.js';
import { verify } from '../../src/jobs/verify.js';
import { Domain } from '../../src/repository/domain.js';
import { r2, type ObjectId } from '../../src/repository/names.js';
import { MemoryStore } from '../../src/store/memory/memory-store.js';
import type { ByteRange, ObjectInfo, ObjectStore, PutOptions } from '../../src/store/types.js';
import { stopCodecWorkersAtEnd } from '../helpers/images.js';
import { CHUNK, chunkData, writePoint, type Changes } from '../helpers/v2.js';

stopCodecWorkersAtEnd(t);

const COUNT = 16;

/** Runs `before` once, ahead of the first get or head of a key `match` accepts (and of whole-object gets only, with `whole`). */
class InterleavedStore implements ObjectStore {
  readonly location: string;
  readonly capabilities: ObjectStore['capabilities'];
  fired = 0;
  constructor(
    private readonly inner: ObjectStore,
    private readonly match: (key: string, range?: ByteRange) => boolean,
    private readonly before: () => Promise<unknown>,
  ) {
    this.location = inner.location;
    this.capabilities = inner.capabilities;
  }
  private async maybe(key: string, range?: ByteRange): Promise<void> {
    if (this.fired === 0 && this.match(key, range)) {
      this.fired++;
      await this.before();
    }
  }
  async get(key: string, range?: ByteRange, into?: Uint8Array): Promise<Buffer> {
    await this.maybe(key, range);
    return this.inner.get(key, range, into);
  }
  async head(key: string): Promise<ObjectInfo> {
    await this.maybe(key);
    return this.inner.head(key);
  }
  put(key: string, data: Uint8Array, opts?: PutOptions): Promise<ObjectInfo> {
    return this.inner.put(key, data, opts);
  }
  list(prefix: string): AsyncIterable<ObjectInfo> {
    return this.inner.list(prefix);
  }
  delete(key: string): Promise<void> {
    return this.inner.delete(key);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

/** Points 1..4 of disk d, each rewriting 4 chunks, in small packs (several per point). */
async function fourPoints(): Promise<MemoryStore> {
  const store = new MemoryStore();
  for (let p = 1; p <= 4; p++) {
    const changes: Changes = new Map();
    if (p === 1) for (let i = 0; i < COUNT; i++) changes.set(i, chunkData(i + 1));
    else for (let k = 0; k < 4; k++) changes.set((p * 4 + k) % COUNT, chunkData(p * 100 + k));
    await writePoint(store, undefined, 'd', p, p === 1 ? null : p - 1, COUNT * CHUNK, changes, 2 * CHUNK + 4096);
  }
  return store;
}

/** After retention keeps only point 4: a pack no point uses any more, and one point 4 uses. */
async function retainedStore(): Promise<{ store: MemoryStore; unused: ObjectId; used: ObjectId }> {
  const store = await fourPoints();
  await pruneStore({ store, disk: 'd', keep: 1, maxUnused: 0 });
  const scan = await scanDomain(store, (await Domain.open(store))!);
  const unused = [...scan.packs].find(([, p]) => p.used.size === 0)?.[0];
  const used = [...scan.packs].find(([, p]) => p.used.size > 0)?.[0];
  if (!unused || !used) throw new Error('the fixture needs a used and an unused pack');
  return { store, unused, used };
}

const isPack = (id: ObjectId) => (key: string) => key === r2.pack('plain', id);
const isWholePack = (id: ObjectId) => (key: string, range?: ByteRange) => key === r2.pack('plain', id) && range === undefined;

for (const readData of [false, true]) {
  const phase = readData ? 'between its trailer and its data (--read-data)' : 'between the listing and its trailer';
  t.test(`check: an unused pack a prune deletes ${phase} is not a problem`, async (t) => {
    const { store, unused } = await retainedStore();
    const wrapped = new InterleavedStore(store, readData ? isWholePack(unused) : isPack(unused), () => store.delete(r2.pack('plain', unused)));
    const r = await check({ store: wrapped, readData });
    t.equal(wrapped.fired, 1, 'the pack was deleted mid-check');
    t.same(r.problems, [], 'no problem');
    t.ok(r.ok);
    t.equal(r.domains[0].removedDuringCheck.packs, 1, 'noted as removed during the check');
  });

  t.test(`check: a pack a kept point still uses, deleted ${phase}, is reported`, async (t) => {
    const { store, used } = await retainedStore();
    const wrapped = new InterleavedStore(store, readData ? isWholePack(used) : isPack(used), () => store.delete(r2.pack('plain', used)));
    const r = await check({ store: wrapped, readData });
    t.equal(wrapped.fired, 1);
    t.notOk(r.ok, 'missing data is not hidden');
    t.ok(
      r.problems.some((p) => p.code === ErrorCodes.CHUNK_MISSING && p.message.includes(`pack ${used} was deleted during the check`)),
      'a chunk of point 4 is missing, and why',
    );
  });
}

// Bug: check read the index objects and packs first and listed the points last, so a point another disk's replicate
// committed in between named chunks in index objects check had not read: hundreds of RNODE_CHUNK_MISSING (exit 1) on a
// healthy store. The points are now listed first; one committed later is left to the next check.
for (const readData of [false, true]) {
  const phase = readData ? 'while check reads the blobs (--read-data)' : 'while check reads the pack trailers';
  t.test(`check: a point of another disk committed ${phase} is not checked, and is no problem`, async (t) => {
    const store = await fourPoints();
    const changes: Changes = new Map();
    for (let i = 0; i < COUNT; i++) changes.set(i, chunkData(1000 + i));
    const wrapped = new InterleavedStore(
      store,
      (key, range) => key.startsWith(r2.packsPrefix('plain')) && (!readData || range === undefined),
      () => writePoint(store, undefined, 'e', 1, null, COUNT * CHUNK, changes, 2 * CHUNK + 4096),
    );
    const r = await check({ store: wrapped, readData });
    t.equal(wrapped.fired, 1, 'disk e committed point 1 mid-check');
    t.same(r.problems, [], 'no problem');
    t.ok(r.ok);
    t.equal(r.domains[0].disks, 1, 'the disk that had no point when the check began is not checked');
    t.equal(r.domains[0].points, 4);
    const again = await check({ store, readData });
    t.same(again.problems, [], 'the next check checks it: no problem either');
    t.equal(again.domains[0].points, 5);
  });
}

t.test('check: an index object merged away between the listing and its read is not a problem', async (t) => {
  const store = await fourPoints();
  // One index object per point: the prune merges them into one and deletes them once it is written.
  const wrapped = new InterleavedStore(
    store,
    (key) => key.startsWith('r2/plain/index/'),
    () => pruneStore({ store, graceMs: 0, maxUnused: 0 }),
  );
  const r = await check({ store: wrapped, readData: true });
  t.equal(wrapped.fired, 1);
  t.same(r.problems, []);
  t.ok(r.domains[0].removedDuringCheck.indexObjects > 0, 'the merged index objects are noted');
});

t.test('check: points a prune deletes while check reads the points are not problems', async (t) => {
  const store = await fourPoints();
  const wrapped = new InterleavedStore(
    store,
    (key) => key === r2.point('plain', 'd', 1),
    () => pruneStore({ store, disk: 'd', keep: 1, graceMs: 0, maxUnused: 0 }),
  );
  const r = await check({ store: wrapped });
  t.equal(wrapped.fired, 1);
  t.same(r.problems, []);
  t.equal(r.domains[0].points, 1, 'only the point left is counted');
  t.equal(r.domains[0].removedDuringCheck.points, 3);
});

t.test('verify --point all: points a prune deleted after the listing are skipped with a note', async (t) => {
  const store = await fourPoints();
  const wrapped = new InterleavedStore(
    store,
    (key) => key.startsWith(r2.pointsPrefix('plain', 'd')),
    () => pruneStore({ store, disk: 'd', keep: 1, maxUnused: 0 }),
  );
  const r = await verify({ store: wrapped, disk: 'd', point: 'all' });
  t.equal(wrapped.fired, 1);
  t.same(r.problems, []);
  t.ok(r.ok);
  t.same(r.points, [4]);
  t.same(r.removed, [1, 2, 3]);
});

t.test('verify of a point named explicitly that a prune deletes meanwhile stays an error', async (t) => {
  const store = await fourPoints();
  const wrapped = new InterleavedStore(
    store,
    (key) => key.startsWith('r2/plain/disks/d/tables/0000000002/'),
    () => pruneStore({ store, disk: 'd', keep: 1, maxUnused: 0 }),
  );
  const r = await verify({ store: wrapped, disk: 'd', point: '2' });
  t.equal(wrapped.fired, 1);
  t.notOk(r.ok, 'the point asked for could not be checked');
  t.same(r.removed, []);
  await t.rejects(verify({ store, disk: 'd', point: '2' }), { code: ErrorCodes.POINT_NOT_FOUND }, 'and once gone, naming it is an error');
});
