// Regression: a restore to a block device skipped zero chunks, so the device kept its old bytes there and the
// "restored" disk was not the point. A loop device over a file of 0xff bytes must read back as the image, zeros
// included, and nothing past the disk's end may change. Needs root and losetup (CI runs as root); skipped otherwise.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
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

/** A loop device over a new file of `size` 0xff bytes, detached when the test ends. */
function loopDevice(t: Test, dir: string, size: number): { dev: string; back: string } {
  const back = path.join(dir, `back-${size}.img`);
  fs.writeFileSync(back, Buffer.alloc(size, 0xff));
  const dev = execFileSync(losetup!, ['-f', '--show', back], { encoding: 'utf8' }).trim();
  t.teardown(() => {
    execFileSync(losetup!, ['-d', dev]);
  });
  return { dev, back };
}

// Regression: a device smaller than the disk was overwritten whole before the restore failed with ENOSPC
// ("check the path, its permissions and free space"). Its size is checked before any byte is written.
t.test('a block device smaller than the disk is refused before any write', { skip: !canLoop && 'needs root and losetup' }, async (t) => {
  const dir = tmpDir(t, 'blockdev-small');
  const size = 6 * MiB;
  const imgFile = path.join(dir, 'src.img');
  fs.writeFileSync(imgFile, randomData(size, 3));
  const store = fsStore(path.join(dir, 'store'));
  await snap(store, imgFile, 'd', { chunkSize: MiB });
  const small = 4 * MiB;
  const { dev, back } = loopDevice(t, dir, small);

  await t.rejects(recover({ store, disk: 'd', out: dev }), {
    code: 'RNODE_USAGE',
    message: new RegExp(`block device of ${small} bytes, smaller than the disk \\(${size} bytes\\).*at least ${size} bytes`),
  });
  const got = Buffer.alloc(small);
  const fd = fs.openSync(dev, 'r');
  try {
    fs.readSync(fd, got, 0, small, 0);
  } finally {
    fs.closeSync(fd);
  }
  t.ok(
    got.every((b) => b === 0xff),
    'not one byte of the device written',
  );
  t.ok(fs.lstatSync(dev).isBlockDevice(), 'the device is still a device');
  t.same(
    fs.readdirSync(path.dirname(dev)).filter((f) => f.includes('rnode-partial')),
    [],
    'no partial file beside it',
  );
  t.ok(
    fs.readFileSync(back).every((b) => b === 0xff),
    'its backing file unchanged',
  );
});

// A symlink to a device (a VM's disk path) is followed: the device is written in place, the link stays a link.
t.test('a symlink to a block device writes the device', { skip: !canLoop && 'needs root and losetup' }, async (t) => {
  const dir = tmpDir(t, 'blockdev-link');
  const size = 2 * MiB;
  const img = randomData(size, 4);
  const imgFile = path.join(dir, 'src.img');
  fs.writeFileSync(imgFile, img);
  const store = fsStore(path.join(dir, 'store'));
  await snap(store, imgFile, 'd', { chunkSize: MiB });
  const { dev } = loopDevice(t, dir, size);
  const link = path.join(dir, 'vm-disk');
  fs.symlinkSync(dev, link);

  const r = await recover({ store, disk: 'd', out: link });
  t.equal(r.bytesWritten, size);
  t.ok(fs.lstatSync(link).isSymbolicLink(), 'the link is still a link');
  t.equal(fs.readlinkSync(link), dev, 'to the device');
  const got = Buffer.alloc(size);
  const fd = fs.openSync(dev, 'r');
  try {
    fs.readSync(fd, got, 0, size, 0);
  } finally {
    fs.closeSync(fd);
  }
  t.ok(got.equals(img), 'the device reads back as the image');
});
