// Regression: `export --writable --overlay /dev/sdX` wrote the overlay's 4 KiB header over the device's first blocks
// (a mounted filesystem's superblock: it no longer mounted) and only then failed (RNODE_OUTPUT_IO, exit 1), because a
// device's size reads as 0, the mark of an empty overlay file. An overlay is a regular file; anything else is refused
// before a byte is written (RNODE_USAGE, exit 2). The block device needs root and losetup (CI runs as root).
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { json, runCli } from '../helpers/cli.js';
import { MiB, fsStore, randomData, snap, tmpDir } from '../helpers/images.js';
import { canLoop, loopDevice, readHead } from '../helpers/loop.js';

t.setTimeout(120_000);

async function storeWithDisk(t: Parameters<typeof tmpDir>[0]): Promise<{ dir: string; storeDir: string }> {
  const dir = tmpDir(t, 'overlay-device');
  const image = path.join(dir, 'disk.img');
  fs.writeFileSync(image, randomData(2 * MiB, 7));
  const storeDir = path.join(dir, 'store');
  await snap(fsStore(storeDir), image, 'vm', { chunkSize: MiB, lease: false });
  return { dir, storeDir };
}

function exportWith(dir: string, storeDir: string, overlay: string) {
  const socket = path.join(dir, 'vm.sock');
  return runCli(['export', '--store', storeDir, '--disk', 'vm', '--writable', '--overlay', overlay, '--socket', socket, '--json'], {
    timeoutMs: 30_000,
  });
}

t.test('a block device as the overlay is refused, exit 2, not one byte written', { skip: !canLoop && 'needs root and losetup' }, async (t) => {
  const { dir, storeDir } = await storeWithDisk(t);
  const { dev, back } = loopDevice(t, dir, 4 * MiB);

  const r = await exportWith(dir, storeDir, dev);
  t.equal(r.code, 2, 'exit 2');
  const { error } = json(r);
  t.equal(error.code, 'RNODE_USAGE');
  t.match(error.message, new RegExp(`^overlay ${dev} is a block device, and an overlay is a regular file; nothing was written to it`));
  t.ok(
    readHead(dev, 4 * MiB).every((b) => b === 0xff),
    'the device is untouched',
  );
  t.ok(
    fs.readFileSync(back).every((b) => b === 0xff),
    'its backing file unchanged',
  );
  t.notOk(fs.existsSync(path.join(dir, 'vm.sock')), 'refused before it listens');
});

t.test('a character device as the overlay is refused, exit 2', async (t) => {
  const { dir, storeDir } = await storeWithDisk(t);
  const r = await exportWith(dir, storeDir, '/dev/null');
  t.equal(r.code, 2, 'exit 2');
  t.match(json(r).error, { code: 'RNODE_USAGE', message: /\/dev\/null is a character device/ });
});
