// Recovery to a block device: a loop device over a file (needs root and losetup, as CI runs; skipped otherwise).
// Every byte of the disk is written, zeros too; a device that is too small, mounted, or held by another process or
// recover is refused before any byte is written.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { recover } from '../../src/jobs/restore.js';
import { openFileOutput } from '../../src/output/file.js';
import { json, plainNode, runCli } from '../helpers/cli.js';
import { KiB, MiB, fsStore, randomData, snap, tmpDir } from '../helpers/images.js';
import { canLoop, canMountExt4, fsckClean, loopDevice, mountedExt4, readHead } from '../helpers/loop.js';

// Regression: a restore to a block device skipped zero chunks, so the device kept its old bytes there and the
// "restored" disk was not the point. A loop device over a file of 0xff bytes must read back as the image, zeros
// included, and nothing past the disk's end may change.
/** A folder with `data` as src.img replicated into its store as point 1 of disk "d" (1 MiB chunks). */
async function storedImage(t: Parameters<typeof tmpDir>[0], tag: string, data: Buffer) {
  const dir = tmpDir(t, tag);
  const imgFile = path.join(dir, 'src.img');
  fs.writeFileSync(imgFile, data);
  const storeDir = path.join(dir, 'store');
  const store = fsStore(storeDir);
  await snap(store, imgFile, 'd', { chunkSize: MiB });
  return { dir, storeDir, store };
}

t.test('restore to a block device writes the zero chunks too', { skip: !canLoop && 'needs root and losetup' }, async (t) => {
  const size = 6 * MiB + 12 * KiB;
  const img = Buffer.alloc(size);
  randomData(MiB, 1).copy(img, 0);
  randomData(12345, 2).copy(img, 3 * MiB);
  const { dir, store } = await storedImage(t, 'blockdev', img);
  const { dev } = loopDevice(t, dir, 8 * MiB);

  const r = await recover({ store, disk: 'd', out: dev });
  t.equal(r.bytesWritten, size, 'every byte of the disk written, zeros too');
  const got = readHead(dev, size + 4 * KiB);
  t.ok(got.subarray(0, size).equals(img), 'the device reads back as the image');
  t.ok(
    got.subarray(size).every((b) => b === 0xff),
    'nothing past the disk changed',
  );
});

// Regression: the stop signal was heard only before a data chunk. A mostly empty disk's last gap went to the device
// as one zero range, written whole: a SIGTERM during it was acknowledged, then ignored until every zero byte was on
// the device (tens of minutes for terabytes), and the recover ended "recovered", exit 0.
t.test('a stop during a long zero range is heard within one step', { skip: !canLoop && 'needs root and losetup' }, async (t) => {
  const size = 256 * MiB;
  const dir = tmpDir(t, 'blockdev-stop');
  const store = fsStore(path.join(dir, 'store'));
  const sparse = path.join(dir, 'sparse.img');
  fs.writeFileSync(sparse, randomData(MiB, 5));
  fs.truncateSync(sparse, size);
  await snap(store, sparse, 'z', { chunkSize: MiB });
  const { dev } = loopDevice(t, dir, size, 'sparse');
  const stop = new AbortController();
  // Stopped once the one data chunk is written: what is left is the 255 MiB gap to the disk's end.
  const run = recover({ store, disk: 'z', out: dev, signal: stop.signal, onProgress: () => stop.abort() });
  await t.rejects(run, { code: 'RNODE_CANCELLED' }, 'the recover stops, and says it was cancelled');
});

// Regression: a device smaller than the disk was overwritten whole before the restore failed with ENOSPC
// ("check the path, its permissions and free space"). Its size is checked before any byte is written.
t.test('a block device smaller than the disk is refused before any write', { skip: !canLoop && 'needs root and losetup' }, async (t) => {
  const size = 6 * MiB;
  const { dir, store } = await storedImage(t, 'blockdev-small', randomData(size, 3));
  const small = 4 * MiB;
  const { dev, back } = loopDevice(t, dir, small);

  await t.rejects(recover({ store, disk: 'd', out: dev }), {
    code: 'RNODE_USAGE',
    message: new RegExp(`block device of ${small} bytes, smaller than the disk \\(${size} bytes\\).*at least ${size} bytes`),
  });
  t.ok(
    readHead(dev, small).every((b) => b === 0xff),
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
  const size = 2 * MiB;
  const img = randomData(size, 4);
  const { dir, store } = await storedImage(t, 'blockdev-link', img);
  const { dev } = loopDevice(t, dir, size);
  const link = path.join(dir, 'vm-disk');
  fs.symlinkSync(dev, link);

  const r = await recover({ store, disk: 'd', out: link });
  t.equal(r.bytesWritten, size);
  t.ok(fs.lstatSync(link).isSymbolicLink(), 'the link is still a link');
  t.equal(fs.readlinkSync(link), dev, 'to the device');
  t.ok(readHead(dev, size).equals(img), 'the device reads back as the image');
});

// Regression: a recover to a device with a mounted filesystem (/dev/sda1 typed for /dev/sdb1) wrote over the live
// filesystem and exited 0. The device is opened exclusively (O_EXCL), which Linux refuses while it is mounted.
t.test(
  'rnode recover: a device with a mounted filesystem is refused, exit 2, untouched',
  { skip: !canMountExt4 && 'needs root, losetup and mkfs.ext4' },
  async (t) => {
    const { dir, storeDir } = await storedImage(t, 'blockdev-mounted', randomData(6 * MiB, 5));
    const { dev, file, unmount } = mountedExt4(t, dir, 16 * MiB);
    const before = readHead(dev, 16 * MiB);

    const r = await runCli(['recover', '--store', storeDir, '--disk', 'd', '--out', dev, '--json']);
    t.equal(r.code, 2, 'exit 2: the same command fails again until the device is unmounted or --out changes');
    const { error } = json(r);
    t.equal(error.code, 'RNODE_USAGE');
    t.match(error.message, new RegExp(`^--out ${dev} is a block device in use: a filesystem on it is mounted.*nothing was written.*unmount it`));
    t.ok(readHead(dev, 16 * MiB).equals(before), 'not one byte of the device written');
    t.equal(fs.readFileSync(file, 'utf8'), 'a file of the mounted filesystem\n', 'its file still reads');
    unmount();
    t.ok(fsckClean(dev), 'fsck -n finds the filesystem clean');
  },
);

/** A child process that holds dev open with O_EXCL (as mkfs or another recover does) until it is killed. */
async function holdExclusive(t: Parameters<typeof tmpDir>[0], dev: string): Promise<() => Promise<void>> {
  const source = `const fs = require('node:fs'); fs.openSync(${JSON.stringify(dev)}, fs.constants.O_RDONLY | fs.constants.O_EXCL); process.stdout.write('held\\n'); setInterval(() => {}, 1e6);`;
  const child = spawn(...plainNode(['-e', source]), { stdio: ['ignore', 'pipe', 'inherit'] });
  const release = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGKILL');
    await exited;
  };
  t.teardown(release);
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => d.includes('held') && resolve());
    child.once('exit', (code) => reject(new Error(`the holder exited ${code}`)));
  });
  return release;
}

t.test(
  'a device another process holds exclusively is refused untouched; once released, it is written',
  { skip: !canLoop && 'needs root and losetup' },
  async (t) => {
    const size = 4 * MiB;
    const img = randomData(size, 6);
    const { dir, store } = await storedImage(t, 'blockdev-held', img);
    const { dev, back } = loopDevice(t, dir, size);
    const release = await holdExclusive(t, dev);

    await t.rejects(recover({ store, disk: 'd', out: dev }), {
      code: 'RNODE_USAGE',
      message: /is a block device in use: .*another program or recover holds it; nothing was written/,
    });
    t.ok(
      readHead(dev, size).every((b) => b === 0xff),
      'not one byte of the device written',
    );
    t.ok(
      fs.readFileSync(back).every((b) => b === 0xff),
      'its backing file unchanged',
    );

    await release();
    const r = await recover({ store, disk: 'd', out: dev });
    t.equal(r.bytesWritten, size, 'written once nothing holds it');
    t.ok(readHead(dev, size).equals(img), 'the device reads back as the image');
  },
);

// Two recovers to one device both ran (a file output is locked, a device was not): the first holds it while it writes.
t.test('a second recover to a device another recover is writing is refused', { skip: !canLoop && 'needs root and losetup' }, async (t) => {
  const dir = tmpDir(t, 'blockdev-twice');
  const size = 2 * MiB;
  const { dev } = loopDevice(t, dir, size);
  const first = await openFileOutput(dev, size);
  t.teardown(() => first.abort());
  await t.rejects(openFileOutput(dev, size), { code: 'RNODE_USAGE', message: /block device in use/ }, 'refused while the first is open');
  await first.abort();
  const third = await openFileOutput(dev, size);
  await third.abort();
  t.pass('opened again once the first ended');
});
