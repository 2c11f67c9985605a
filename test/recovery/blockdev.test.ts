// Regression: a restore to a block device skipped zero chunks, so the device kept its old bytes there and the
// "restored" disk was not the point. A loop device over a file of 0xff bytes must read back as the image, zeros
// included, and nothing past the disk's end may change. Needs root and losetup (CI runs as root); skipped otherwise.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { recover } from '../../src/jobs/restore.js';
import { KiB, MiB, fsStore, randomData, snap, tmpDir } from '../helpers/images.js';

const losetup = ['/usr/sbin/losetup', '/sbin/losetup'].find((p) => fs.existsSync(p));
const canLoop = process.getuid?.() === 0 && losetup !== undefined && fs.existsSync('/dev/loop-control');

t.test('restore to a block device writes the zero chunks too', { skip: !canLoop && 'needs root and losetup' }, async (t) => {
  const dir = tmpDir(t, 'blockdev');
  const size = 6 * MiB + 12 * KiB;
  const img = Buffer.alloc(size);
  randomData(MiB, 1).copy(img, 0);
  randomData(12345, 2).copy(img, 3 * MiB);
  const imgFile = path.join(dir, 'src.img');
  fs.writeFileSync(imgFile, img);
  const store = fsStore(path.join(dir, 'store'));
  await snap(store, imgFile, 'd', { chunkSize: MiB });
  const back = path.join(dir, 'back.img');
  fs.writeFileSync(back, Buffer.alloc(8 * MiB, 0xff));
  const dev = execFileSync(losetup!, ['-f', '--show', back], { encoding: 'utf8' }).trim();
  t.teardown(() => {
    execFileSync(losetup!, ['-d', dev]);
  });

  const r = await recover({ store, disk: 'd', out: dev });
  t.equal(r.bytesWritten, size, 'every byte of the disk written, zeros too');
  const got = Buffer.alloc(size + 4 * KiB);
  const fd = fs.openSync(dev, 'r');
  try {
    fs.readSync(fd, got, 0, got.length, 0);
  } finally {
    fs.closeSync(fd);
  }
  t.ok(got.subarray(0, size).equals(img), 'the device reads back as the image');
  t.ok(
    got.subarray(size).every((b) => b === 0xff),
    'nothing past the disk changed',
  );
});
