// Regression: a prune stopped between deleting a disk's manifests and deleting their tables (SIGKILL at
// prune-manifest-deleted, or a table delete refused by the store) leaked those tables for good: the next prune found
// no point to delete and returned before its stale-table sweep, a maintenance-only prune never swept tables, and check
// said nothing. The crash tests of prune-crash.test.ts delete two points, so the rerun always deleted the second and
// swept the first's tables by luck. Here the crashed prune deletes the only point it deletes.
import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { ErrorCodes } from '../../src/errors.js';
import { pruneStore } from '../../src/jobs/prune-v2.js';
import { Lease } from '../../src/repository/lease.js';
import { FaultyStore } from '../../src/testing.js';
import { json, runCli } from '../helpers/cli.js';
import { fsStore } from '../helpers/images.js';
import { crashTests, expectIntact, setup } from '../helpers/prune-crash.js';

/** Table segment files of disk d, as `<point>/<generation>-<segment>`. */
function tableFiles(dir: string): string[] {
  const tables = path.join(dir, 'r2', 'plain', 'disks', 'd', 'tables');
  return fs
    .readdirSync(tables)
    .flatMap((p) => fs.readdirSync(path.join(tables, p)).map((f) => `${p}/${f}`))
    .sort();
}

/** setup() leaves points 3-6, point 3 standalone; keeping 3 rebases point 4 (generation 1) and deletes point 3. */
const KEPT_TABLES = ['0000000004/g0001-00000000', '0000000005/g0000-00000000', '0000000006/g0000-00000000'];
/** After the crash: point 3's table and point 4's table from before its rebase are left as well. */
const LEAKED_TABLES = ['0000000003/g0001-00000000', '0000000004/g0000-00000000'];

async function unreferencedTableSegments(t: Test, dir: string, what: string): Promise<number> {
  const c = await runCli(['check', '--store', dir, '--json']);
  t.equal(c.code, 0, `${what}: rnode check is ok: ${c.stdout.slice(0, 600)} ${c.stderr}`);
  return json(c).domains[0].unreferencedTableSegments;
}

async function crashDeletingPoint3(t: Test): Promise<{ dir: string; images: Map<number, Buffer> }> {
  const { dir, images } = await setup(t);
  const args = ['prune', '--store', dir, '--disk', 'd', '--keep', '3', '--grace', '0', '--json'];
  const crashed = await runCli(args, { env: { RNODE_FAILPOINT: 'prune-manifest-deleted' } });
  t.equal(crashed.signal, 'SIGKILL', `prune was killed after deleting point 3's manifest (${crashed.stderr.trim()})`);
  t.same(tableFiles(dir), [...LEAKED_TABLES, ...KEPT_TABLES].sort(), 'the tables of point 3 and of point 4 before its rebase are left');
  t.same(await expectIntact(t, dir, images, 'after the crash'), [4, 5, 6]);
  t.equal(await unreferencedTableSegments(t, dir, 'after the crash'), 2, 'check counts the two table segments no point uses');
  return { dir, images };
}

t.test('killed after deleting the only point it deletes: the next retention, deleting nothing, removes its tables', async (t) => {
  const { dir, images } = await crashDeletingPoint3(t);
  const r = await runCli(['prune', '--store', dir, '--disk', 'd', '--keep', '3', '--grace', '0', '--json']);
  t.equal(r.code, 0, r.stderr);
  const out = json(r);
  t.same([out.kept, out.deleted], [[4, 5, 6], []], 'no point left to delete');
  t.equal(out.objectsDeleted, 2, 'the two leaked table segments were deleted');
  t.same(tableFiles(dir), KEPT_TABLES, 'only the tables of the kept points are left');
  t.same(await expectIntact(t, dir, images, 'after the next retention'), [4, 5, 6]);
  t.equal(await unreferencedTableSegments(t, dir, 'after the next retention'), 0);
});

t.test('killed after deleting the only point it deletes: a maintenance-only prune removes its tables', async (t) => {
  const { dir, images } = await crashDeletingPoint3(t);
  const r = await runCli(['prune', '--store', dir, '--grace', '0', '--json']);
  t.equal(r.code, 0, r.stderr);
  t.equal(json(r).domains[0].tableObjectsDeleted, 2, 'the two leaked table segments were deleted');
  t.same(tableFiles(dir), KEPT_TABLES, 'only the tables of the kept points are left');
  t.same(await expectIntact(t, dir, images, 'after the maintenance-only prune'), [4, 5, 6]);
  t.equal(await unreferencedTableSegments(t, dir, 'after the maintenance-only prune'), 0);
});

t.test('a table delete refused by the store: the next retention removes the table', async (t) => {
  const { dir, images } = await setup(t);
  const refusing = new FaultyStore(fsStore(dir)).addFault('delete', {
    match: (k) => k.includes('/tables/0000000003/'),
    error: { code: ErrorCodes.STORE_AUTH, message: 'injected: access denied' },
  });
  await t.rejects(pruneStore({ store: refusing, disk: 'd', keep: 3, graceMs: 0 }), { code: ErrorCodes.STORE_AUTH });
  refusing.assertAllFired();
  // Deletes run side by side: point 4's table from before its rebase may be gone too.
  const left = tableFiles(dir).filter((f) => !KEPT_TABLES.includes(f));
  t.ok(left.includes('0000000003/g0001-00000000'), `point 3's table is left (${left.join(', ')})`);
  const r = await pruneStore({ store: fsStore(dir), disk: 'd', keep: 3, graceMs: 0 });
  t.same([r.kept, r.deleted, r.objectsDeleted], [[4, 5, 6], [], left.length], 'no point left to delete; the tables left were deleted');
  t.same(tableFiles(dir), KEPT_TABLES, 'only the tables of the kept points are left');
  t.same(await expectIntact(t, dir, images, 'after the next retention'), [4, 5, 6]);
});

t.test("a maintenance-only prune leaves the tables of a disk whose lease is held (a writer's) to a later prune", async (t) => {
  const { dir } = await setup(t);
  const refusing = new FaultyStore(fsStore(dir)).addFault('delete', {
    match: (k) => k.includes('/tables/'),
    times: Infinity,
    error: { code: ErrorCodes.STORE_AUTH },
  });
  await t.rejects(pruneStore({ store: refusing, disk: 'd', keep: 3, graceMs: 0 }), { code: ErrorCodes.STORE_AUTH });
  const left = tableFiles(dir);
  t.same(left, [...LEAKED_TABLES, ...KEPT_TABLES].sort(), 'no table was deleted');
  const held = await Lease.acquire(fsStore(dir), 'd');
  const r = await pruneStore({ store: fsStore(dir), graceMs: 0 });
  t.equal(r.domains[0].tableObjectsDeleted, 0, 'nothing deleted while the lease is held');
  t.same(tableFiles(dir), left);
  await held.release();
  const after = await pruneStore({ store: fsStore(dir), graceMs: 0 });
  t.equal(after.domains[0].tableObjectsDeleted, 2);
  t.same(tableFiles(dir), KEPT_TABLES, 'deleted once the lease is free');
});

// A SIGKILL inside the stale-table sweep itself: the next runs finish it (the shared crash checks).
crashTests(t, ['prune-table-deleted']);
