// Shared by the prune crash tests (two files, so each stays well inside the per-file timeout) and the SIGTERM test of
// prune: a v2 repository with work for every step of prune, and the checks run after a SIGKILL or SIGTERM.
import type { Test } from 'tap';
import path from 'node:path';
import { Domain } from '../../src/repository/domain.js';
import { listV2PointSeqs } from '../../src/repository/points.js';
import { check } from '../../src/jobs/check.js';
import { pruneStore } from '../../src/jobs/prune-v2.js';
import { stats } from '../../src/jobs/stats.js';
import { fsStore, tmpDir } from './images.js';
import { json, runCli } from './cli.js';
import { CHUNK, applyChanges, chunkData, readPointV2, writePoint, type Changes } from './v2.js';

const COUNT = 32;
const SIZE = COUNT * CHUNK;

export const FAILPOINTS = [
  'prune-legacy-retained',
  'prune-rebased',
  'prune-manifest-deleted',
  'prune-pack-deleted',
  'prune-marks-written',
  'prune-repack-marked',
  'prune-repack-pack-written',
  'prune-repack-indexed',
  'prune-index-written',
];

/** Six points, then two in-process prunes keeping four (grace 0): the packs only points 1-2 used are marked. */
export async function setup(t: Test): Promise<{ dir: string; images: Map<number, Buffer> }> {
  const dir = path.join(tmpDir(t, 'prune-crash'), 'store');
  const store = fsStore(dir);
  const img = Buffer.alloc(SIZE);
  const images = new Map<number, Buffer>();
  for (let p = 1; p <= 6; p++) {
    const changes: Changes = new Map();
    if (p === 1) for (let i = 0; i < COUNT; i++) changes.set(i, chunkData(i + 1));
    // Points 2 and 3 rewrite the same chunks, so point 2's pack is unused once point 2 goes.
    else for (let k = 0; k < 12; k++) changes.set(p <= 3 ? k : (p * 7 + k) % COUNT, chunkData(p * 100 + k));
    applyChanges(img, changes);
    // Big packs (one per point), so retention leaves packs partly used: repack has work.
    await writePoint(store, undefined, 'd', p, p === 1 ? null : p - 1, SIZE, changes, 8 * 1024 * 1024);
    images.set(p, Buffer.from(img));
  }
  for (let i = 0; i < 2; i++) await pruneStore({ store, disk: 'd', keep: 4, graceMs: 0, maxUnused: 0 });
  return { dir, images };
}

export async function expectIntact(t: Test, dir: string, images: Map<number, Buffer>, what: string, cli = true): Promise<number[]> {
  const store = fsStore(dir);
  const domain = (await Domain.open(store, undefined))!;
  const seqs = await listV2PointSeqs(store, 'd', domain.key);
  t.ok(seqs.includes(5) && seqs.includes(6), `${what}: the kept points are listed (${seqs.join(', ')})`);
  for (const s of seqs) {
    const got = await readPointV2(store, undefined, 'd', s).catch((e: Error) => e);
    t.ok(
      Buffer.isBuffer(got) && got.equals(images.get(s)!),
      `${what}: point ${s} reads back byte-exact${Buffer.isBuffer(got) ? '' : `: ${got.message}`}`,
    );
  }
  if (cli) {
    const c = await runCli(['check', '--store', dir, '--read-data', '--json']);
    t.equal(c.code, 0, `${what}: rnode check --read-data is ok: ${c.stdout.slice(0, 600)} ${c.stderr}`);
  } else {
    const c = await check({ store, readData: true });
    t.ok(c.ok, `${what}: check --read-data is ok: ${JSON.stringify(c.problems.slice(0, 3))}`);
  }
  return seqs;
}

export const pruneArgs = (dir: string) => ['prune', '--store', dir, '--disk', 'd', '--keep', '2', '--grace', '0', '--max-unused', '20', '--json'];

export function uninterruptedTest(t: Test): void {
  t.test('the run that is never killed', async (t) => {
    const { dir, images } = await setup(t);
    const r = await runCli(pruneArgs(dir));
    t.equal(r.code, 0, r.stderr);
    const out = json(r);
    t.same(out.kept, [5, 6]);
    const d = out.domains[0];
    t.ok(d.packsDeleted > 0, `packs deleted: ${d.packsDeleted}`);
    t.ok(d.packsRepacked > 0, `packs repacked: ${d.packsRepacked}`);
    t.ok(d.indexesWritten > 0, `index objects written: ${d.indexesWritten}`);
    await expectIntact(t, dir, images, 'uninterrupted');
  });
}

/** One test per failpoint: killed there, then intact, then finished by the next runs. */
export function crashTests(t: Test, failpoints: string[]): void {
  for (const fp of failpoints) {
    t.test(`SIGKILL at ${fp}`, async (t) => {
      const { dir, images } = await setup(t);
      const crashed = await runCli(pruneArgs(dir), { env: { RNODE_FAILPOINT: fp } });
      t.equal(crashed.signal, 'SIGKILL', `prune was killed at ${fp} (${crashed.stderr.trim()})`);
      await expectIntact(t, dir, images, `after the crash at ${fp}`);
      // The next runs finish the work: retention, then each grace period's step (the dead run's leases are broken:
      // its process is gone).
      for (let i = 0; i < 3; i++) await pruneStore({ store: fsStore(dir), disk: 'd', keep: 2, graceMs: 0, maxUnused: 0.2 });
      const seqs = await expectIntact(t, dir, images, `after the crash at ${fp} and three more runs`, false);
      t.same(seqs, [5, 6], 'only the kept points are left');
      t.equal((await stats({ store: fsStore(dir) })).unusedBytes, 0, 'nothing unused is left');
    });
  }
}
