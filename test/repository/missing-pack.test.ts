// A pack lost from the store: every chunk in it misses, and each miss used to load the whole chunk index again, one
// load per restore slot at once (a million-chunk store: 41 s and 2.6 GB for a recover that then failed). A miss now
// looks again only when the index objects changed, and misses at once share that look.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { verify } from '../../src/jobs/verify.js';
import { isRnodeError } from '../../src/errors.js';
import { Domain } from '../../src/repository/domain.js';
import { locateChunk } from '../../src/repository/index-cache.js';
import { loadPoint } from '../../src/repository/points.js';
import { tableEntries } from '../../src/repository/view.js';
import { aroundCalls, countingIndexReads } from '../helpers/around-puts.js';
import { fsStore, KiB, listFiles, packFiles, randomPoints, restore, stopCodecWorkersAtEnd } from '../helpers/images.js';

stopCodecWorkersAtEnd(t);

t.test('a lost pack: recover and verify fail with CHUNK_MISSING after one load of the index', async (t) => {
  const { dir, storeDir, point } = randomPoints(t, 'missing-pack');
  // Three index objects (three disks), so that every reload would show as three gets.
  for (const [disk, seed] of [
    ['a', 1],
    ['b', 2],
  ] as const) {
    await point(disk, seed);
  }
  const before = new Set(packFiles(storeDir));
  await point('lost', 3, 2048 * KiB);
  const lost = packFiles(storeDir).filter((f) => !before.has(f));
  t.equal(lost.length, 1, "the disk's 32 chunks are in one pack");
  fs.rmSync(lost[0]);
  const indexObjects = listFiles(path.join(storeDir, 'r2', 'plain', 'index')).length;
  t.equal(indexObjects, 3, 'three index objects');

  const store = countingIndexReads(fsStore(storeDir));
  await t.rejects(restore(store, 'lost', 'latest', path.join(dir, 'out.img')), { code: 'RNODE_CHUNK_MISSING' }, 'recover fails loudly');
  t.equal(store.indexGets, indexObjects, `recover read each index object once (${store.indexGets} gets)`);
  t.ok(store.indexLists <= 1 + 32, `and listed the index folder at most once a chunk (${store.indexLists})`);

  const verifying = countingIndexReads(fsStore(storeDir));
  const result = await verify({ store: verifying, disk: 'lost' }).catch((err: unknown) => err);
  const failed = isRnodeError(result, 'RNODE_CHUNK_MISSING') || (result as { ok?: boolean }).ok === false;
  t.ok(failed, 'verify reports the missing chunks');
  t.equal(verifying.indexGets, indexObjects, `verify read each index object once (${verifying.indexGets} gets)`);
});

/** The chunk ids of a point (fs store, plain domain). */
async function chunkIds(storeDir: string, disk: string, point: number): Promise<Buffer[]> {
  const store = fsStore(storeDir);
  const ids: Buffer[] = [];
  for await (const e of tableEntries(store, await loadPoint(store, disk, point))) if (e.id) ids.push(Buffer.from(e.id));
  return ids;
}

// The index is shared by the readers of one store object (an export, an agent's jobs): recover wraps its store per
// run, so these tests look chunks up directly.
const plain = Domain.of(undefined);

t.test('chunks written after the index was loaded are found: the index objects changed, and one reload serves them all', async (t) => {
  const { storeDir, point } = randomPoints(t, 'missing-pack');
  await point('d', 11);
  const reader = countingIndexReads(fsStore(storeDir));
  const [first] = await chunkIds(storeDir, 'd', 1);
  t.equal((await locateChunk(reader, plain, first)).length, 1, 'a chunk of point 1 is found');
  t.equal(reader.indexGets, 1, 'one index object read');

  // Another writer adds point 2, with new chunks in a new index object, while the reader keeps its loaded index.
  await point('d', 12);
  const later = await chunkIds(storeDir, 'd', 2);
  const found = await Promise.all(later.map((id) => locateChunk(reader, plain, id)));
  t.same(
    found.map((f) => f.length),
    later.map(() => 1),
    `the ${later.length} chunks of point 2, looked up at once, are each found`,
  );
  t.equal(reader.indexGets, 1 + 2, 'by one reload, shared (two index objects)');
});

t.test('a lookup never settles for a reload that began before it: the point it reads may be newer', async (t) => {
  const { storeDir, point } = randomPoints(t, 'missing-pack');
  await point('d', 21);
  // The reader's store holds back gets of index objects while `held` is set.
  let held: Promise<void> | undefined;
  const reader = aroundCalls(fsStore(storeDir), 'get', async ([key], get) => {
    if (key.includes('/index/') && held) await held;
    return get();
  });
  const [first] = await chunkIds(storeDir, 'd', 1);
  t.equal((await locateChunk(reader, plain, first)).length, 1, 'the index is loaded');

  // Another disk's point adds an index object; a miss then starts a reload, held in its gets after its listing.
  await point('e', 22);
  let release!: () => void;
  held = new Promise((r) => (release = r));
  const early = locateChunk(reader, plain, Buffer.alloc(32, 7));
  await new Promise((r) => setTimeout(r, 100));

  // Point 2 of d is committed after that listing; a lookup of one of its chunks begins while the reload is in flight.
  await point('d', 23);
  const [newer] = await chunkIds(storeDir, 'd', 2);
  const late = locateChunk(reader, plain, newer);
  await new Promise((r) => setTimeout(r, 100));
  held = undefined;
  release();
  t.same(await early, [], 'the made-up chunk is nowhere');
  t.equal((await late).length, 1, 'the chunk of point 2 is found: it was looked up in a listing begun after it');
});

t.test('an index object left out as damaged is read again by the next miss: a bad read may not be lasting', async (t) => {
  const { storeDir, point } = randomPoints(t, 'missing-pack');
  await point('d', 31);
  const [file] = listFiles(path.join(storeDir, 'r2', 'plain', 'index'));
  const indexFile = path.join(storeDir, 'r2', 'plain', 'index', file);
  const good = fs.readFileSync(indexFile);
  const bad = Buffer.from(good);
  bad[40] ^= 0x5a;
  fs.writeFileSync(indexFile, bad);
  const reader = fsStore(storeDir);
  const [first] = await chunkIds(storeDir, 'd', 1);
  t.same(await locateChunk(reader, plain, first), [], 'while its index object reads damaged, the chunk is found nowhere');
  fs.writeFileSync(indexFile, good);
  t.equal((await locateChunk(reader, plain, first)).length, 1, 'once it reads whole, the next miss finds it');
});
