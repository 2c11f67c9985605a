// A VM point is never left with one of its disk points gone (docs/vmware.md). `prune --disk` of a VM's disk deleted
// the points VM points use: `points --vm` still listed them, and `recover --vm` wrote the disks before the gone one,
// then failed. Now prune --disk refuses (nothing deleted) and names prune --vm; recover --vm checks every disk point
// before it writes; points --vm names a VM point whose disk point is gone (exit 1); and a --point that is no number is
// the command line's mistake (exit 2), as for a disk.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { commitVmPoint } from '../../src/repository/vm-points.js';
import { listPointSeqs } from '../../src/repository/points.js';
import { r2 } from '../../src/repository/names.js';
import { fsStore, randomData, snap, tmpDir } from '../helpers/images.js';
import { runCli } from '../helpers/cli.js';

const CHUNK = 64 * 1024;

t.test('prune --disk keeps the points VM points use; recover --vm checks them all first', async (t) => {
  const dir = tmpDir(t, 'vm-disk-retention');
  const storeDir = path.join(dir, 'store');
  const store = fsStore(storeDir);
  const disks = ['vm-1-disk-2000', 'vm-1-disk-2001'];
  const images = disks.map((d, i) => {
    const f = path.join(dir, `${d}.img`);
    fs.writeFileSync(f, randomData(4 * CHUNK, 70 + i));
    return f;
  });
  for (let seq = 1; seq <= 2; seq++) {
    for (const [i, d] of disks.entries()) {
      fs.writeFileSync(images[i], randomData(CHUNK, 100 * seq + i), { flag: 'r+' });
      // Full points: a point deleted below leaves the next one whole (as a rebasing prune did).
      await snap(store, images[i], d, { chunkSize: CHUNK, lease: false, forceFull: true });
    }
    await commitVmPoint(store, {
      vm: 'vm-1',
      vmName: 'one',
      snapshot: { moref: `snapshot-${seq}`, name: 's', createdAt: new Date().toISOString() },
      consistency: 'crash',
      disks: disks.map((disk, i) => ({
        key: 2000 + i,
        disk,
        point: seq,
        label: `disk ${i}`,
        fileName: `[ds] ${i}.vmdk`,
        capacityBytes: 4 * CHUNK,
        transport: 'nbd',
      })),
      skipped: [],
      removed: [],
      config: {},
    });
  }

  const refused = await runCli(['prune', '--store', storeDir, '--disk', disks[1], '--keep', '1']);
  t.equal(refused.code, 2, `prune --disk of a VM's disk is refused: ${refused.stderr}`);
  t.match(
    refused.stderr,
    /RNODE_USAGE: keeping 1 point of disk vm-1-disk-2001 would delete point 1, which VM point 1 of vm-1 uses; nothing was deleted: .*rnode prune --vm vm-1 --keep <n>/,
  );
  t.same(await listPointSeqs(store, disks[1]), [1, 2], 'and nothing was deleted');

  const word = await runCli(['recover', '--store', storeDir, '--vm', 'vm-1', '--point', 'x', '--out-dir', path.join(dir, 'x')]);
  t.equal(word.code, 2, 'a --point that is no number is a usage error');
  t.match(word.stderr, /RNODE_USAGE: --point "x" is not a VM point number/);

  // A disk point gone from under a VM point (deleted by an rnode before this one): nothing is written.
  await store.delete(r2.point('plain', disks[1], 1));
  t.same(await listPointSeqs(store, disks[1]), [2], 'the point is gone');
  const out = path.join(dir, 'out');
  const gone = await runCli(['recover', '--store', storeDir, '--vm', 'vm-1', '--point', '1', '--out-dir', out]);
  t.equal(gone.code, 1);
  t.match(
    gone.stderr,
    /RNODE_POINT_NOT_FOUND: VM point 1 of vm-1 uses point 1 of disk vm-1-disk-2001, which the store no longer holds; nothing was written/,
  );
  t.notOk(fs.existsSync(out), 'no disk was restored before the failure');
  const listed = await runCli(['points', '--store', storeDir, '--vm', 'vm-1', '--json']);
  t.equal(listed.code, 1, 'points --vm exits 1: a VM point cannot be restored');
  t.same(
    JSON.parse(listed.stdout).problems,
    [
      {
        vmPoint: 1,
        code: 'RNODE_POINT_NOT_FOUND',
        message: 'VM point 1 of vm-1 uses point 1 of disk vm-1-disk-2001, which the store no longer holds: it cannot be restored',
      },
    ],
    'and names it; it listed the VM point as any other',
  );

  const vmPrune = await runCli(['prune', '--store', storeDir, '--vm', 'vm-1', '--keep', '1']);
  t.equal(vmPrune.code, 0, `prune --vm deletes the VM point and its disks' points: ${vmPrune.stderr}`);
  t.same(await listPointSeqs(store, disks[0]), [2], 'the disk points only VM point 1 used are gone');
  const again = await runCli(['prune', '--store', storeDir, '--disk', disks[0], '--keep', '1']);
  t.equal(again.code, 0, 'prune --disk that deletes nothing a VM point uses runs');
  t.equal((await runCli(['points', '--store', storeDir, '--vm', 'vm-1'])).code, 0, 'points --vm: every disk point there again');
  const ok = await runCli(['recover', '--store', storeDir, '--vm', 'vm-1', '--out-dir', out]);
  t.equal(ok.code, 0, `the kept VM point restores: ${ok.stderr}`);
  t.ok(fs.readFileSync(path.join(out, `${disks[1]}.img`)).equals(fs.readFileSync(images[1])), 'byte-exact');
});
