// Sparse and all-zero images: a full point of a sparse image reads only allocated data, restores byte-exact
// and sparse; an image of written zeros or one big hole stores no chunk data and restores as zeros of the
// right size; data that becomes zeros (written or punched out) is recorded and restores as zeros.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import {
  KiB,
  MiB,
  allocatedBytes,
  assertSameBytes,
  expectRestore,
  fingerprint,
  fsStore,
  listFiles,
  randomData,
  restore,
  snap,
  textData,
  tmpDir,
  writeAt,
  writeHoleImage,
  stopCodecWorkersAtEnd,
} from '../helpers/images.js';

stopCodecWorkersAtEnd(t);

const CHUNK = 64 * KiB;

/** Punches a hole (deallocates, reads back as zeros) with util-linux fallocate. */
function punchHole(file: string, offset: number, length: number): void {
  execFileSync('fallocate', ['--punch-hole', '--offset', String(offset), '--length', String(length), file]);
}

t.test('sparse image: full point reads only allocated data; restore is byte-exact and sparse', async (t) => {
  const dir = tmpDir(t, 'sparse');
  const img = path.join(dir, 'sparse.img');
  const store = fsStore(path.join(dir, 'store'));
  const size = 16 * MiB + 4321;
  writeHoleImage(img, size);
  // Scattered writes: inside a chunk, across a chunk boundary, at the very start and the very end.
  const writes: Array<[number, Buffer]> = [
    [0, randomData(4096, 1)],
    [3 * MiB + 100, textData(9000, 2)],
    [5 * CHUNK - 2048, randomData(4096, 3)], // straddles chunks 4 and 5
    [11 * MiB, randomData(8192, 4)],
    [size - 777, randomData(777, 5)],
  ];
  for (const [off, data] of writes) writeAt(img, off, data);
  const fp = fingerprint(img);
  const touched = new Set<number>();
  for (const [off, data] of writes) for (let i = Math.floor(off / CHUNK); i <= Math.floor((off + data.length - 1) / CHUNK); i++) touched.add(i);
  t.ok(allocatedBytes(img) < size / 8, `the source is sparse (${allocatedBytes(img)} of ${size} bytes allocated)`);

  const p1 = await snap(store, img, 'sp', { chunkSize: CHUNK });
  t.equal(p1.full, true);
  t.ok(p1.bytesRead <= touched.size * CHUNK, `bytesRead ${p1.bytesRead} <= ${touched.size} allocated chunks`);
  t.ok(p1.bytesRead < size / 16, `bytesRead ${p1.bytesRead} is much less than the disk size ${size}`);
  t.equal(p1.chunksChanged, touched.size, 'exactly the chunks holding data are stored');
  t.equal(p1.chunksZero, p1.chunksTotal - touched.size, 'every other chunk counts as zero');
  t.equal(p1.chunksChanged, touched.size, 'one chunk record per data chunk (stored or deduplicated)');

  const out = await expectRestore(t, store, 'sp', 1, fp, dir);
  t.ok(allocatedBytes(out) < size / 8, `restored file is sparse (${allocatedBytes(out)} of ${size} bytes allocated)`);
  t.ok(allocatedBytes(out) <= allocatedBytes(img) + CHUNK, 'restored file allocates about what the source does');

  // Incremental: data lands in a hole, and one data area is punched out again.
  writeAt(img, 9 * MiB + 5, randomData(100, 6));
  punchHole(img, 11 * MiB, 8192);
  const fp2 = fingerprint(img);
  const p2 = await snap(store, img, 'sp');
  t.equal(p2.full, false);
  t.equal(p2.chunksChanged, 2, 'the newly written chunk and the punched-out chunk');
  t.ok(p2.bytesRead < size / 16, 'an incremental of a raw sparse image also reads only allocated data');
  await expectRestore(t, store, 'sp', 1, fp, dir);
  const out2 = await expectRestore(t, store, 'sp', 2, fp2, dir);
  t.ok(allocatedBytes(out2) < size / 8, 'the incremental point also restores sparse');
});

t.test('all-zero image of written (allocated) zeros: no chunk data, restores as zeros', async (t) => {
  const dir = tmpDir(t, 'zero');
  const img = path.join(dir, 'zeros.img');
  const store = fsStore(path.join(dir, 'store'));
  const size = 2 * MiB + 1234;
  fs.writeFileSync(img, Buffer.alloc(size));
  t.ok(allocatedBytes(img) >= size - 4096, 'the zeros are really allocated on disk');
  const fp = fingerprint(img);
  const p1 = await snap(store, img, 'z', { chunkSize: CHUNK });
  t.equal(p1.chunksChanged, 0, 'no chunk is stored');
  t.equal(p1.chunksZero, p1.chunksTotal, 'every chunk is a zero chunk');
  t.equal(p1.bytesRead, size, 'the allocated zeros were read (and found zero)');
  t.same(
    listFiles(path.join(dir, 'store')).filter((f) => f.includes('/packs/')),
    [],
    'no packs',
  );
  const out = await expectRestore(t, store, 'z', 1, fp, dir);
  t.equal(allocatedBytes(out), 0, 'a restore of zeros allocates nothing');
});

t.test('all-zero image that is one hole: nothing read, nothing stored, restores as zeros', async (t) => {
  const dir = tmpDir(t, 'hole');
  const img = path.join(dir, 'hole.img');
  const store = fsStore(path.join(dir, 'store'));
  const size = 4 * MiB + 1;
  writeHoleImage(img, size);
  const fp = fingerprint(img);
  const p1 = await snap(store, img, 'h', { chunkSize: CHUNK });
  t.equal(p1.bytesRead, 0, 'a hole is not read');
  t.equal(p1.chunksChanged, 0);
  t.equal(p1.chunksZero, p1.chunksTotal);
  const p2 = await snap(store, img, 'h');
  t.equal(p2.chunksChanged, 0, 'an incremental of an unchanged hole stores nothing');
  await expectRestore(t, store, 'h', 1, fp, dir);
  await expectRestore(t, store, 'h', 2, fp, dir);
  t.equal(fp.sha256, fingerprint(path.join(dir, 'hole.img')).sha256);
});

t.test('data that becomes zeros (written, then punched) is recorded; every point restores byte-exact', async (t) => {
  const dir = tmpDir(t, 'tozero');
  const img = path.join(dir, 'd.img');
  const store = fsStore(path.join(dir, 'store'));
  const size = 1 * MiB + 3000;
  fs.writeFileSync(img, Buffer.concat([randomData(MiB, 1), textData(3000, 1)]));
  const fps = [fingerprint(img)];
  await snap(store, img, 'd', { chunkSize: CHUNK });
  // Point 2: chunks 2 and 3 overwritten with zeros (still allocated).
  writeAt(img, 2 * CHUNK, Buffer.alloc(2 * CHUNK));
  fps.push(fingerprint(img));
  const p2 = await snap(store, img, 'd');
  t.equal(p2.chunksChanged, 2, 'two chunks became zero');
  // Point 3: the whole disk punched out.
  punchHole(img, 0, size);
  fps.push(fingerprint(img));
  // A partial last filesystem block cannot be deallocated, only zeroed: at most one block stays allocated.
  t.ok(allocatedBytes(img) <= 4096, 'the image is now one hole');
  const p3 = await snap(store, img, 'd');
  t.ok(p3.bytesRead <= CHUNK, `at most the chunk of the last block is read (${p3.bytesRead})`);
  t.equal(p3.chunksChanged, Math.ceil(size / CHUNK) - 2, 'every chunk that still had data became zero');
  // Point 4: data again in one chunk.
  writeAt(img, 7 * CHUNK + 1, randomData(10, 9));
  fps.push(fingerprint(img));
  const p4 = await snap(store, img, 'd');
  t.equal(p4.chunksChanged, 1);
  for (let i = 0; i < fps.length; i++) await expectRestore(t, store, 'd', i + 1, fps[i], dir);
  const zerosOut = path.join(dir, 'zeros-out.img');
  await restore(store, 'd', 3, zerosOut);
  t.equal(fs.statSync(zerosOut).size, size, 'point 3 has the disk size');
  t.ok(
    fs.readFileSync(zerosOut).every((b) => b === 0),
    'point 3 is all zeros',
  );
  assertSameBytes(t, zerosOut, fps[2], 'point 3 (all zeros)');
});
