// Loop devices for tests that write block devices: made over a file in the test's folder, with an ext4 filesystem
// mounted on one where asked, and unmounted and detached when the test ends. Needs root and losetup (CI runs as
// root); tests skip with `skip: !canLoop && ...` otherwise.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { Test } from 'tap';

const sbin = (name: string) => [`/usr/sbin/${name}`, `/sbin/${name}`].find((p) => fs.existsSync(p));
const losetup = sbin('losetup');
const mkfsExt4 = sbin('mkfs.ext4');

export const canLoop = process.getuid?.() === 0 && losetup !== undefined && fs.existsSync('/dev/loop-control');
export const canMountExt4 = canLoop && mkfsExt4 !== undefined && fs.existsSync('/usr/bin/mount');

/** A loop device over a new file of `size` bytes of `fill` (or a hole: 'sparse'), detached when the test ends. */
export function loopDevice(t: Pick<Test, 'teardown'>, dir: string, size: number, fill: number | 'sparse' = 0xff): { dev: string; back: string } {
  const back = path.join(dir, `back-${size}.img`);
  if (fill === 'sparse') {
    fs.writeFileSync(back, '');
    fs.truncateSync(back, size);
  } else fs.writeFileSync(back, Buffer.alloc(size, fill));
  const dev = execFileSync(losetup!, ['-f', '--show', back], { encoding: 'utf8' }).trim();
  t.teardown(() => {
    execFileSync(losetup!, ['-d', dev]);
  });
  return { dev, back };
}

/**
 * A loop device of `size` bytes with an ext4 filesystem mounted read-write, holding one file; unmounted (before the
 * device is detached) when the test ends. Inode tables and journal are written by mkfs, not after the mount, so the
 * device's bytes stay as they are while nothing writes the filesystem.
 */
export function mountedExt4(t: Pick<Test, 'teardown'>, dir: string, size: number): { dev: string; file: string; unmount: () => void } {
  const { dev } = loopDevice(t, dir, size, 0);
  execFileSync(mkfsExt4!, ['-q', '-E', 'lazy_itable_init=0,lazy_journal_init=0', dev]);
  const mnt = path.join(dir, 'mnt');
  fs.mkdirSync(mnt);
  execFileSync('mount', [dev, mnt]);
  let mounted = true;
  const unmount = () => {
    if (mounted) execFileSync('umount', [mnt]);
    mounted = false;
  };
  t.teardown(unmount); // teardowns run last-in first: before the device is detached and the folder removed
  const file = path.join(mnt, 'kept.txt');
  fs.writeFileSync(file, 'a file of the mounted filesystem\n');
  execFileSync('sync');
  return { dev, file, unmount };
}

/** The first `length` bytes of a device (or file). */
export function readHead(file: string, length: number): Buffer {
  const got = Buffer.alloc(length);
  const fd = fs.openSync(file, 'r');
  try {
    fs.readSync(fd, got, 0, length, 0);
  } finally {
    fs.closeSync(fd);
  }
  return got;
}

/** Whether `fsck.ext4 -n` finds the filesystem on dev clean (exit 0); call after it is unmounted. */
export function fsckClean(dev: string): boolean {
  try {
    execFileSync(sbin('fsck.ext4') ?? 'fsck.ext4', ['-n', dev], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** A read-only tmpfs (as root, where mount works), else a folder without write permission; both refuse a new file. */
export function unwritableFolder(t: Test, dir: string): string | undefined {
  const folder = path.join(dir, 'no-write');
  fs.mkdirSync(folder);
  if (process.getuid?.() !== 0) {
    fs.chmodSync(folder, 0o555);
    return folder;
  }
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m,ro', 'tmpfs', folder], { stdio: 'pipe' });
  } catch {
    return undefined;
  }
  t.teardown(() => execFileSync('umount', ['-l', folder], { stdio: 'pipe' }));
  return folder;
}

/** A tmpfs of `size` mounted at <dir>/mnt (needs root), unmounted when the test ends. */
export function mountTmpfs(t: Test, dir: string, size: string): string {
  const mnt = path.join(dir, 'mnt');
  fs.mkdirSync(mnt);
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', mnt]);
  t.teardown(() => execFileSync('umount', ['-l', mnt]));
  return mnt;
}
