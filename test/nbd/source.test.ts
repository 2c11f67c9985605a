// The NBD source against a real qemu-nbd: handshake and geometry, allocation map against nbdinfo, byte-exact
// reads against `qemu-img convert -O raw`, dirty bitmap extents against the writes that made them, the
// marker rules, and a server that goes away mid-run.
import t from 'tap';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { ErrorCodes, RnodeError } from '../../src/errors.js';
import { sharedAligned } from '../../src/native/index.js';
import { openSource } from '../../src/source/index.js';
import { NbdSource } from '../../src/source/nbd/index.js';
import {
  addBitmap,
  collect,
  createImage,
  dirtyRanges,
  GRANULE,
  KiB,
  merge,
  MiB,
  nbdinfoMap,
  qemuWrite,
  randomData,
  rawSnapshot,
  startExport,
  tmpDir,
  type Write,
} from './fixtures/qemu.js';

const SIZE = 32 * MiB;
// Inside one granule, across a granule boundary, unaligned, at the very start and the very end.
const FIRST: Write[] = [
  { offset: 0, length: 4 * KiB, seed: 1 },
  { offset: 1 * MiB, length: 64 * KiB, seed: 2 },
  { offset: 3 * MiB + 100, length: 200 * KiB, seed: 3 },
  { offset: 7 * MiB - 2 * KiB, length: 4 * KiB, seed: 4 },
  { offset: SIZE - 512, length: 512, seed: 5 },
];
const SECOND: Write[] = [
  { offset: 5 * MiB, length: 4 * KiB, seed: 6 },
  { offset: 1 * MiB + 32 * KiB, length: 8 * KiB, seed: 7 },
  { offset: 20 * MiB + 512, length: 300 * KiB, seed: 8 },
];

/** Image with bitmap b0 (sees FIRST and SECOND) and b1 (added between them: sees only SECOND). */
function makeImage(dir: string): string {
  const img = path.join(dir, 'disk.qcow2');
  createImage(img, SIZE, ['b0']);
  qemuWrite(img, FIRST, dir);
  addBitmap(img, 'b1');
  qemuWrite(img, SECOND, dir);
  return img;
}

t.test('handshake: size, alignment, read cap, location and marker semantics', async (t) => {
  const dir = tmpDir(t);
  const img = makeImage(dir);
  const exp = await startExport(t, dir, img, ['b0']);

  const plain = await openSource(exp.url());
  t.teardown(() => plain.close());
  t.equal(plain.kind, 'nbd');
  t.equal(plain.size, SIZE, 'export size from NBD_INFO_EXPORT');
  t.equal(plain.alignment, 1, 'qemu-nbd on qcow2 reports a 1-byte minimum block size');
  t.equal(plain.maxReadBytes, 32 * MiB, 'qemu-nbd maximum block size (32 MiB)');
  t.equal(plain.tracksChanges, false, 'no bitmap= → no change tracking');
  t.equal(await plain.changeMarker(), undefined, 'no bitmap or checkpoint → no marker');
  t.equal(plain.location, `nbd+unix:///?socket=${exp.socket}`);

  const tracked = await openSource(exp.url('bitmap=b0&checkpoint=b9'));
  t.teardown(() => tracked.close());
  t.equal(tracked.tracksChanges, true);
  t.equal(await tracked.changeMarker(), 'b9', 'the checkpoint is the marker saved with the point');
  t.match(tracked.location, /bitmap=b0&checkpoint=b9$/);

  const accumulating = await openSource(exp.url('bitmap=b0'));
  t.teardown(() => accumulating.close());
  t.equal(await accumulating.changeMarker(), 'b0', 'without a checkpoint the same bitmap stays the marker');
  const unexported = await openSource(exp.url('bitmap=zz'));
  t.teardown(() => unexported.close());
  t.equal(await unexported.changeMarker(), undefined, 'but not a bitmap the server does not offer');

  // A bitmap name says nothing of whose disk it tracks: a marker is trusted only from the same server and export.
  const sock = exp.socket;
  t.ok(tracked.tracksSameDiskAs!(`nbd+unix:///?socket=${sock}&bitmap=a1&checkpoint=a2`), 'same socket and export, other bitmaps');
  t.ok(tracked.tracksSameDiskAs!(plain.location), 'same socket and export, no bitmap');
  t.notOk(tracked.tracksSameDiskAs!(`nbd+unix:///?socket=${sock}x&checkpoint=b0`), 'another socket');
  t.notOk(tracked.tracksSameDiskAs!(`nbd+unix:///disk2?socket=${sock}&checkpoint=b0`), 'another export on the same socket');
  t.notOk(tracked.tracksSameDiskAs!('nbd://localhost/?checkpoint=b0'), 'a TCP server');
  t.notOk(tracked.tracksSameDiskAs!(img), 'a file');
  t.notOk(tracked.tracksSameDiskAs!('not a url'), 'a location that does not parse');

  const capped = await NbdSource.open(exp.url(), { maxReadBytes: 1 * MiB + 123 });
  t.teardown(() => capped.close());
  t.equal(capped.maxReadBytes, 1 * MiB + 123, 'a caller cap below the server maximum is honoured');

  await t.rejects(openSource(`nbd+unix:///nope?socket=${exp.socket}`), { code: ErrorCodes.SOURCE_NOT_FOUND }, 'unknown export name');
  await t.rejects(openSource(`nbd+unix:///?socket=${path.join(dir, 'missing.sock')}`), { code: ErrorCodes.SOURCE_NOT_FOUND }, 'missing socket');
  await t.rejects(openSource(`nbd+unix:///?socket=${exp.socket}&password=x`), { code: ErrorCodes.BAD_SOURCE }, 'unknown URL parameter');
  await t.rejects(openSource('nbds://h/x'), { code: ErrorCodes.BAD_SOURCE }, 'TLS is not supported (no scheme registered)');
});

t.test('allocatedExtents matches nbdinfo --map and the writes (skipping holes and known zeros)', async (t) => {
  const dir = tmpDir(t);
  const img = makeImage(dir);
  const exp = await startExport(t, dir, img, ['b0']);
  const src = await openSource(exp.url());
  t.teardown(() => src.close());
  const got = await collect(src.allocatedExtents());

  const map = nbdinfoMap(exp.url());
  if (map) {
    // nbdinfo prints base:allocation as-is; data is whatever lacks NBD_STATE_ZERO (2).
    t.same(got, merge(map.filter((e) => (e.type & 2) === 0)), 'same data extents as nbdinfo --map');
  }
  // Every written byte lies in an allocated extent, and nothing far from a write is allocated.
  const inside = (o: number) => got.some((e) => o >= e.offset && o < e.offset + e.length);
  for (const w of [...FIRST, ...SECOND]) {
    t.ok(inside(w.offset) && inside(w.offset + w.length - 1), `write at ${w.offset} (+${w.length}) is allocated`);
  }
  const allocated = got.reduce((n, e) => n + e.length, 0);
  t.ok(allocated <= dirtyRanges([...FIRST, ...SECOND]).reduce((n, e) => n + e.length, 0), `only written clusters are allocated (${allocated} bytes)`);
  for (let i = 1; i < got.length; i++) t.ok(got[i].offset > got[i - 1].offset + got[i - 1].length, 'sorted, non-overlapping, merged');

  // Small status windows (many BLOCK_STATUS requests, runs crossing window edges) give the same answer.
  const small = await NbdSource.open(exp.url('bitmap=b0'), { statusWindow: 1 * MiB + 4096 });
  t.teardown(() => small.close());
  t.same(await collect(small.allocatedExtents()), got, 'windowed allocation map is identical');
  t.same(await collect(small.changedExtentsSince('b0')), dirtyRanges([...FIRST, ...SECOND]), 'windowed dirty map is identical');
});

t.test('reads are byte-exact against qemu-img convert -O raw', async (t) => {
  const dir = tmpDir(t);
  const img = makeImage(dir);
  const raw = fs.readFileSync(rawSnapshot(img, path.join(dir, 'disk.raw')));
  const exp = await startExport(t, dir, img);
  const src = await NbdSource.open(exp.url(), { maxInFlight: 4 });
  t.teardown(() => src.close());

  // Whole disk in 1 MiB reads, 16 at once (more than the in-flight bound: they queue).
  const step = 1 * MiB;
  const all = sharedAligned(SIZE);
  const reads: Promise<number>[] = [];
  for (let off = 0; off < SIZE; off += step) reads.push(src.read(off, all.subarray(off, off + step), step));
  t.same(
    await Promise.all(reads),
    reads.map(() => step),
    'every read is whole',
  );
  t.ok(all.equals(raw), 'concurrent 1 MiB reads equal the raw image');

  // One 32 MiB read (sparse: OFFSET_HOLE and OFFSET_DATA chunks), then the same split into 192 KiB requests.
  const one = sharedAligned(SIZE).fill(0xee);
  t.equal(await src.read(0, one, SIZE), SIZE);
  t.ok(one.equals(raw), 'one whole-disk read equals the raw image (holes zero-filled)');
  const split = await NbdSource.open(exp.url(), { maxReadBytes: 192 * KiB, maxInFlight: 3 });
  t.teardown(() => split.close());
  const parts = sharedAligned(SIZE).fill(0xee);
  t.equal(await split.read(0, parts, SIZE), SIZE);
  t.ok(parts.equals(raw), 'a read split into many requests equals the raw image');

  // A chunk at the end of the disk: short read.
  const tail = sharedAligned(1 * MiB);
  t.equal(await src.read(SIZE - 64 * KiB, tail, 1 * MiB), 64 * KiB, 'read past the end is short');
  t.ok(tail.subarray(0, 64 * KiB).equals(raw.subarray(SIZE - 64 * KiB)), 'tail bytes');
  t.equal(await src.read(SIZE, tail, 4096), 0, 'read at the end returns 0');
});

t.test('dirty bitmaps: changedExtentsSince returns exactly the written 64 KiB granules', async (t) => {
  const dir = tmpDir(t);
  const img = makeImage(dir);
  const exp = await startExport(t, dir, img, ['b0', 'b1']);

  const since0 = await openSource(exp.url('bitmap=b0&checkpoint=b1'));
  t.teardown(() => since0.close());
  t.same(await collect(since0.changedExtentsSince('b0')), dirtyRanges([...FIRST, ...SECOND]), 'b0 saw both rounds of writes');
  const since1 = await openSource(exp.url('bitmap=b1'));
  t.teardown(() => since1.close());
  const got1 = await collect(since1.changedExtentsSince('b1'));
  t.same(got1, dirtyRanges(SECOND), 'b1 saw only the writes made after it was added');
  t.ok(
    got1.every((e) => e.offset % GRANULE === 0 && e.length % GRANULE === 0),
    'granule-aligned',
  );

  const map = nbdinfoMap(exp.url(), 'qemu:dirty-bitmap:b1');
  if (map) t.same(got1, merge(map.filter((e) => e.type & 1)), 'same dirty extents as nbdinfo --map=qemu:dirty-bitmap:b1');

  // Marker rules.
  await t.rejects(
    collect(since1.changedExtentsSince('b0')),
    { code: ErrorCodes.CHANGE_MARKER_INVALID, message: /checkpoint is "b0".*bitmap "b1"/ },
    'a marker other than bitmap= is refused',
  );
  const unexported = await openSource(exp.url('bitmap=b7'));
  t.teardown(() => unexported.close());
  await t.rejects(
    collect(unexported.changedExtentsSince('b7')),
    { code: ErrorCodes.CHANGE_MARKER_INVALID, message: /does not offer qemu:dirty-bitmap:b7 \(it offers .*qemu:dirty-bitmap:b0/ },
    'a bitmap the server does not export is refused, naming the ones it does',
  );
  const untracked = await openSource(exp.url());
  t.teardown(() => untracked.close());
  await t.rejects(collect(untracked.changedExtentsSince('b0')), { code: ErrorCodes.CHANGE_MARKER_INVALID }, 'no bitmap= at all');
  t.ok(await collect(since1.allocatedExtents()), 'the connection is still fine after refused markers');
});

t.test('the server going away fails reads with a clear error, no hang', async (t) => {
  const dir = tmpDir(t);
  const img = makeImage(dir);
  const exp = await startExport(t, dir, img);
  const src = await NbdSource.open(exp.url(), { requestTimeoutMs: 5000 });
  const buf = sharedAligned(SIZE);
  t.equal(await src.read(0, buf, 1 * MiB), 1 * MiB);
  await exp.stop();
  const err = await src.read(0, buf, SIZE).then(
    () => undefined,
    (e) => e,
  );
  t.ok(err instanceof RnodeError, 'an RnodeError');
  t.equal(err?.code, ErrorCodes.SOURCE_IO);
  t.match(err?.message, /lost the connection to NBD server .*run again/);
  await t.rejects(src.read(0, buf, 4096), { code: ErrorCodes.SOURCE_IO }, 'later reads fail at once');
  await src.close();
});

t.test('default 1 GiB status windows on a 3 GiB sparse qcow2 (a few MiB on disk): runs merge across window edges', async (t) => {
  const dir = tmpDir(t);
  const img = path.join(dir, 'big.qcow2');
  const GiB = 1024 * MiB;
  createImage(img, 3 * GiB, ['b0']);
  const writes: Write[] = [
    { offset: GiB - 1 * MiB, length: 2 * MiB, seed: 31 }, // straddles the first window edge
    { offset: 2 * GiB - 1 * MiB, length: 64 * KiB, seed: 32 },
    { offset: 3 * GiB - 1 * MiB, length: 1 * MiB, seed: 33 }, // ends at the end of the disk
  ];
  qemuWrite(img, writes, dir);
  const exp = await startExport(t, dir, img, ['b0']);
  const src = await openSource(exp.url('bitmap=b0'));
  t.teardown(() => src.close());
  const expected = writes.map(({ offset, length }) => ({ offset, length }));
  t.same(await collect(src.allocatedExtents()), expected, 'allocation: one extent per write, the straddling one merged');
  t.same(await collect(src.changedExtentsSince('b0')), expected, 'dirty bitmap: the same');
  const map = nbdinfoMap(exp.url());
  if (map) t.same(await collect(src.allocatedExtents()), merge(map.filter((e) => (e.type & 2) === 0)), 'matches nbdinfo --map');
});

t.test('an export whose size is not a whole number of its minimum blocks is refused at open (BAD_SOURCE), not failed on every read', async (t) => {
  // nbdkit's blocksize-policy filter advertises a 4 KiB minimum block and refuses unaligned requests, as a strict
  // server may: the last 4 KiB block of a 3,150,049-byte file ends past the export's end, so its tail can never be read.
  const dir = tmpDir(t);
  const serve = async (file: string) => {
    const socket = path.join(dir, `${path.basename(file)}.sock`);
    const child = spawn(
      'nbdkit',
      ['-f', '-r', '-U', socket, '--filter=blocksize-policy', 'file', file, 'blocksize-minimum=4096', 'blocksize-error-policy=error'],
      { stdio: 'ignore' },
    );
    t.teardown(() => {
      child.kill('SIGKILL');
    });
    for (const deadline = Date.now() + 10_000; !fs.existsSync(socket);) {
      if (child.exitCode !== null || Date.now() > deadline) throw new Error('nbdkit did not start');
      await new Promise((r) => setTimeout(r, 25));
    }
    return `nbd+unix:///?socket=${socket}`;
  };
  const odd = path.join(dir, 'odd.raw');
  fs.writeFileSync(odd, randomData(3_150_049, 7));
  const err = await NbdSource.open(await serve(odd)).then(
    () => undefined,
    (e) => e,
  );
  t.equal(err?.code, ErrorCodes.BAD_SOURCE, 'refused at open, a usage error (exit 2): waiting does not help');
  t.match(err?.message, /3150049 bytes, not a whole number of its 4096-byte minimum blocks.*serve it with a size that is a multiple of 4096/);

  const even = path.join(dir, 'even.raw');
  fs.writeFileSync(even, randomData(3_149_824, 8)); // 769 blocks of 4 KiB
  const src = await NbdSource.open(await serve(even));
  t.teardown(() => src.close());
  t.equal(src.alignment, 4096, 'the filter does advertise a 4 KiB minimum');
  const buf = sharedAligned(3_149_824);
  t.equal(await src.read(0, buf, 3_149_824), 3_149_824);
  t.ok(buf.subarray(0, 3_149_824).equals(fs.readFileSync(even)), 'an aligned size reads byte-exact');
});
