// Points restored after later points were added and after prune (--keep 2, then --keep 1, over points with
// changes in between): every kept point restores byte-exact, pruned points are gone from the list and cannot
// be restored, verify of all points is ok, and the chunk objects left are exactly those the kept points
// reference (no unused pack bytes once the grace periods have passed, and check is ok), as are the tables.
import t from 'tap';
import type { Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { ErrorCodes } from '../../src/errors.js';
import { prune, pruneStore } from '../../src/jobs/prune-v2.js';
import { check } from '../../src/jobs/check.js';
import { stats } from '../../src/jobs/stats.js';
import { listPointSeqs } from '../../src/repository/points.js';
import { verify } from '../../src/jobs/verify.js';
import type { ObjectStore } from '../../src/store/index.js';
import {
  KiB,
  MiB,
  expectRestore,
  fingerprint,
  fsStore,
  listFiles,
  randomData,
  restore,
  snap,
  tmpDir,
  writeAt,
  type Fingerprint,
  stopCodecWorkersAtEnd,
} from '../helpers/images.js';

stopCodecWorkersAtEnd(t);

const CHUNK = 64 * KiB;
const SIZE = 2 * MiB + 5000; // 33 chunks, the last one partial
const COUNT = Math.ceil(SIZE / CHUNK);

/** Tracks which point's chunk object holds each index (0: zero) in every point, and each point's bytes. */
class Model {
  views = new Map<number, number[]>();
  fps = new Map<number, Fingerprint>();
  private current: number[] = new Array(COUNT).fill(0);
  record(point: number, changed: Map<number, 'data' | 'zero'>, fp: Fingerprint): void {
    for (const [i, kind] of changed) this.current[i] = kind === 'data' ? point : 0;
    this.views.set(point, [...this.current]);
    this.fps.set(point, fp);
  }
  /** Chunk objects ("writer/index") the given points reference. */
  objects(points: number[]): string[] {
    const s = new Set<string>();
    for (const p of points)
      this.views.get(p)!.forEach((w, i) => {
        if (w !== 0) s.add(`${w}/${i}`);
      });
    return [...s].sort();
  }
}

interface Disk {
  dir: string;
  storeDir: string;
  img: string;
  store: ObjectStore;
  model: Model;
  next: number;
}

async function newDisk(t: Test): Promise<Disk> {
  const dir = tmpDir(t, 'prune');
  const d: Disk = {
    dir,
    storeDir: path.join(dir, 'store'),
    img: path.join(dir, 'disk.img'),
    store: fsStore(path.join(dir, 'store')),
    model: new Model(),
    next: 1,
  };
  const all = new Map<number, 'data' | 'zero'>();
  for (let i = 0; i < COUNT; i++) all.set(i, 'data');
  fs.writeFileSync(d.img, randomData(SIZE, 100));
  await point(t, d, all, true);
  return d;
}

/** Applies changes to the image (random data or zeros per chunk), replicates, and records the model. */
async function point(t: Test, d: Disk, changes: Map<number, 'data' | 'zero'>, first = false): Promise<void> {
  if (!first) {
    for (const [i, kind] of changes) {
      const len = Math.min(CHUNK, SIZE - i * CHUNK);
      writeAt(d.img, i * CHUNK, kind === 'data' ? randomData(len, d.next * 1000 + i) : Buffer.alloc(len));
    }
  }
  const r = await snap(d.store, d.img, 'vm', first ? { chunkSize: CHUNK } : {});
  t.equal(r.point, d.next, `point ${d.next} written`);
  t.equal(r.chunksChanged, changes.size, `point ${d.next}: ${changes.size} changed chunks`);
  d.model.record(d.next, changes, fingerprint(d.img));
  d.next++;
}

const ch = (entries: Array<[number, 'data' | 'zero']>) => new Map(entries);

async function fourPoints(t: Test): Promise<Disk> {
  const d = await newDisk(t);
  await point(
    t,
    d,
    ch([
      [3, 'data'],
      [4, 'data'],
      [10, 'zero'],
    ]),
  );
  await point(
    t,
    d,
    ch([
      [3, 'data'],
      [32, 'data'],
      [20, 'zero'],
    ]),
  );
  await point(
    t,
    d,
    ch([
      [10, 'data'],
      [0, 'data'],
    ]),
  );
  t.equal((await stats({ store: d.store })).unusedBytes, 0, 'before prune: every chunk stored is in use');
  // Restores of older points after later points were added.
  for (const p of [1, 2, 3, 4]) await expectRestore(t, d.store, 'vm', p, d.model.fps.get(p)!, d.dir, `point ${p} (before prune)`);
  return d;
}

async function checkAfterPrune(t: Test, d: Disk, kept: number[], gone: number[]): Promise<void> {
  t.same(await listPointSeqs(d.store, 'vm'), kept, `points now ${kept.join(', ')}`);
  for (const p of kept) await expectRestore(t, d.store, 'vm', p, d.model.fps.get(p)!, d.dir, `kept point ${p}`);
  for (const p of gone) {
    await t.rejects(
      restore(d.store, 'vm', p, path.join(d.dir, `gone-${p}.img`)),
      { code: ErrorCodes.POINT_NOT_FOUND },
      `pruned point ${p} cannot be restored`,
    );
  }
  const v = await verify({ store: d.store, disk: 'vm', point: 'all' });
  t.equal(v.ok, true, 'verify --point all is ok');
  t.same(v.problems, []);
  t.same(v.points, kept);
  // Two more runs with grace 0 take what the kept points no longer use from seen (or repacked) to marked to deleted.
  for (let i = 0; i < 2; i++) await pruneStore({ store: d.store, graceMs: 0, maxUnused: 0.01 });
  t.equal((await stats({ store: d.store })).unusedBytes, 0, 'exactly the chunks the kept points reference remain');
  t.ok((await check({ store: d.store })).ok, 'check is ok');
  const tableSeqs = [...new Set(listFiles(path.join(d.storeDir, 'r2', 'plain', 'disks', 'vm', 'tables')).map((f) => Number(f.split('/')[0])))].sort(
    (a, b) => a - b,
  );
  t.same(tableSeqs, kept, 'only kept points have tables');
  t.same(listFiles(path.join(d.storeDir, 'r2', 'plain', 'disks', 'vm', 'pending')), [], 'no checkpoints left');
}

t.test('prune --keep 2 over 4 points, then a new point, then --keep 1', async (t) => {
  const d = await fourPoints(t);
  const r = await pruneStore({ store: d.store, disk: 'vm', keep: 2, graceMs: 0, maxUnused: 0.01 });
  t.same(r.kept, [3, 4]);
  t.same(r.deleted, [1, 2]);
  t.ok(r.domains[0].packsSeen + r.domains[0].packsRepacked > 0, 'what only points 1 and 2 used is seen unused or repacked away');
  await checkAfterPrune(t, d, [3, 4], [1, 2]);

  // Incrementals continue on the pruned (rebased) chain.
  await point(
    t,
    d,
    ch([
      [4, 'data'],
      [20, 'data'],
    ]),
  );
  await expectRestore(t, d.store, 'vm', 5, d.model.fps.get(5)!, d.dir, 'point 5 written after prune');

  const r1 = await pruneStore({ store: d.store, disk: 'vm', keep: 1, graceMs: 0, maxUnused: 0.01 });
  t.same(r1.kept, [5]);
  t.same(r1.deleted, [3, 4]);
  await checkAfterPrune(t, d, [5], [1, 2, 3, 4]);

  // Prune again with nothing to delete changes nothing.
  const r2run = await pruneStore({ store: d.store, disk: 'vm', keep: 1, graceMs: 0, maxUnused: 0.01 });
  t.same(r2run.deleted, []);
  t.equal(r2run.domains[0].packsSeen + r2run.domains[0].packsMarked + r2run.domains[0].packsDeleted, 0, 'no pack changes state');
  await point(t, d, ch([[31, 'zero']]));
  await checkAfterPrune(t, d, [5, 6], [1, 2, 3, 4]);
});

t.test('prune --keep 1 over 4 points', async (t) => {
  const d = await fourPoints(t);
  const r = await pruneStore({ store: d.store, disk: 'vm', keep: 1, graceMs: 0, maxUnused: 0.01 });
  t.same(r.kept, [4]);
  t.same(r.deleted, [1, 2, 3]);
  await checkAfterPrune(t, d, [4], [1, 2, 3]);
});

t.test('prune --keep 2 over 4 points (keep more than exist is a no-op)', async (t) => {
  const d = await fourPoints(t);
  const r0 = await prune({ store: d.store, disk: 'vm', keep: 10 });
  t.same(r0.kept, [1, 2, 3, 4]);
  t.same(r0.deleted, []);
  await checkAfterPrune(t, d, [1, 2, 3, 4], []);
  await pruneStore({ store: d.store, disk: 'vm', keep: 2, graceMs: 0, maxUnused: 0.01 });
  await checkAfterPrune(t, d, [3, 4], [1, 2]);
});

t.test('prune rejects keep < 1 and an unknown disk with their codes', async (t) => {
  const dir = tmpDir(t, 'prune');
  const store = fsStore(path.join(dir, 'store'));
  await t.rejects(prune({ store, disk: 'vm', keep: 0 }), { code: ErrorCodes.USAGE });
  await t.rejects(prune({ store, disk: 'nope', keep: 1 }), { code: ErrorCodes.DISK_NOT_FOUND });
  await t.rejects(prune({ store, disk: '../x', keep: 1 }), { code: ErrorCodes.BAD_DISK_ID });
});
