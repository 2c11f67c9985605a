// Retention under a running export: prune rebases the oldest kept point onto a standalone table and deletes the
// older tables. An export of a kept point (read-only, or writable over an overlay) must keep serving it byte-exact
// (it loads the point's chain again when a table it had not read yet is gone); an export of a point prune deleted
// fails its reads with EIO and a log line that says so.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { ChunkIndex } from '../../src/export/chunk-index.js';
import { pruneStore } from '../../src/jobs/prune-v2.js';
import { codecWorkers } from '../../src/pipeline/codec-workers.js';
import { loadChain } from '../../src/repository/points.js';
import { fsStore, sha256File, snap, tmpDir, writeAt } from '../helpers/images.js';
import { CHUNK, compare, haveTools, makeDisk, nbdMap, pointsWithCopies, run, serveExport, unixUrl } from './helpers.js';

t.setTimeout(180_000);
t.teardown(() => codecWorkers().close());

type Log = Array<{ event: string; fields: Record<string, unknown> }>;

const prune = (store: ReturnType<typeof fsStore>, keep: number) => pruneStore({ store, disk: 'vm', keep, graceMs: 0, maxUnused: 0 });

t.test(
  'a kept point stays readable byte-exact after prune rebased it under a read-only export',
  { skip: !haveTools && 'tools missing' },
  async (t) => {
    const dir = tmpDir(t, 'export-prune');
    const { store, copies } = await pointsWithCopies(dir, 2);
    const logs: Log = [];
    const exp = await serveExport(t, dir, { store, disk: 'vm', point: '2', log: (event, fields) => logs.push({ event, fields }) });
    const r = await prune(store, 1);
    t.same([r.kept, r.deleted], [[2], [1]], 'prune kept point 2 and deleted point 1');
    const url = unixUrl(exp.socket, 'vm');
    const out = path.join(dir, 'out.img');
    // Several connections with requests in flight: all of them find the old tables gone at once.
    const c = await run('nbdcopy', ['--connections=4', '--requests=8', url, out]);
    t.equal(c.code, 0, `nbdcopy ok ${c.stderr}`);
    t.equal(sha256File(out), sha256File(copies[1]), 'nbdcopy of the kept point: byte-exact');
    t.ok((await nbdMap(url)).length > 0, 'block status answers');
    t.same(
      logs.filter((l) => l.event === 'request-failed' || l.event === 'chunk-read-failed'),
      [],
      'no request failed',
    );
  },
);

t.test(
  '4 points, keep 2: exports of point 4 and 3 (another rebased table in the chain) stay byte-exact',
  { skip: !haveTools && 'tools missing' },
  async (t) => {
    const dir = tmpDir(t, 'export-prune4');
    const { store, copies } = await pointsWithCopies(dir, 4);
    const exp = await serveExport(t, dir, { store, disk: 'vm' });
    t.equal(exp.point, 4);
    const r = await prune(store, 2);
    t.same(
      [r.kept, r.deleted],
      [
        [3, 4],
        [1, 2],
      ],
      'prune kept points 3 and 4',
    );
    for (const [name, want] of [
      ['vm', copies[3]],
      ['vm@3', copies[2]],
    ]) {
      const c = await compare(want, unixUrl(exp.socket, name));
      t.equal(c.code, 0, `${name} is byte-exact after prune ${c.stdout}${c.stderr}`);
    }
  },
);

t.test(
  'a writable export over an overlay: reads and writes work after prune rebased its point',
  { skip: !haveTools && 'tools missing' },
  async (t) => {
    const dir = tmpDir(t, 'export-prune-rw');
    const { store, copies } = await pointsWithCopies(dir, 2);
    const overlay = path.join(dir, 'ov');
    const exp = await serveExport(t, dir, { store, disk: 'vm', point: '2', writable: true, overlay });
    await prune(store, 1);
    const url = unixUrl(exp.socket, 'vm');
    // A write of part of a chunk copies the rest of it from the point first.
    const w = await run('qemu-io', ['-f', 'raw', '-c', `write -P 0x5a ${3 * CHUNK + 512} 4096`, url]);
    t.equal(w.code, 0, `write ok ${w.stdout}${w.stderr}`);
    const expected = path.join(dir, 'expected.img');
    fs.copyFileSync(copies[1], expected);
    writeAt(expected, 3 * CHUNK + 512, Buffer.alloc(4096, 0x5a));
    const c = await compare(expected, url);
    t.equal(c.code, 0, `the export reads the point with the write on top ${c.stdout}${c.stderr}`);
  },
);

t.test('a point prune deleted: reads fail with EIO and a log line that says it was deleted', { skip: !haveTools && 'tools missing' }, async (t) => {
  const dir = tmpDir(t, 'export-prune-gone');
  const { store } = await pointsWithCopies(dir, 2);
  const logs: Log = [];
  const exp = await serveExport(t, dir, { store, disk: 'vm', point: '1', log: (event, fields) => logs.push({ event, fields }) });
  await prune(store, 1);
  const r = await run('qemu-io', ['-r', '-f', 'raw', '-c', `read 0 ${CHUNK}`, unixUrl(exp.socket, 'vm')]);
  t.match(r.stdout + r.stderr, /Input\/output error|failed/i, 'the read fails');
  const failed = logs.find((l) => l.event === 'request-failed');
  t.ok(failed, 'request-failed is logged');
  t.match(
    failed?.fields,
    { code: 'RNODE_POINT_NOT_FOUND', message: /point 1 of disk vm was deleted while it was exported/ },
    'with the real message',
  );
});

// The export had read the point's tables before prune deleted it and swept its packs: its next read found the chunk
// in no pack, and said so (RNODE_CHUNK_MISSING: "restore another point or re-replicate"), as if the store were damaged.
t.test(
  'a point prune deleted after the export read its tables: the log says it was deleted, not that a chunk is missing',
  { skip: !haveTools && 'tools missing' },
  async (t) => {
    const dir = tmpDir(t, 'export-prune-gone-loaded');
    // Two points without a chunk in common: point 1's packs are all swept once it is deleted.
    const store = fsStore(path.join(dir, 'store'));
    const image = path.join(dir, 'disk.img');
    for (const seed of [1, 50]) {
      makeDisk(image, seed);
      await snap(store, image, 'vm', { chunkSize: CHUNK, lease: false });
    }
    const logs: Log = [];
    const exp = await serveExport(t, dir, { store, disk: 'vm', point: '1', log: (event, fields) => logs.push({ event, fields }) });
    const url = unixUrl(exp.socket, 'vm');
    const first = await run('qemu-io', ['-r', '-f', 'raw', '-c', `read 0 ${CHUNK}`, url]);
    t.equal(first.code, 0, `the first read is served: the point's table is loaded ${first.stderr}`);
    // Deleted, then its packs swept by the repository's prunes (a pack's chunks are marked by one, deleted by the next).
    await prune(store, 1);
    for (let i = 0; i < 2; i++) await pruneStore({ store, graceMs: 0, maxUnused: 0 });
    const r = await run('qemu-io', ['-r', '-f', 'raw', '-c', `read ${2 * CHUNK} ${CHUNK}`, url]);
    t.match(r.stdout + r.stderr, /Input\/output error|failed/i, 'the read fails');
    const failed = logs.find((l) => l.event === 'request-failed');
    t.match(
      failed?.fields,
      { code: 'RNODE_POINT_NOT_FOUND', message: /point 1 of disk vm was deleted while it was exported/ },
      'with the real message',
    );
  },
);

t.test('lookups in flight while the chain reloads: one reload, entries as a fresh index of the rebased point', async (t) => {
  const dir = tmpDir(t, 'export-prune-index');
  const { store } = await pointsWithCopies(dir, 2);
  let reloads = 0;
  const index = new ChunkIndex(store, await loadChain(store, 'vm', 2), undefined, undefined, () => {
    reloads++;
    return loadChain(store, 'vm', 2);
  });
  await prune(store, 1);
  const fresh = new ChunkIndex(store, await loadChain(store, 'vm', 2));
  const chunks = [...Array(index.chunks).keys()];
  const [got, want] = await Promise.all([Promise.all(chunks.map((i) => index.lookup(i))), Promise.all(chunks.map((i) => fresh.lookup(i)))]);
  t.equal(reloads, 1, 'the chain was loaded again once for all lookups');
  t.ok(
    got.every((e, i) => (e === undefined ? want[i] === undefined : e.id!.equals(want[i]!.id!) && e.plainLength === want[i]!.plainLength)),
    'every chunk resolves to the entry of the rebased table (zero where it is zero)',
  );
});

t.test('a new table that disagrees with what the export read of the old one is refused, not mixed in', async (t) => {
  const dir = tmpDir(t, 'export-prune-differ');
  const { store } = await pointsWithCopies(dir, 2);
  const index = new ChunkIndex(store, await loadChain(store, 'vm', 2), undefined, undefined, () => loadChain(store, 'vm', 2));
  // Chunk 2 changed in point 2; what the export read of it is made to differ from what the store says.
  const read = await index.lookup(2);
  read!.id = Buffer.alloc(32, 1);
  await prune(store, 1);
  // Chunk 0 comes from point 1's table, deleted by prune: the reload finds the rewritten point disagree on chunk 2.
  await t.rejects(index.lookup(0), { code: 'RNODE_MANIFEST_CORRUPT', message: /was rewritten while it was exported and its chunk 2 changed/ });
  t.equal((await index.lookup(2))?.id?.[0], 1, 'the old table is still the one served');
});
