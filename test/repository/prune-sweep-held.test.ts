// prune --disk --keep while another prune sweeps the domain (holds its prune lease): the retention asked for is done
// and reported (kept, deleted), the sweep is left to the other prune and said so, and the run exits 0. A maintenance-
// only prune still fails, with a message about the sweep, not about a disk being written.
import t from 'tap';
import { ErrorCodes } from '../../src/errors.js';
import { Lease } from '../../src/repository/lease.js';
import { listV2PointSeqs } from '../../src/repository/points.js';
import { pruneLeaseName, pruneStore } from '../../src/jobs/prune-v2.js';
import { MemoryStore } from '../../src/store/memory/memory-store.js';
import type { ObjectStore } from '../../src/store/types.js';
import { fsStore, tmpDir } from '../helpers/images.js';
import { json, runCli } from '../helpers/cli.js';
import { CHUNK, chunkData, writePoint, type Changes } from '../helpers/v2.js';

const COUNT = 8;

/** Points 1..4 of a disk, each changing two chunks of the one before. */
async function fourPoints(store: ObjectStore, disk: string): Promise<void> {
  for (let p = 1; p <= 4; p++) {
    const changes: Changes = new Map();
    if (p === 1) for (let i = 0; i < COUNT; i++) changes.set(i, chunkData(i + 1));
    else for (const i of [p, p + 1]) changes.set(i, chunkData(p * 100 + i));
    await writePoint(store, undefined, disk, p, p === 1 ? null : p - 1, COUNT * CHUNK, changes);
  }
}

t.test('retention runs and is reported while another prune sweeps the domain', async (t) => {
  const store = new MemoryStore();
  await fourPoints(store, 'd');
  const sweeping = await Lease.acquire(store, pruneLeaseName('plain'), { holder: 'other-node', ttlMs: 60_000 });
  t.teardown(() => sweeping.release());

  const r = await pruneStore({ store, disk: 'd', keep: 1 });
  t.same(r.kept, [4]);
  t.same(r.deleted, [1, 2, 3], 'the points retention deleted are reported');
  t.same(await listV2PointSeqs(store, 'd'), [4]);
  t.match(r.domains[0]?.sweptBy, /^other-node\//, 'the holder of the sweep is named');
  t.match(r.domains[0]?.deferred, /another prune is sweeping this repository \(holder other-node\//);
  t.equal(r.domains[0]?.packsDeleted, 0, 'no sweep ran');

  const held = await pruneStore({ store }).catch((err) => err as Error & { code?: string });
  t.equal(held.code, ErrorCodes.LEASE_HELD, 'maintenance only: the sweep asked for could not run');
  t.match(held.message, /another prune is sweeping this repository/);
  t.notMatch(held.message, /disk prune\.plain|being written/, "the domain's prune lease is not called a disk being written");
});

t.test('the CLI: prune --disk --keep exits 0 and says what it deleted and that the sweep was left', async (t) => {
  const dir = tmpDir(t, 'prune-held');
  const store = fsStore(dir);
  await fourPoints(store, 'a');
  await fourPoints(store, 'b');
  const sweeping = await Lease.acquire(store, pruneLeaseName('plain'), { holder: 'other-node', ttlMs: 60_000 });
  t.teardown(() => sweeping.release());

  const j = await runCli(['prune', '--store', dir, '--disk', 'a', '--keep', '1', '--json']);
  t.equal(j.code, 0, j.stderr);
  const out = json(j);
  t.same([out.kept, out.deleted], [[4], [1, 2, 3]], '--json carries kept and deleted');
  t.match(out.domains[0].deferred, /another prune is sweeping this repository/);

  const text = await runCli(['prune', '--store', dir, '--disk', 'b', '--keep', '1']);
  t.equal(text.code, 0, text.stderr);
  t.match(text.stdout, /kept point 4 of disk b; deleted 1, 2, 3/);
  t.match(text.stdout, /repository plain: not swept: another prune is sweeping this repository \(holder other-node\/[^)]*\)/);
  t.notMatch(text.stdout + text.stderr, /being written/);

  const only = await runCli(['prune', '--store', dir]);
  t.equal(only.code, 1, 'maintenance only fails: the sweep is all it was asked for');
  t.match(only.stderr, /RNODE_LEASE_HELD: another prune is sweeping this repository/);
});
