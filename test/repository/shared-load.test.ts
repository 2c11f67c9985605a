// Writers of one process that list the same index objects (an agent's job slots starting together) share one load of
// the domain's index: each loaded its own copy, four of them ~740 MB on a store of a million chunks. Each writer still
// has its own ChunkIndex: what one adds, the others do not see.
import t from 'tap';
import { Domain } from '../../src/repository/domain.js';
import { ChunkIndex } from '../../src/repository/index-file.js';
import { countingIndexReads } from '../helpers/around-puts.js';
import { fsStore, randomPoints, stopCodecWorkersAtEnd } from '../helpers/images.js';

stopCodecWorkersAtEnd(t);

t.test('writers listing the same index objects share one load; what each adds stays its own', async (t) => {
  const { storeDir, point } = randomPoints(t, 'shared-load');
  for (const [disk, seed] of [
    ['a', 1],
    ['b', 2],
    ['c', 3],
  ] as const) {
    await point(disk, seed);
  }
  const plain = Domain.of(undefined);
  const store = countingIndexReads(fsStore(storeDir));
  const [one, two] = await Promise.all([ChunkIndex.loadShared(store, plain), ChunkIndex.loadShared(store, plain)]);
  t.equal(store.indexGets, 3, 'two writers starting together read the three index objects once');
  t.equal(one.size, 12, 'each sees the 12 chunks');
  t.equal(two.size, 12);
  t.not(one, two, 'each has its own index');
  const [l] = [...one.locations()];
  const added = { ...l, entry: { ...l.entry, id: Buffer.alloc(32, 9) } };
  one.add(added);
  t.equal(one.lookup(added.entry.id).length, 1, 'what a writer adds, it finds');
  t.equal(two.lookup(added.entry.id).length, 0, 'and the other does not');
  t.same(
    two.lookup(l.entry.id).map((x) => x.packId),
    one.lookup(l.entry.id).map((x) => x.packId),
    'a loaded chunk is found by both, in the same pack',
  );
  t.equal(two.lookup(l.entry.id)[0].indexId, l.indexId, 'and named by the same index object');

  const three = await ChunkIndex.loadShared(store, plain);
  t.equal(store.indexGets, 3, 'a writer starting while those live shares their load too');
  t.equal(three.size, one.size, 'the same entries'); // one and two still in use: their load is alive to share

  await point('d', 4);
  const four = await ChunkIndex.loadShared(store, plain);
  t.equal(store.indexGets, 3 + 4, 'once another index object is listed, a writer loads afresh');
  t.equal(four.size, 16);
});
