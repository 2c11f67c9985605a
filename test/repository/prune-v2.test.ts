// v2 prune on repositories written with the format modules: retention rebases the oldest kept point and deletes older
// manifests; the sweep takes three runs a grace period apart (seen, marked, deleted) and never deletes a pack a kept
// point needs; repack copies live blobs out of mostly-unused packs and index compaction merges small index objects;
// after every run every kept point reads back byte-exact, with and without encryption.
import t from 'tap';
import type { Test } from 'tap';
import { EncryptionKey } from '../../src/crypto/keys.js';
import { Domain } from '../../src/repository/domain.js';
import { decodeIndex, encodeIndex, listIndexIds } from '../../src/repository/index-file.js';
import { newObjectId } from '../../src/repository/pack.js';
import { r2 } from '../../src/repository/names.js';
import { readPruneMarks } from '../../src/repository/prune-marks.js';
import { listV2PointSeqs } from '../../src/repository/points.js';
import { Lease } from '../../src/repository/lease.js';
import { prune, pruneLeaseName, pruneStore, SweepPacer } from '../../src/jobs/prune-v2.js';
import { MemoryStore } from '../../src/store/memory/memory-store.js';
import type { ObjectStore } from '../../src/store/types.js';
import { CHUNK, applyChanges, chunkData, readPointV2, writePoint, type Changes } from '../helpers/v2.js';

const COUNT = 48;
const SIZE = COUNT * CHUNK;

async function countPacks(store: ObjectStore, domain: string): Promise<number> {
  let n = 0;
  for await (const _ of store.list(r2.packsPrefix(domain))) n++;
  return n;
}

/** Writes `points` points of disk d: a full one, then each changing `changed` chunks; returns the images. */
async function history(
  store: ObjectStore,
  key: EncryptionKey | undefined,
  points: number,
  changed: number,
  disk = 'd',
  seed = 0,
): Promise<Map<number, Buffer>> {
  const img = Buffer.alloc(SIZE);
  const images = new Map<number, Buffer>();
  for (let p = 1; p <= points; p++) {
    const changes: Changes = new Map();
    if (p === 1) for (let i = 0; i < COUNT; i++) changes.set(i, i % 7 === 6 ? null : chunkData(seed + i + 1));
    else for (let k = 0; k < changed; k++) changes.set((p * 5 + k * 3) % COUNT, chunkData(seed + p * 1000 + k));
    applyChanges(img, changes);
    await writePoint(store, key, disk, p, p === 1 ? null : p - 1, SIZE, changes, 256 * 1024);
    images.set(p, Buffer.from(img));
  }
  return images;
}

async function expectPoints(t: Test, store: ObjectStore, key: EncryptionKey | undefined, images: Map<number, Buffer>, seqs: number[], what: string) {
  for (const s of seqs) {
    const got = await readPointV2(store, key, 'd', s).catch((err) => err as Error);
    t.ok(
      Buffer.isBuffer(got) && got.equals(images.get(s)!),
      `${what}: point ${s} reads back byte-exact${Buffer.isBuffer(got) ? '' : ` (${(got as Error).message})`}`,
    );
  }
}

for (const encrypted of [false, true]) {
  const key = encrypted ? EncryptionKey.fromBytes(Buffer.alloc(32, 3)) : undefined;
  t.test(`retention, then seen / marked / deleted a grace period apart (${encrypted ? 'encrypted' : 'plain'})`, async (t) => {
    const store = new MemoryStore();
    const images = await history(store, key, 6, 10);
    const domain = (await Domain.open(store, key))!;
    const packsBefore = await countPacks(store, domain.name);
    let clock = 1_000_000;
    const now = () => clock;
    const run = (graceMs = 1000, maxUnused = 0) => pruneStore({ store, disk: 'd', keep: 2, encryption: key, graceMs, maxUnused, now });

    const r1 = await run();
    t.same(r1.kept, [5, 6]);
    t.same(r1.deleted, [1, 2, 3, 4]);
    t.same(await listV2PointSeqs(store, 'd', domain.key), [5, 6], 'older manifests are gone');
    await expectPoints(t, store, key, images, [5, 6], 'after retention');
    const d1 = r1.domains[0];
    t.equal(d1.domain, domain.name);
    t.ok(d1.packsSeen > 0, `unused packs are seen (${d1.packsSeen})`);
    t.equal(d1.packsMarked + d1.packsDeleted, 0, 'nothing is marked or deleted on first sight');
    const marks1 = await readPruneMarks(store, domain);
    t.ok([...marks1.packs.values()].every((m) => m.state === 'seen'));

    clock += 500;
    const r2run = await run();
    t.equal(r2run.domains[0].packsMarked, 0, 'within the grace period nothing advances');
    clock += 1000;
    const r3 = await run();
    t.equal(r3.domains[0].packsMarked, d1.packsSeen, 'after the grace period the seen packs are marked');
    t.equal(r3.domains[0].packsDeleted, 0, 'and not deleted yet');
    const marks3 = await readPruneMarks(store, domain);
    t.ok(
      [...marks3.packs.keys()].every((p) => marks3.blocks(p)),
      'marked packs block writers',
    );
    await expectPoints(t, store, key, images, [5, 6], 'after marking');

    clock += 1000;
    const r4 = await run();
    t.equal(r4.domains[0].packsDeleted, d1.packsSeen, 'a grace period later the marked packs are deleted');
    t.equal(await countPacks(store, domain.name), packsBefore - d1.packsSeen);
    t.equal(r4.domains[0].missingChunks, 0);
    const marks4 = await readPruneMarks(store, domain);
    t.ok(
      [...marks4.packs.values()].every((m) => m.state === 'deleted'),
      'deleted packs leave tombstones',
    );
    await expectPoints(t, store, key, images, [5, 6], 'after the sweep');
  });
}

t.test('repack copies the live blobs of mostly unused packs; compaction merges the small index objects', async (t) => {
  const store = new MemoryStore();
  // One big pack per point (4 MiB target), so retention leaves the first pack mostly unused rather than unused.
  const img = Buffer.alloc(SIZE);
  const images = new Map<number, Buffer>();
  for (let p = 1; p <= 4; p++) {
    const changes: Changes = new Map();
    if (p === 1) for (let i = 0; i < COUNT; i++) changes.set(i, chunkData(i + 1));
    else for (let i = 0; i < 20; i++) changes.set((i + p * 7) % COUNT, chunkData(p * 100 + i));
    applyChanges(img, changes);
    await writePoint(store, undefined, 'd', p, p === 1 ? null : p - 1, SIZE, changes, 4 * 1024 * 1024);
    images.set(p, Buffer.from(img));
  }
  const domain = (await Domain.open(store, undefined))!;
  t.equal((await listIndexIds(store, domain.name)).length, 4, 'one index object per point');
  let clock = 0;
  const now = () => clock;
  const r1 = await pruneStore({ store, disk: 'd', keep: 1, graceMs: 10, maxUnused: 0.3, now });
  const d = r1.domains[0];
  t.ok(d.packsRepacked >= 1, `packs repacked: ${d.packsRepacked}`);
  t.ok(d.bytesRewritten > 0 && d.bytesRewritten < SIZE, `bytes rewritten: ${d.bytesRewritten}`);
  t.equal(d.packsWritten, 1, 'the live blobs fit one new pack');
  t.ok(d.indexesDeleted >= 4, `small index objects replaced (${d.indexesDeleted})`);
  await expectPoints(t, store, undefined, images, [4], 'after repack');
  // The repacked sources are marked now; a grace period later they go.
  clock += 20;
  const r2run = await pruneStore({ store, graceMs: 10, maxUnused: 0.3, now });
  t.equal(r2run.domains[0].packsRepacked, 0, 'the copies are not repacked again');
  t.ok(r2run.domains[0].packsDeleted >= d.packsRepacked, 'the repacked sources are deleted');
  await expectPoints(t, store, undefined, images, [4], 'after the sources are deleted');
  clock += 20;
  const r3 = await pruneStore({ store, graceMs: 10, maxUnused: 0.3, now });
  t.equal(r3.domains[0].packsDeleted + r3.domains[0].packsRepacked + r3.domains[0].packsMarked, 0, 'then nothing is left to do');
  t.equal(r3.domains[0].missingChunks, 0);
});

t.test('retention after a replicate leaves a domain another prune is sweeping to it; the CLI prune still waits for it', async (t) => {
  // Seen in an hour-long agent run: three slots' retention prunes queued on one domain's prune lease, one waited past
  // its 30 s and failed a job whose point was committed.
  const store = new MemoryStore();
  const images = await history(store, undefined, 4, 5);
  const sweeping = await Lease.acquire(store, pruneLeaseName('plain'), { holder: 'other-node', ttlMs: 60_000 });
  const r = await prune({ store, disk: 'd', keep: 2 });
  t.same(r.deleted, [1, 2], 'retention deleted the old points');
  t.match(r.domains[0]?.deferred, /another prune is sweeping this repository/, 'the sweep is left to the holder, and said');
  await expectPoints(t, store, undefined, images, [3, 4], 'kept');
  await t.rejects(pruneStore({ store, lease: { waitMs: 0 } }), { code: 'RNODE_LEASE_HELD' }, 'maintenance the caller asked for is not skipped');
  await sweeping.release();
  const after = await pruneStore({ store });
  t.equal(after.domains[0]?.deferred, undefined, 'once free, the domain is swept');
});

t.test("an agent's retention sweeps a domain once per interval; in between it compacts index objects only when they pile up", async (t) => {
  const store = new MemoryStore();
  const images = await history(store, undefined, 5, 5);
  const domain = (await Domain.open(store, undefined))!;
  let clock = 1_000_000;
  const pacer = new SweepPacer(10 * 60_000, () => clock);
  const first = await prune({ store, disk: 'd', keep: 4, pacer });
  t.equal(first.domains[0]?.skipped, undefined, 'the first retention of the process sweeps');
  const generation = (await readPruneMarks(store, domain)).generation;
  t.ok(generation > 0, 'the sweep wrote the marks');

  // 70 more index objects (copies of the compacted one under new ids): what a busy agent's runs add between sweeps.
  const [only] = await listIndexIds(store, domain.name);
  const entries = decodeIndex(await store.get(r2.index(domain.name, only)), domain, only);
  for (let i = 0; i < 70; i++) {
    const id = newObjectId();
    await store.put(r2.index(domain.name, id), encodeIndex(domain, id, entries));
  }
  clock += 60_000;
  const between = await prune({ store, disk: 'd', keep: 3, pacer });
  t.same(between.deleted, [2], 'retention itself runs every time');
  t.match(between.domains[0]?.skipped, /swept less than 10 min ago/, 'the sweep is skipped, and said');
  t.equal((await readPruneMarks(store, domain)).generation, generation, 'no sweep: the marks are untouched');
  t.equal(between.domains[0]?.indexesDeleted, 71, 'the piled-up index objects were compacted');
  t.equal((await listIndexIds(store, domain.name)).length, 1, 'into one');
  await expectPoints(t, store, undefined, images, [3, 4, 5], 'after compaction');

  clock += 10 * 60_000;
  const due = await prune({ store, disk: 'd', keep: 3, pacer });
  t.equal(due.domains[0]?.skipped, undefined, 'an interval later the domain is swept again');
  t.equal((await readPruneMarks(store, domain)).generation, generation + 1, 'and its marks written');
});

t.test("the agent's retention sweeps with the policy's grace period (retention.graceSeconds), the default otherwise", async (t) => {
  for (const graceMs of [undefined, 0]) {
    const store = new MemoryStore();
    await history(store, undefined, 6, 10);
    const runs = [];
    for (let i = 0; i < 3; i++) runs.push((await prune({ store, disk: 'd', keep: 2, graceMs })).domains[0]);
    const seen = runs[0]!.packsSeen;
    t.ok(seen > 0, `retention left ${seen} packs unused`);
    if (graceMs === undefined) {
      t.same(
        runs.slice(1).map((r) => r!.packsMarked + r!.packsDeleted),
        [0, 0],
        'default grace (1 h): nothing marked or deleted yet',
      );
    } else {
      t.equal(runs[1]!.packsMarked, seen, 'grace 0: marked on the next run');
      t.ok(runs[1]!.packsDeleted + runs[2]!.packsDeleted >= seen, 'and deleted by the one after');
    }
  }
});
