// The prune-vs-replicate race with the real write path: replicate of disk b reuses every chunk of a pack that prune
// has seen unused (disk a's pruned point held them). Prune runs (grace 0) exactly when the replicate puts its first
// table segment, before its checkpoint names the reused chunks: prune marks, then deletes the pack, and the
// replicate refuses to commit (RNODE_CHUNK_MISSING), leaving no point. With the default grace period the same runs
// delete nothing, the replicate commits, and later prunes see its reference: b restores byte-exact.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { ErrorCodes } from '../../src/errors.js';
import { r2 } from '../../src/repository/names.js';
import { listPointSeqs } from '../../src/repository/points.js';
import { pruneStore } from '../../src/jobs/prune-v2.js';
import { replicate } from '../../src/jobs/replicate.js';
import { recover } from '../../src/jobs/restore.js';
import { openSource } from '../../src/source/index.js';
import { MemoryStore } from '../../src/store/memory/memory-store.js';
import type { ObjectInfo, PutOptions } from '../../src/store/types.js';
import { randomData, stopCodecWorkersAtEnd, tmpDir } from '../helpers/images.js';

stopCodecWorkersAtEnd(t);

const SIZE = 1024 * 1024;

/** A store that runs a hook once, before the first table segment of disk b is put (its checkpoint's first write). */
class HookedStore extends MemoryStore {
  hook: (() => Promise<void>) | undefined;
  override async put(key: string, data: Uint8Array, opts?: PutOptions): Promise<ObjectInfo> {
    if (this.hook && key.startsWith(`${r2.diskPrefix('plain', 'b')}tables/`)) {
      const h = this.hook;
      this.hook = undefined;
      await h();
    }
    return super.put(key, data, opts);
  }
}

async function scenario(t: t.Test, graceMs: number) {
  const dir = tmpDir(t, 'race-rep');
  const template = path.join(dir, 'template.img');
  const other = path.join(dir, 'other.img');
  fs.writeFileSync(template, randomData(SIZE, 1));
  fs.writeFileSync(other, randomData(SIZE, 2));
  const store = new HookedStore();
  const rep = async (img: string, disk: string) => {
    const source = await openSource(img);
    try {
      // No timed checkpoint: on a loaded machine one split a run's chunks over two packs, and the scenario counts one.
      return await replicate({ store, source, disk, chunkSize: 64 * 1024, checkpointMillis: 10 * 60_000 });
    } finally {
      await source.close();
    }
  };
  await rep(template, 'a');
  await rep(other, 'a');
  // Point 1 of a goes; its pack (the template's chunks) is seen unused.
  const r = await pruneStore({ store, disk: 'a', keep: 1, graceMs });
  t.equal(r.domains[0].packsSeen, 1);
  store.hook = async () => {
    for (let i = 0; i < 2; i++) await pruneStore({ store, graceMs });
  };
  const result = await rep(template, 'b').then(
    (x) => x,
    (err: Error) => err,
  );
  return { store, result, dir, template };
}

t.test('grace 0: prune deletes the pack under the replicate, which refuses to commit', async (t) => {
  const { store, result } = await scenario(t, 0);
  t.ok(result instanceof Error, 'the replicate fails');
  t.equal((result as { code?: string }).code, ErrorCodes.CHUNK_MISSING, `RNODE_CHUNK_MISSING: ${(result as Error).message}`);
  t.same(await listPointSeqs(store, 'b'), [], 'no point of b is committed');
});

t.test('the default grace period: nothing is deleted, the replicate commits, later prunes keep its chunks', async (t) => {
  const { store, result, dir, template } = await scenario(t, 60 * 60_000);
  t.notOk(result instanceof Error, `the replicate commits${result instanceof Error ? `: ${result.message}` : ''}`);
  t.same(await listPointSeqs(store, 'b'), [1]);
  // Hours later: the pack is in use (b's point names its chunks), so it loses its mark and stays.
  let clock = Date.now();
  for (let i = 0; i < 3; i++) {
    clock += 2 * 60 * 60_000;
    const r = await pruneStore({ store, now: () => clock });
    t.equal(r.domains[0].packsDeleted, 0, `run ${i + 1}: nothing deleted`);
  }
  const out = path.join(dir, 'b.img');
  await recover({ store, disk: 'b', out });
  t.ok(fs.readFileSync(out).equals(fs.readFileSync(template)), 'b restores byte-exact');
});

// Retention that waits for the disk's lease (an agent's, after its own run or as a prune job) chose the points to keep
// from a listing made before the wait: a point another writer committed meanwhile was not among them, and was deleted
// once prune held the lease, reported nowhere (the job said deleted: []). Keep 10 of [1, 2] deleted point 2.
t.test('a point committed while retention waits for the lease is kept: the points are listed again under the lease', async (t) => {
  const dir = tmpDir(t, 'race-retention');
  const store = new HookedStore();
  const rep = async (seed: number) => {
    const img = path.join(dir, `v${seed}.img`);
    fs.writeFileSync(img, randomData(SIZE, seed));
    const source = await openSource(img);
    try {
      return await replicate({ store, source, disk: 'b', chunkSize: 64 * 1024, checkpointMillis: 10 * 60_000 });
    } finally {
      await source.close();
    }
  };
  await rep(11);
  let pruning: Promise<Awaited<ReturnType<typeof pruneStore>>> | undefined;
  store.hook = async () => {
    // Point 2 holds the lease: prune lists [1] and waits for it.
    pruning = pruneStore({ store, disk: 'b', keep: 10, lease: { holder: 'retention', ttlMs: 60_000, waitMs: 30_000 } });
    await new Promise((r) => setTimeout(r, 300));
  };
  t.equal((await rep(12)).point, 2, 'point 2 is committed');
  const r = await pruning!;
  t.same(r.deleted, [], 'retention deleted nothing');
  t.same(await listPointSeqs(store, 'b'), [1, 2], 'both points are there');
});
