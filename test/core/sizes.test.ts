// Disk sizes that are not a multiple of the chunk size nor of 4096 (3 MiB + 1234 bytes, 1 byte, 0 bytes, one
// byte short of a chunk): a full and an incremental point of each restore byte-exact, and a disk that grows
// gets a full point while the older point still restores at its old size.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import {
  KiB,
  MiB,
  expectRestore,
  fingerprint,
  fsStore,
  randomData,
  snap,
  textData,
  tmpDir,
  writeAt,
  writeRandomImage,
  stopCodecWorkersAtEnd,
} from '../helpers/images.js';

stopCodecWorkersAtEnd(t);

const CHUNK = 64 * KiB;

for (const size of [3 * MiB + 1234, 1, CHUNK - 1, CHUNK + 1, 4096 * 3 + 7]) {
  t.test(`a ${size}-byte disk (chunk ${CHUNK}): full + incremental restore byte-exact`, async (t) => {
    const dir = tmpDir(t, 'sizes');
    const img = path.join(dir, 'disk.img');
    const store = fsStore(path.join(dir, 'store'));
    writeRandomImage(img, size, size);
    const fp1 = fingerprint(img);

    const p1 = await snap(store, img, 'd', { chunkSize: CHUNK });
    const chunks = Math.ceil(size / CHUNK);
    t.equal(p1.point, 1);
    t.equal(p1.full, true, 'first point is full');
    t.equal(p1.diskSize, size);
    t.equal(p1.chunkSize, CHUNK);
    t.equal(p1.chunksTotal, chunks);
    t.equal(p1.chunksChanged, chunks, 'every chunk of a random disk is stored');
    t.equal(p1.bytesRead, size, 'the whole allocated disk is read, the partial last chunk included');

    // Change the very last byte (inside the partial last chunk) and one byte in the first chunk.
    writeAt(img, size - 1, Buffer.from([~fs.readFileSync(img)[size - 1] & 0xff]));
    if (size > 1) writeAt(img, 0, Buffer.from([~fs.readFileSync(img)[0] & 0xff]));
    const fp2 = fingerprint(img);
    t.not(fp2.sha256, fp1.sha256, 'the image changed');

    const p2 = await snap(store, img, 'd');
    t.equal(p2.point, 2);
    t.equal(p2.parent, 1);
    t.equal(p2.full, false, 'second point is incremental');
    t.equal(p2.chunkSize, CHUNK, 'chunk size carries over from the first point');
    t.equal(p2.chunksChanged, chunks === 1 ? 1 : 2, 'only the chunks holding the changed bytes are stored');

    await expectRestore(t, store, 'd', 1, fp1, dir);
    await expectRestore(t, store, 'd', 2, fp2, dir);
    await expectRestore(t, store, 'd', 'latest', fp2, dir, 'latest');
  });
}

t.test('a 1-byte disk with the 64 KiB chunk size and text content, restored after a zero byte replaces it', async (t) => {
  const dir = tmpDir(t, 'sizes');
  const img = path.join(dir, 'one.img');
  const store = fsStore(path.join(dir, 'store'));
  fs.writeFileSync(img, Buffer.from('x'));
  const fp1 = fingerprint(img);
  const p1 = await snap(store, img, 'one', { chunkSize: CHUNK });
  t.equal(p1.chunksTotal, 1);
  t.equal(p1.chunksChanged, 1);
  fs.writeFileSync(img, Buffer.from([0]));
  const fp2 = fingerprint(img);
  const p2 = await snap(store, img, 'one');
  t.equal(p2.chunksChanged, 1, 'a byte that became zero is a change');
  await expectRestore(t, store, 'one', 1, fp1, dir);
  await expectRestore(t, store, 'one', 2, fp2, dir);
});

t.test('an empty (0-byte) disk replicates and restores to an empty file', async (t) => {
  const dir = tmpDir(t, 'sizes');
  const img = path.join(dir, 'empty.img');
  const store = fsStore(path.join(dir, 'store'));
  fs.writeFileSync(img, Buffer.alloc(0));
  const p1 = await snap(store, img, 'empty', { chunkSize: CHUNK });
  t.equal(p1.chunksTotal, 0);
  t.equal(p1.diskSize, 0);
  const p2 = await snap(store, img, 'empty');
  t.equal(p2.point, 2);
  await expectRestore(t, store, 'empty', 2, fingerprint(img), dir);
});

t.test('a disk that grows by 1234 bytes gets a full point; the older point restores at its old size', async (t) => {
  const dir = tmpDir(t, 'sizes');
  const img = path.join(dir, 'grow.img');
  const store = fsStore(path.join(dir, 'store'));
  fs.writeFileSync(img, Buffer.concat([randomData(MiB, 5), textData(MiB + 99, 5)]));
  const fp1 = fingerprint(img);
  await snap(store, img, 'g', { chunkSize: CHUNK });
  fs.appendFileSync(img, randomData(1234, 6));
  const fp2 = fingerprint(img);
  const p2 = await snap(store, img, 'g');
  t.equal(p2.full, true, 'a size change makes a full point');
  t.equal(p2.parent, null);
  t.match(p2.fullReason, /size/, 'the reason names the size change');
  t.equal(p2.diskSize, fp2.size);
  await expectRestore(t, store, 'g', 1, fp1, dir);
  await expectRestore(t, store, 'g', 2, fp2, dir);
});

t.test('default 1 MiB chunks on a 3 MiB + 1234 byte disk of mixed text and random data', async (t) => {
  const dir = tmpDir(t, 'sizes');
  const img = path.join(dir, 'mixed.img');
  const store = fsStore(path.join(dir, 'store'));
  const size = 3 * MiB + 1234;
  fs.writeFileSync(img, Buffer.concat([textData(MiB, 1), randomData(MiB, 2), textData(MiB, 3), randomData(1234, 4)]));
  const fp1 = fingerprint(img);
  const p1 = await snap(store, img, 'mixed');
  t.equal(p1.chunkSize, MiB);
  t.equal(p1.chunksTotal, 4);
  t.ok(p1.bytesWritten < size, `text compresses: ${p1.bytesWritten} bytes stored for a ${size}-byte disk`);
  writeAt(img, 2 * MiB + 5, Buffer.from('changed'));
  const fp2 = fingerprint(img);
  const p2 = await snap(store, img, 'mixed');
  t.equal(p2.chunksChanged, 1);
  await expectRestore(t, store, 'mixed', 1, fp1, dir);
  await expectRestore(t, store, 'mixed', 2, fp2, dir);
});

t.test('the largest chunk size (16 MiB) on a disk of 2.5 chunks + 1234 bytes of mixed data', async (t) => {
  const dir = tmpDir(t, 'sizes');
  const img = path.join(dir, 'big.img');
  const store = fsStore(path.join(dir, 'store'));
  const big = 16 * MiB;
  const size = 2 * big + big / 2 + 1234;
  const fd = fs.openSync(img, 'w');
  fs.ftruncateSync(fd, size);
  fs.writeSync(fd, textData(5 * MiB, 7), 0, 5 * MiB, 0);
  fs.writeSync(fd, randomData(3 * MiB, 7), 0, 3 * MiB, 17 * MiB);
  fs.writeSync(fd, Buffer.alloc(2 * MiB), 0, 2 * MiB, 20 * MiB); // allocated zeros
  fs.writeSync(fd, randomData(big / 2 + 1234, 8), 0, big / 2 + 1234, 2 * big);
  fs.closeSync(fd);
  const fp1 = fingerprint(img);
  const p1 = await snap(store, img, 'big', { chunkSize: big });
  t.equal(p1.chunksTotal, 3);
  t.equal(p1.chunksChanged, 3);
  writeAt(img, big - 1, Buffer.from('!'));
  const fp2 = fingerprint(img);
  const p2 = await snap(store, img, 'big');
  t.equal(p2.chunkSize, big);
  t.equal(p2.chunksChanged, 1);
  await expectRestore(t, store, 'big', 1, fp1, dir);
  await expectRestore(t, store, 'big', 2, fp2, dir);
});
