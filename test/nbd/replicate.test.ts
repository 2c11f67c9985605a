// End to end through the library with libvirt-style checkpoints on a qcow2 exported by qemu-nbd: a full point,
// an incremental that reads only the chunks its dirty bitmap names, a wrong marker and an unexported bitmap
// that each fall back to a full rescan (with the reason recorded), and an incremental again afterwards.
// Every point restores byte-exact to the `qemu-img convert -O raw` snapshot taken when it was replicated.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { openSource } from '../../src/source/index.js';
import { replicate, type ReplicateResult } from '../../src/jobs/replicate.js';
import { recover } from '../../src/jobs/restore.js';
import { FsStore } from '../../src/store/index.js';
import { loadPoint } from '../../src/repository/points.js';
import { changeHashPlace, ChangeHashReader } from '../../src/jobs/replicate/change-hashes.js';
import { xxh3 } from '../../src/native/index.js';
import { ChunkGrid } from '../../src/pipeline/grid.js';
import { blobPlace, flipByte } from '../helpers/images.js';
import { json, runCli } from '../helpers/cli.js';
import { Domain } from '../../src/repository/domain.js';
import {
  addBitmap,
  collect,
  createImage,
  dirtyRanges,
  KiB,
  MiB,
  qemuImg,
  qemuWrite,
  rawSnapshot,
  sha256File,
  startExport,
  tmpDir,
  type Write,
} from './fixtures/qemu.js';

const SIZE = 32 * MiB;
const CHUNK = 64 * KiB;

t.test('full, incremental by dirty bitmap, rescans on a bad marker, restores byte-exact', async (t) => {
  const dir = tmpDir(t, 'nbd-e2e');
  const img = path.join(dir, 'vm.qcow2');
  const store = new FsStore(path.join(dir, 'store'), { fsync: false });
  createImage(img, SIZE);
  const snapshots = new Map<number, string>();

  /** One scheduled run: checkpoint bitmap at the "snapshot", export, replicate, stop the export. */
  const run = async (point: number, opts: { exportBitmaps: string[]; query: string; checkpoint: string }): Promise<ReplicateResult> => {
    addBitmap(img, opts.checkpoint);
    snapshots.set(point, rawSnapshot(img, path.join(dir, `p${point}.raw`)));
    const exp = await startExport(t, dir, img, opts.exportBitmaps, 'vm.sock');
    const source = await openSource(exp.url(opts.query));
    try {
      // With change hashes kept: a tracked point carries the parent's for the chunks it does not read.
      return await replicate({ store, source, disk: 'vm', chunkSize: CHUNK, lease: false, changeHashDir: path.join(dir, 'cache') });
    } finally {
      await source.close();
      await exp.stop();
    }
  };
  const chunkBytes = (writes: Write[]) => dirtyRanges(writes, CHUNK).reduce((n, e) => n + e.length, 0);
  const allocatedChunkBytes = async () => {
    const exp = await startExport(t, dir, img);
    const s = await openSource(exp.url());
    try {
      return dirtyRanges(
        (await collect(s.allocatedExtents())).map((e) => ({ ...e, seed: 0 })),
        CHUNK,
      ).reduce((n, e) => n + e.length, 0);
    } finally {
      await s.close();
      await exp.stop();
    }
  };

  // Point 1: first point, no "since" bitmap; c1 starts recording at its snapshot.
  const base: Write[] = [
    { offset: 0, length: 300 * KiB, seed: 11 },
    { offset: 4 * MiB + 4096, length: 1 * MiB, seed: 12 },
    { offset: 17 * MiB, length: 64 * KiB, seed: 13 },
    { offset: SIZE - 128 * KiB, length: 128 * KiB, seed: 14 },
  ];
  qemuWrite(img, base, dir);
  const allocated1 = await allocatedChunkBytes();
  const p1 = await run(1, { exportBitmaps: [], query: 'checkpoint=c1', checkpoint: 'c1' });
  t.equal(p1.full, true, 'point 1 is full');
  t.equal(p1.bytesRead, allocated1, `point 1 reads only allocated chunks (${p1.bytesRead} of ${SIZE} bytes)`);
  t.equal(p1.bytesRead, chunkBytes(base), 'which are exactly the written chunks');
  t.equal((await loadPoint(store, 'vm', 1)).source.marker, 'c1', 'the checkpoint is saved as the marker');

  // Point 2: incremental since c1.
  const w2: Write[] = [
    { offset: 100 * KiB, length: 8 * KiB, seed: 21 },
    { offset: 9 * MiB + 512, length: 200 * KiB, seed: 22 },
    { offset: 30 * MiB, length: 4 * KiB, seed: 23 },
  ];
  qemuWrite(img, w2, dir);
  const p2 = await run(2, { exportBitmaps: ['c1'], query: 'bitmap=c1&checkpoint=c2', checkpoint: 'c2' });
  t.equal(p2.full, false, 'point 2 is incremental');
  t.equal(p2.rescanReason, undefined, 'no rescan');
  t.equal(p2.bytesRead, chunkBytes(w2), `point 2 reads only the ${chunkBytes(w2) / CHUNK} changed chunks`);
  t.equal(p2.chunksChanged, chunkBytes(w2) / CHUNK, 'and stores each of them');
  t.equal((await loadPoint(store, 'vm', 2)).source.marker, 'c2');

  // Point 3: the URL names c1 again, but point 2 saved c2: c1 also holds older changes, so it cannot be trusted as "since 2".
  const w3: Write[] = [{ offset: 12 * MiB, length: 128 * KiB, seed: 31 }];
  qemuWrite(img, w3, dir);
  const allocated3 = await allocatedChunkBytes();
  const p3 = await run(3, { exportBitmaps: ['c1'], query: 'bitmap=c1&checkpoint=c3', checkpoint: 'c3' });
  t.equal(p3.full, false, 'point 3 is still a delta table');
  t.match(p3.rescanReason, /change tracking unusable: .*checkpoint is "c2" but the source URL names bitmap "c1"/, 'rescan reason names both bitmaps');
  t.equal(p3.bytesRead, allocated3, 'the rescan reads every allocated chunk');
  t.equal((await loadPoint(store, 'vm', 3)).source.rescanReason, p3.rescanReason, 'the reason is recorded in the point');

  // Point 4: the right bitmap, but qemu-nbd was not told to export it.
  const w4: Write[] = [{ offset: 2 * MiB, length: 64 * KiB, seed: 41 }];
  qemuWrite(img, w4, dir);
  const p4 = await run(4, { exportBitmaps: [], query: 'bitmap=c3&checkpoint=c4', checkpoint: 'c4' });
  t.match(p4.rescanReason, /does not offer qemu:dirty-bitmap:c3/, 'unexported bitmap → rescan');

  // Point 5: back to an incremental.
  const w5: Write[] = [
    { offset: 25 * MiB + 100, length: 10, seed: 51 },
    { offset: 2 * MiB, length: 4 * KiB, seed: 52 },
  ];
  qemuWrite(img, w5, dir);
  const p5 = await run(5, { exportBitmaps: ['c4'], query: 'bitmap=c4&checkpoint=c5', checkpoint: 'c5' });
  t.equal(p5.rescanReason, undefined);
  t.equal(p5.bytesRead, chunkBytes(w5), 'incremental again after the rescans');

  // The change hashes point 5 left (carried through the tracked points 2 and 5, taken anew by the rescans 3 and 4)
  // are the XXH3-128 of every chunk of its snapshot.
  const grid = new ChunkGrid(SIZE, CHUNK);
  const place = changeHashPlace(path.join(dir, 'cache'), store.location, Domain.of(undefined), 'vm', grid);
  const hashes = await ChangeHashReader.open(place, await loadPoint(store, 'vm', 5));
  t.ok(hashes, 'point 5 left change hashes');
  const raw5 = fs.readFileSync(snapshots.get(5)!);
  let wrong = 0;
  for (let i = 0; i < grid.count; i++) {
    const want = Buffer.alloc(16);
    xxh3!(raw5.subarray(grid.offset(i), grid.offset(i) + grid.length(i)), place.seed, want);
    if (!(await hashes!.get(i))?.equals(want)) wrong++;
  }
  await hashes!.close();
  t.equal(wrong, 0, `all ${grid.count} change hashes are those of the snapshot's chunks`);

  // Point 6: the disk grew. qemu resizes the bitmap but does not mark the new area dirty, so the bitmap cannot
  // be trusted: the pipeline sees the size change and writes a standalone full point.
  qemuImg('resize', '-f', 'qcow2', img, String(SIZE + 8 * MiB));
  qemuWrite(img, [{ offset: SIZE + 1 * MiB, length: 64 * KiB, seed: 61 }], dir);
  const p6 = await run(6, { exportBitmaps: ['c5'], query: 'bitmap=c5&checkpoint=c6', checkpoint: 'c6' });
  t.equal(p6.full, true, 'a resized export gets a full point');
  t.match(p6.fullReason, /disk size changed/);

  for (const [point, raw] of snapshots) {
    const out = path.join(dir, `restore-${point}.raw`);
    const r = await recover({ store, disk: 'vm', point: String(point), out });
    t.equal(r.diskSize, point === 6 ? SIZE + 8 * MiB : SIZE, `point ${point}: size`);
    t.equal(sha256File(out), sha256File(raw), `point ${point} restores byte-exact to its qemu-img convert snapshot`);
  }
});

t.test('a chain at its length limit: the closing point reads only the dirty chunks, carries the rest, restores exact', async (t) => {
  const dir = tmpDir(t, 'nbd-chain');
  const img = path.join(dir, 'vm.qcow2');
  const store = new FsStore(path.join(dir, 'store'), { fsync: false });
  createImage(img, SIZE);
  const results: ReplicateResult[] = [];
  const snapshots: string[] = [];
  const writes: Write[][] = [
    [
      { offset: 0, length: 2 * MiB, seed: 71 },
      { offset: 20 * MiB, length: 1 * MiB, seed: 72 },
    ],
    [{ offset: 1 * MiB, length: 64 * KiB, seed: 73 }],
    [
      { offset: 5 * MiB, length: 128 * KiB, seed: 74 },
      { offset: 20 * MiB + 64 * KiB, length: 4 * KiB, seed: 75 },
    ],
    [{ offset: 30 * MiB, length: 64 * KiB, seed: 76 }],
  ];
  for (const [i, w] of writes.entries()) {
    const point = i + 1;
    qemuWrite(img, w, dir);
    addBitmap(img, `c${point}`);
    snapshots.push(rawSnapshot(img, path.join(dir, `p${point}.raw`)));
    const exp = await startExport(t, dir, img, point > 1 ? [`c${point - 1}`] : [], 'vm.sock');
    const source = await openSource(exp.url(point > 1 ? `bitmap=c${point - 1}&checkpoint=c${point}` : `checkpoint=c${point}`));
    try {
      results.push(await replicate({ store, source, disk: 'vm', chunkSize: CHUNK, lease: false, maxChain: 2 }));
    } finally {
      await source.close();
      await exp.stop();
    }
  }
  t.same(
    results.map((r) => [r.parent, r.rebasedFrom]),
    [
      [null, undefined],
      [1, undefined],
      [null, 2],
      [3, undefined],
    ],
    'point 3 closes the chain of 2; point 4 is a delta on it',
  );
  const dirtyBytes = dirtyRanges(writes[2], CHUNK).reduce((n, e) => n + e.length, 0);
  t.equal(results[2].bytesRead, dirtyBytes, `the closing point reads only its ${dirtyBytes / CHUNK} dirty chunks`);
  t.equal(results[2].rescanReason, undefined);
  const written = dirtyRanges([...writes[0], ...writes[1], ...writes[2]], CHUNK).reduce((n, e) => n + e.length, 0);
  t.equal((await loadPoint(store, 'vm', 3)).table.records, written / CHUNK, 'its table lists every chunk written so far');
  for (const [i, raw] of snapshots.entries()) {
    const out = path.join(dir, `restore-${i + 1}.raw`);
    await recover({ store, disk: 'vm', point: String(i + 1), out });
    t.equal(sha256File(out), sha256File(raw), `point ${i + 1} restores byte-exact`);
  }
});

// A chunk that check --repair dropped (damaged) is read again by the next bitmap incremental even though the bitmap
// does not name it: the point would otherwise inherit it from its parent and fail to restore (CHUNK_MISSING).
t.test('a dropped chunk outside the dirty bitmap is read and stored again by the incremental', async (t) => {
  const dir = tmpDir(t, 'nbd-dropped');
  const img = path.join(dir, 'vm.qcow2');
  const storeDir = path.join(dir, 'store');
  const store = new FsStore(storeDir, { fsync: false });
  createImage(img, SIZE);
  qemuWrite(img, [{ offset: 0, length: 4 * MiB, seed: 31 }], dir);
  const point = async (n: number, query: string, bitmaps: string[]) => {
    addBitmap(img, `c${n}`);
    const snapshot = rawSnapshot(img, path.join(dir, `p${n}.raw`));
    const exp = await startExport(t, dir, img, bitmaps, 'vm.sock');
    const source = await openSource(exp.url(query));
    try {
      return { snapshot, r: await replicate({ store, source, disk: 'vm', chunkSize: CHUNK, lease: false }) };
    } finally {
      await source.close();
      await exp.stop();
    }
  };
  const p1 = await point(1, 'checkpoint=c1', []);
  t.equal(p1.r.full, true);
  const b = await blobPlace(storeDir, 'vm', 1, 5);
  flipByte(b.file, b.offset + 100);
  const repair = await runCli(['check', '--store', storeDir, '--read-data', '--repair', '--json']);
  t.equal(json(repair).domains[0].repair.dropped.length, 1, 'check --repair dropped the damaged chunk');

  qemuWrite(img, [{ offset: 40 * CHUNK, length: 4 * KiB, seed: 32 }], dir);
  const p2 = await point(2, 'bitmap=c1&checkpoint=c2', ['c1']);
  t.equal(p2.r.full, false, 'an incremental by the bitmap');
  t.equal(p2.r.chunksChanged, 2, 'the written chunk and the dropped one');
  t.equal(p2.r.bytesRead, 2 * CHUNK, 'it read just those two');
  for (const [n, snapshot] of [
    [2, p2.snapshot],
    [1, p1.snapshot],
  ] as const) {
    const out = path.join(dir, `restored-${n}.raw`);
    await recover({ store, disk: 'vm', point: String(n), out });
    t.equal(sha256File(out), sha256File(snapshot), `point ${n} restores byte-exact`);
  }
  const ok = await runCli(['check', '--store', storeDir, '--read-data']);
  t.equal(ok.code, 0, `the repository is whole again: ${ok.stdout}${ok.stderr}`);
});

// Every VM's bitmaps may be called c1, c2...: a bitmap of the same name on another socket is another disk's. Building
// on the first export's point with the second's bitmap gave the first disk's data with the second's few changes.
t.test("another export's bitmap of the same name is never trusted with a disk's marker: a rescan, exact", async (t) => {
  const dir = tmpDir(t, 'nbd-two');
  const store = new FsStore(path.join(dir, 'store'), { fsync: false });
  const SMALL = 8 * MiB;
  const a = path.join(dir, 'a.qcow2');
  const b = path.join(dir, 'b.qcow2');
  createImage(a, SMALL, ['c1']);
  createImage(b, SMALL, ['c1']);
  qemuWrite(a, [{ offset: 0, length: SMALL, seed: 81 }], dir);
  qemuWrite(b, [{ offset: 1 * MiB, length: 64 * KiB, seed: 82 }], dir);
  const snapshots: string[] = [];
  const point = async (img: string, socket: string, bitmaps: string[], query: string) => {
    snapshots.push(rawSnapshot(img, path.join(dir, `p${snapshots.length + 1}.raw`)));
    const exp = await startExport(t, dir, img, bitmaps, socket);
    const source = await openSource(exp.url(query));
    try {
      return await replicate({ store, source, disk: 'vm', chunkSize: CHUNK, lease: false });
    } finally {
      await source.close();
      await exp.stop();
    }
  };
  const p1 = await point(a, 'a.sock', [], 'checkpoint=c1');
  t.equal(p1.full, true);
  addBitmap(b, 'c2');
  const p2 = await point(b, 'b.sock', ['c1'], 'bitmap=c1&checkpoint=c2');
  t.match(
    p2.rescanReason,
    /previous point was read from nbd\+unix:\/\/\/\?socket=\S*a\.sock.* may be another disk's/,
    `a rescan, and why: ${p2.rescanReason}`,
  );
  t.equal(p2.bytesRead, 64 * KiB, "it read every allocated chunk of b's disk (one)");
  t.equal((await loadPoint(store, 'vm', 2)).source.marker, 'c2', 'and saved its own checkpoint');

  // The next run from the same socket and export trusts that marker again.
  qemuWrite(b, [{ offset: 5 * MiB, length: 4 * KiB, seed: 83 }], dir);
  addBitmap(b, 'c3');
  const p3 = await point(b, 'b.sock', ['c2'], 'bitmap=c2&checkpoint=c3');
  t.equal(p3.rescanReason, undefined, 'an incremental by the bitmap');
  t.equal(p3.bytesRead, CHUNK, 'reading the one chunk written');

  for (const [i, raw] of snapshots.entries()) {
    const out = path.join(dir, `restore-${i + 1}.raw`);
    await recover({ store, disk: 'vm', point: String(i + 1), out });
    t.equal(sha256File(out), sha256File(raw), `point ${i + 1} restores byte-exact to its export's disk`);
  }
});

t.test('the CLI refuses an NBD source without --disk: its URL has no file name to take an id from', async (t) => {
  const dir = tmpDir(t, 'nbd-no-disk');
  const img = path.join(dir, 'vm.qcow2');
  createImage(img, 1 * MiB);
  const exp = await startExport(t, dir, img);
  const store = path.join(dir, 'store');
  for (const source of [exp.url('checkpoint=c1'), 'nbd://127.0.0.1:1/export1']) {
    const r = await runCli(['replicate', '--source', source, '--target', store, '--cache-dir', 'none']);
    t.equal(r.code, 2, `${source}: exit 2`);
    t.match(r.stderr, /RNODE_USAGE.*an NBD source needs --disk/, 'naming the flag to pass');
  }
  t.notOk(fs.existsSync(store), 'nothing was written');
  const ok = await runCli(['replicate', '--source', exp.url('checkpoint=c1'), '--target', store, '--disk', 'vm', '--cache-dir', 'none']);
  t.equal(ok.code, 0, `with --disk it replicates: ${ok.stderr}`);
});

// A bitmap= the server does not offer, with no checkpoint=, was saved as the point's marker: once a bitmap of that name
// was created and exported, the next incremental trusted it and missed every write made before its creation.
t.test('a bitmap the server did not offer is not saved as the marker: the next run rescans, exact', async (t) => {
  const dir = tmpDir(t, 'nbd-unoffered');
  const img = path.join(dir, 'vm.qcow2');
  const store = new FsStore(path.join(dir, 'store'), { fsync: false });
  createImage(img, 8 * MiB);
  qemuWrite(img, [{ offset: 0, length: 300 * KiB, seed: 91 }], dir);
  const snapshots: string[] = [];
  const point = async (bitmaps: string[]) => {
    snapshots.push(rawSnapshot(img, path.join(dir, `p${snapshots.length + 1}.raw`)));
    const exp = await startExport(t, dir, img, bitmaps, 'vm.sock');
    const source = await openSource(exp.url('bitmap=zz'));
    try {
      return await replicate({ store, source, disk: 'vm', chunkSize: CHUNK, lease: false });
    } finally {
      await source.close();
      await exp.stop();
    }
  };
  const p1 = await point([]);
  t.equal(p1.full, true);
  t.equal((await loadPoint(store, 'vm', 1)).source.marker, undefined, 'no marker: bitmap zz was not offered');

  qemuWrite(img, [{ offset: 2 * MiB, length: 64 * KiB, seed: 92 }], dir); // no bitmap records this write
  addBitmap(img, 'zz');
  qemuWrite(img, [{ offset: 5 * MiB, length: 64 * KiB, seed: 93 }], dir); // zz records this one
  const p2 = await point(['zz']);
  t.match(p2.rescanReason, /previous point has no change marker/, `a rescan: ${p2.rescanReason}`);
  t.equal(p2.chunksChanged, 2, 'both writes are in the point');
  t.equal((await loadPoint(store, 'vm', 2)).source.marker, 'zz', 'an offered bitmap is the marker');

  for (const [i, raw] of snapshots.entries()) {
    const out = path.join(dir, `restore-${i + 1}.raw`);
    await recover({ store, disk: 'vm', point: String(i + 1), out });
    t.equal(sha256File(out), sha256File(raw), `point ${i + 1} restores byte-exact`);
  }
});
