// The prune-vs-replicate race: a replicate that reuses chunks from a pack prune is about to delete. Every
// interleaving of a writer's steps (start: read the index and the marks; decide to reuse; checkpoint; commit) with
// 0-3 prune runs (each a grace period after the last) in each gap ends one of two ways: prune saw the reference and
// kept the pack, or the writer refused to commit (RNODE_CHUNK_MISSING). Never a committed point with a missing chunk:
// every committed point reads back byte-exact, also after three more prune runs.
import t from 'tap';
import { ErrorCodes, isRnodeError } from '../../src/errors.js';
import { Domain } from '../../src/repository/domain.js';
import { listV2PointSeqs } from '../../src/repository/points.js';
import { pruneStore } from '../../src/jobs/prune-v2.js';
import { MemoryStore } from '../../src/store/memory/memory-store.js';
import { CHUNK, beginPoint, chunkData, readPointV2, writePoint, type Changes } from '../helpers/v2.js';

const COUNT = 8;
const SIZE = COUNT * CHUNK;
const GRACE = 10;

const template = (i: number) => chunkData(9000 + i);

t.test('every interleaving of a reusing writer with prune runs: the pack stays, or the writer does not commit', async (t) => {
  const outcomes = { committed: 0, refused: 0 };
  for (let combo = 0; combo < 64; combo++) {
    const gaps = [combo & 3, (combo >> 2) & 3, (combo >> 4) & 3];
    const store = new MemoryStore();
    let clock = 0;
    const now = () => clock;
    const prune = async (n: number) => {
      for (let i = 0; i < n; i++) {
        clock += GRACE * 2;
        await pruneStore({ store, graceMs: GRACE, maxUnused: 0, now });
      }
    };
    // Disk a's first point holds the template; its second overwrites every chunk; keeping one point leaves the
    // template's pack unused, and prune starts on it (seen).
    const first: Changes = new Map(Array.from({ length: COUNT }, (_, i) => [i, template(i)]));
    await writePoint(store, undefined, 'a', 1, null, SIZE, first);
    const second: Changes = new Map(Array.from({ length: COUNT }, (_, i) => [i, chunkData(100 + i)]));
    await writePoint(store, undefined, 'a', 2, 1, SIZE, second);
    await pruneStore({ store, disk: 'a', keep: 1, graceMs: GRACE, maxUnused: 0, now });

    // Disk b: a clone of the template, written while prune runs.
    const w = await beginPoint(store, undefined, 'b', 1, null, SIZE);
    await prune(gaps[0]);
    for (let i = 0; i < COUNT; i++) await w.add(i, template(i));
    await prune(gaps[1]);
    await w.checkpoint();
    await prune(gaps[2]);
    let committed = false;
    try {
      await w.commit();
      committed = true;
    } catch (err) {
      if (!isRnodeError(err, ErrorCodes.CHUNK_MISSING)) throw err;
    }
    await prune(3);
    const domain = (await Domain.open(store, undefined))!;
    const what = `gaps ${gaps.join('/')}`;
    if (committed) {
      outcomes.committed++;
      const got = await readPointV2(store, undefined, 'b', 1).catch((e: Error) => e);
      const want = Buffer.concat(Array.from({ length: COUNT }, (_, i) => template(i)));
      if (!(Buffer.isBuffer(got) && got.equals(want)))
        t.fail(`${what}: committed point b/1 does not read back: ${(got as Error).message ?? 'differs'}`);
    } else {
      outcomes.refused++;
      t.same(await listV2PointSeqs(store, 'b', domain.key), [], `${what}: a refused point is not committed`);
    }
    const a2 = await readPointV2(store, undefined, 'a', 2).catch((e: Error) => e);
    if (!Buffer.isBuffer(a2)) t.fail(`${what}: point a/2 does not read back: ${a2.message}`);
  }
  t.ok(outcomes.committed > 0, `some interleavings commit (prune saw the reference): ${outcomes.committed}`);
  t.ok(outcomes.refused > 0, `some interleavings refuse to commit: ${outcomes.refused}`);
});

t.test("prune sees a checkpoint's reference and unmarks the pack; the writer then commits", async (t) => {
  const store = new MemoryStore();
  let clock = 0;
  const now = () => clock;
  await writePoint(store, undefined, 'a', 1, null, SIZE, new Map(Array.from({ length: COUNT }, (_, i) => [i, template(i)])));
  await writePoint(store, undefined, 'a', 2, 1, SIZE, new Map(Array.from({ length: COUNT }, (_, i) => [i, chunkData(100 + i)])));
  await pruneStore({ store, disk: 'a', keep: 1, graceMs: GRACE, maxUnused: 0, now });
  const w = await beginPoint(store, undefined, 'b', 1, null, SIZE);
  for (let i = 0; i < COUNT; i++) await w.add(i, template(i));
  t.equal(w.reused.size, 1, 'the writer reuses the template pack');
  await w.checkpoint();
  clock += 2 * GRACE;
  const r = await pruneStore({ store, graceMs: GRACE, maxUnused: 0, now });
  t.equal(r.domains[0].packsUnmarked, 1, 'the checkpoint puts the pack back in use');
  t.equal(r.domains[0].packsMarked, 0);
  await w.commit();
  for (let i = 0; i < 3; i++) {
    clock += 2 * GRACE;
    await pruneStore({ store, graceMs: GRACE, maxUnused: 0, now });
  }
  t.ok((await readPointV2(store, undefined, 'b', 1)).equals(Buffer.concat(Array.from({ length: COUNT }, (_, i) => template(i)))), 'b/1 reads back');
});
