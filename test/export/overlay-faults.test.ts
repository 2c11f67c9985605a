// A writable export's overlay on a filesystem that fails: full, or losing writes under an fdatasync. Each test opens
// with the bug it guards against. They need root, for a small tmpfs (a real ENOSPC) and a loop-mounted ext4 on it.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import type { ExportImage } from '../../src/export/image.js';
import { OverlayImage } from '../../src/export/overlay.js';
import { Errno } from '../../src/export/wire.js';
import { Cmd, encodeRequest } from '../../src/source/nbd/protocol.js';
import { runCli } from '../helpers/cli.js';
import { fsStore, stopCodecWorkersAtEnd, tmpDir } from '../helpers/images.js';
import { haveTools, KiB, MiB, Raw, run, serveExport, storedDisk, unixUrl } from './helpers.js';

t.setTimeout(60_000);
stopCodecWorkersAtEnd(t);
const notRoot = process.getuid?.() !== 0 && 'needs root to mount a small tmpfs';

const SIZE = 8 * MiB;
const id = { disk: 'vm', point: 1, size: SIZE, createdAt: '2026-01-01T00:00:00.000Z' };

/** A point of zeros (every read a hole): what the overlay sits on. */
const zeros: ExportImage = {
  size: SIZE,
  point: 1,
  writable: false,
  read: async (offset, length) => [{ offset, length }],
  extents: async (_offset, length) => [{ length, flags: 3 }],
};

function mount(t: Test, dir: string, ...args: string[]): string {
  fs.mkdirSync(dir);
  execFileSync('mount', [...args, dir]);
  t.teardown(() => execFileSync('umount', [dir]));
  return dir;
}

function tmpfs(t: Test, dir: string, size: string): string {
  return mount(t, dir, '-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs');
}

/** Fills the filesystem of dir with one file, until ENOSPC; returns that file (remove it to free the space). */
function fill(dir: string): string {
  const file = path.join(dir, 'fill');
  const fd = fs.openSync(file, 'w');
  try {
    for (;;) fs.writeSync(fd, Buffer.alloc(MiB));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
  } finally {
    fs.closeSync(fd);
  }
  return file;
}

// A flush that failed to write the bitmap (its filesystem full) forgot the dirty pages: the next flush, once space was
// freed, succeeded without writing them, and after a restart the guest's acknowledged write was gone.
t.test('a flush that failed on a full filesystem leaves its pages for the next one', { skip: notRoot }, async (t) => {
  const mnt = tmpfs(t, path.join(tmpDir(t, 'overlay-full'), 'mnt'), '2m');
  const file = path.join(mnt, 'vm.overlay');
  let ov = await OverlayImage.open(file, zeros, id);
  const data = Buffer.alloc(MiB, 0x5a);
  await ov.write(0, data);
  const spare = fill(mnt);
  await t.rejects(ov.flush(), 'the flush fails: no room for the bitmap page');
  fs.rmSync(spare);
  await ov.flush();
  await ov.close();

  ov = await OverlayImage.open(file, zeros, id);
  t.equal(ov.allocatedBlocks, 16, 'after a restart the bitmap holds the flushed write');
  const [piece] = await ov.read(0, MiB);
  t.ok(piece.data?.equals(data), 'and the write reads back');
  await ov.close();
});

// After a failed fdatasync the kernel marks the pages it could not write clean: the next fdatasync succeeds. A flush
// after that one reported success for writes that were never on disk.
t.test('after a failed fdatasync no flush succeeds again', { skip: notRoot }, async (t) => {
  const dir = tmpDir(t, 'overlay-sync');
  // ext4 on a loop device whose backing file sits on a small tmpfs: ext4 takes writes into its page cache, and their
  // writeback fails (the fdatasync with it) once the tmpfs is full. No journal: an aborted one fails every later sync.
  const backing = tmpfs(t, path.join(dir, 'backing'), '8m');
  const image = path.join(backing, 'ext4.img');
  fs.writeFileSync(image, '');
  fs.truncateSync(image, 64 * MiB);
  execFileSync('mkfs.ext4', ['-q', '-O', '^has_journal', '-E', 'nodiscard', image]);
  const mnt = mount(t, path.join(dir, 'mnt'), '-o', 'loop,errors=continue', image);
  const ov = await OverlayImage.open(path.join(mnt, 'vm.overlay'), zeros, id);
  const spare = fill(backing);
  await ov.write(0, Buffer.alloc(MiB, 0x5a));
  await t.rejects(ov.flush(), { code: 'RNODE_OUTPUT_IO', message: /could not be synced/ }, 'the fdatasync fails');
  fs.rmSync(spare);
  await t.rejects(ov.flush(), { code: 'RNODE_OUTPUT_IO', message: /could not be synced/ }, 'space freed: the next flush fails too');
  await ov.write(4 * MiB, Buffer.alloc(MiB, 0x6b));
  await t.rejects(ov.flush(), { code: 'RNODE_OUTPUT_IO' }, 'and one after new writes');
  await t.rejects(ov.close(), { code: 'RNODE_OUTPUT_IO' }, 'close says so too');
});

// A full overlay filesystem answered the NBD client EIO, logged as RNODE_INTERNAL: qemu (werror=enospc) pauses a VM
// on ENOSPC until space is freed, but passes EIO on to the guest's filesystem.
t.test(
  'a full overlay filesystem is ENOSPC to the client, and logged with a code',
  { skip: notRoot || (!haveTools && 'tools missing') },
  async (t) => {
    const { dir, store } = await storedDisk(t, 'overlay-enospc');
    const mnt = tmpfs(t, path.join(dir, 'mnt'), '2m');
    const overlay = path.join(mnt, 'vm.overlay');
    const logs: Array<Record<string, unknown>> = [];
    let exp = await serveExport(t, dir, {
      store,
      disk: 'vm',
      writable: true,
      overlay,
      log: (event, fields) => event === 'request-failed' && logs.push(fields),
    });
    const c = new Raw(exp.socket);
    t.teardown(() => c.close());
    await c.open('vm');
    let handle = 0n;
    const request = (type: number, offset: number, length: number, payload = Buffer.alloc(0)) => {
      c.send(Buffer.concat([encodeRequest(type, 0, ++handle, offset, length), payload]));
      return c.simpleReply();
    };
    t.equal(await request(Cmd.WRITE, 0, MiB, Buffer.alloc(MiB, 0x11)), 0, 'a write before the filesystem fills');
    const spare = fill(mnt);
    t.equal(await request(Cmd.WRITE, 2 * MiB, 64 * KiB, Buffer.alloc(64 * KiB, 0x22)), Errno.ENOSPC, 'a write: ENOSPC');
    t.equal(await request(Cmd.WRITE_ZEROES, 3 * MiB, 64 * KiB), Errno.ENOSPC, 'write zeroes: ENOSPC');
    t.equal(await request(Cmd.FLUSH, 0, 0), Errno.ENOSPC, 'a flush (its bitmap page): ENOSPC');
    t.equal(logs.length, 3, 'each failed request is logged');
    for (const l of logs)
      t.match(
        l,
        { code: 'RNODE_OUTPUT_IO', message: /overlay .*vm\.overlay has no room for the guest's writes \(ENOSPC\); free space/ },
        'logged as RNODE_OUTPUT_IO: the overlay has no room',
      );

    fs.rmSync(spare);
    t.equal(await request(Cmd.FLUSH, 0, 0), 0, 'space freed: the flush succeeds');
    c.close();
    await exp.close();
    exp = await serveExport(t, dir, { store, disk: 'vm', writable: true, overlay, tag: 'again' });
    const r = await run('qemu-io', ['-f', 'raw', '-c', `read -P 0x11 0 ${MiB}`, unixUrl(exp.socket, 'vm')]);
    t.ok(r.code === 0 && !/fail/i.test(r.stdout + r.stderr), 'after a restart the flushed write is there');
    await exp.close();
  },
);

// A failed overlay creation (a full filesystem) left a headerless file of zeros under the overlay's name, and every
// later start refused it as "not an rnode overlay" (RNODE_USAGE) until the operator deleted it; a crash between the
// truncate and the header write left the same.
t.test('a failed overlay creation leaves nothing behind, and the next start creates it', { skip: notRoot }, async (t) => {
  const mnt = tmpfs(t, path.join(tmpDir(t, 'overlay-create'), 'mnt'), '1m');
  const file = path.join(mnt, 'vm.overlay');
  const spare = fill(mnt);
  await t.rejects(OverlayImage.open(file, zeros, id), { code: 'RNODE_OUTPUT_IO', message: /ENOSPC/ }, 'no room for the header');
  t.same(fs.readdirSync(mnt), ['fill'], 'nothing left behind');
  fs.rmSync(spare);
  const ov = await OverlayImage.open(file, zeros, id);
  t.equal(ov.allocatedBlocks, 0, 'space freed: the next start creates it');
  await ov.close();
});

t.test('a crash while creating an overlay leaves no file under its name', { skip: !haveTools && 'tools missing' }, async (t) => {
  const { dir, storeDir } = await storedDisk(t, 'overlay-crash');
  const overlay = path.join(dir, 'vm.overlay');
  const args = ['export', '--store', storeDir, '--disk', 'vm', '--writable', '--overlay', overlay, '--socket', path.join(dir, 'c.sock')];
  const r = await runCli(args, { env: { RNODE_FAILPOINT: 'overlay-header-written' }, timeoutMs: 20_000 });
  t.equal(r.signal, 'SIGKILL', 'killed after the header was written, before the overlay was in place');
  t.notOk(fs.existsSync(overlay), 'no file under the overlay name');
  const exp = await serveExport(t, dir, { store: fsStore(storeDir), disk: 'vm', writable: true, overlay });
  const w = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x44 0 65536', unixUrl(exp.socket, 'vm')]);
  t.equal(w.code, 0, 'the next start creates the overlay and takes writes');
});
