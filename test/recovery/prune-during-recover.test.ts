// Retention under a running recover or verify: prune rebases the oldest kept point onto a table of its own and deletes
// the older points and their tables. A recover of a kept point that loaded its chain before that (or is still loading
// it) must finish byte-exact, not fail with RNODE_MANIFEST_CORRUPT ("the store is damaged") on a store that is whole.
// A gate holds one read of the recover until the prune has run, so the race is certain, not a matter of timing.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { pruneStore } from '../../src/jobs/prune-v2.js';
import { recover } from '../../src/jobs/restore.js';
import { verify } from '../../src/jobs/verify.js';
import { codecWorkers } from '../../src/pipeline/codec-workers.js';
import type { ObjectStore } from '../../src/store/types.js';
import { gated } from '../helpers/gate.js';
import { sha256File, tmpDir } from '../helpers/images.js';
import { pointsWithCopies } from '../export/helpers.js';

t.setTimeout(120_000);
t.teardown(() => codecWorkers().close());

const prune = (store: ObjectStore, keep: number) => pruneStore({ store, disk: 'vm', keep, graceMs: 0, maxUnused: 0, lease: false });

t.test('recover of a kept point whose older tables prune deletes as it reads them: byte-exact', async (t) => {
  const dir = tmpDir(t, 'prune-recover');
  const { store, copies } = await pointsWithCopies(dir, 4);
  // The first table read of point 1: the recover has its chain (4, 3, 2, 1) and starts reading its tables.
  const g = gated(store, (key) => key.includes('/tables/0000000001/'));
  const out = path.join(dir, 'out.img');
  const running = recover({ store: g.store, disk: 'vm', point: '4', out });
  running.catch(() => undefined);
  await g.held;
  const r = await prune(store, 2);
  t.same(
    [r.kept, r.deleted],
    [
      [3, 4],
      [1, 2],
    ],
    'prune kept points 3 and 4, rebasing 3',
  );
  g.release();
  const done = await running;
  t.equal(done.point, 4);
  t.equal(sha256File(out), sha256File(copies[3]), 'point 4 recovered byte-exact');
});

t.test('recover of a kept point whose chain is being loaded as prune deletes its ancestors: byte-exact', async (t) => {
  const dir = tmpDir(t, 'prune-chain');
  const { store, copies } = await pointsWithCopies(dir, 4);
  // The manifest of point 2, read while the chain of point 4 is walked: prune deletes it meanwhile.
  const g = gated(store, (key) => /\/points\/0000000002$/.test(key));
  const out = path.join(dir, 'out.img');
  const running = recover({ store: g.store, disk: 'vm', point: '4', out });
  running.catch(() => undefined);
  await g.held;
  const r = await prune(store, 2);
  t.same(r.deleted, [1, 2], 'prune deleted points 1 and 2');
  g.release();
  await running;
  t.equal(sha256File(out), sha256File(copies[3]), 'point 4 recovered byte-exact');
});

t.test('verify of a kept point while prune rebases it: no problem reported', async (t) => {
  const dir = tmpDir(t, 'prune-verify');
  const { store } = await pointsWithCopies(dir, 4);
  const g = gated(store, (key) => key.includes('/tables/0000000001/'));
  const running = verify({ store: g.store, disk: 'vm', point: '4' });
  running.catch(() => undefined);
  await g.held;
  await prune(store, 2);
  g.release();
  const v = await running;
  t.same(v.problems, [], 'no problem');
  t.equal(v.ok, true);
});

t.test('a table really missing (not a rebase) still fails the recover, and leaves no output', async (t) => {
  const dir = tmpDir(t, 'prune-missing');
  const { store } = await pointsWithCopies(dir, 3);
  const table = path.join(dir, 'store', 'r2', 'plain', 'disks', 'vm', 'tables', '0000000002', 'g0000-00000000');
  t.ok(fs.existsSync(table));
  fs.rmSync(table);
  const out = path.join(dir, 'out.img');
  await t.rejects(recover({ store, disk: 'vm', point: '3', out }), { code: 'RNODE_MANIFEST_CORRUPT' });
  t.notOk(fs.existsSync(out), 'no output left');
});
