// Regression: a replicate checked before its commit that prune had not marked the packs it *reused*, not the packs it
// wrote itself. A pack put longer than a grace period before a checkpoint named it looks unused to prune; with a short
// --grace, prunes running beside the replicate marked and deleted the packs of a point that then committed, exit 0,
// and never restored (RNODE_CHUNK_MISSING). Now the commit refuses (RNODE_CHUNK_MISSING, retryable), and the next run
// stores those chunks anew.
import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { ErrorCodes, isRnodeError } from '../../src/errors.js';
import { pruneStore } from '../../src/jobs/prune-v2.js';
import { listPoints } from '../../src/repository/points.js';
import { codecWorkers } from '../../src/pipeline/codec-workers.js';
import { aroundPuts } from '../helpers/around-puts.js';
import { expectRestore, fingerprint, fsStore, randomData, snap, tmpDir } from '../helpers/images.js';

t.teardown(() => codecWorkers().close());

/**
 * A disk image, its store, a prune run a grace period after the last (a fake clock), and the store as a replicate
 * sees it: right after the run's first pack is put (before any checkpoint names it), three prunes run, and the pack
 * is seen, marked, then deleted.
 */
function setup(t: Test, name: string, seed: number) {
  const dir = tmpDir(t, name);
  const image = path.join(dir, 'disk.img');
  fs.writeFileSync(image, randomData(4 * 1024 * 1024, seed));
  const store = fsStore(path.join(dir, 'store'));
  let clock = Date.now();
  const prune = async () => {
    clock += 60_000;
    return pruneStore({ store, graceMs: 1000, maxUnused: 0, now: () => clock });
  };
  const state = { fired: false };
  const hooked = aroundPuts(store, async (key, put) => {
    const r = await put();
    if (!state.fired && key.includes('/packs/')) {
      state.fired = true;
      for (let i = 0; i < 3; i++) await prune();
    }
    return r;
  });
  return { dir, image, store, prune, hooked, state };
}

t.test("prunes with a short grace mark a running replicate's own packs: the commit refuses, the next run stores them", async (t) => {
  const { dir, image, store, prune, hooked, state } = setup(t, 'prune-own-packs', 77);
  const err = await snap(hooked, image, 'd', { chunkSize: 64 * 1024, packSize: 256 * 1024 }).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(state.fired, 'the prunes ran mid-run');
  t.ok(isRnodeError(err, ErrorCodes.CHUNK_MISSING), `the commit is refused: ${String((err as Error)?.message)}`);
  t.match((err as Error).message, /which this replicate wrote, was marked for deletion.*--grace/);
  t.same(await listPoints(store, 'd'), [], 'no point committed');

  const again = await snap(store, image, 'd', { chunkSize: 64 * 1024, packSize: 256 * 1024 });
  t.equal(again.point, 1, 'the next run commits');
  for (let i = 0; i < 3; i++) await prune();
  await expectRestore(t, store, 'd', 'latest', fingerprint(image), dir, 'and its point restores byte-exact after more prunes');
});

t.test(
  'the same deletion, then the run is cut after its last checkpoint: the run that continues it does not commit over the deleted pack',
  async (t) => {
    const { dir, image, store, hooked } = setup(t, 'prune-own-packs-cut', 78);
    const opts = { chunkSize: 64 * 1024, packSize: 256 * 1024 };
    const cut = await snap(hooked, image, 'd', {
      ...opts,
      // The cut: after the last checkpoint, before the commit's checks.
      beforeCommit: async () => {
        throw new Error('cut');
      },
    }).then(
      () => undefined,
      (e: unknown) => e,
    );
    t.equal((cut as Error)?.message, 'cut', 'the first run is cut before its commit');
    const resumed = await snap(store, image, 'd', opts).then(
      () => undefined,
      (e: unknown) => e,
    );
    t.ok(
      isRnodeError(resumed, ErrorCodes.CHUNK_MISSING),
      `the run continuing its checkpoint refuses to commit: ${String((resumed as Error)?.message)}`,
    );
    t.same(await listPoints(store, 'd'), [], 'no point committed');
    const fresh = await snap(store, image, 'd', opts);
    t.equal(fresh.resumed, false, 'the next run starts afresh');
    await expectRestore(t, store, 'd', 'latest', fingerprint(image), dir, 'and its point restores byte-exact');
  },
);
