// `rnode disks` reads a get or two per disk: one by one, a thousand disks at an object store's 20 ms a get took 22 s.
// They are read several at once now, and the list keeps its order and its per-disk problems.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { listDisks } from '../../src/jobs/disks.js';
import type { ObjectStore } from '../../src/store/types.js';
import { aroundCalls } from '../helpers/around-puts.js';
import { fsStore, KiB, randomData, snap, stopCodecWorkersAtEnd, tmpDir, v2PointFiles } from '../helpers/images.js';

stopCodecWorkersAtEnd(t);

/** The store with 5 ms added to every get, counting how many were in flight at once. */
function slowGets(store: ObjectStore): ObjectStore & { mostInFlight: number } {
  let inFlight = 0;
  const slow = aroundCalls(store, 'get', async (_args, get) => {
    out.mostInFlight = Math.max(out.mostInFlight, ++inFlight);
    try {
      await sleep(5);
      return await get();
    } finally {
      inFlight--;
    }
  });
  const out = Object.assign(slow, { mostInFlight: 0 });
  return out;
}

t.test('disks: a store of 24 disks is read several disks at once, in order, with a damaged one named', async (t) => {
  const dir = tmpDir(t, 'disks-list');
  const storeDir = path.join(dir, 'store');
  const image = path.join(dir, 'disk.img');
  const names = Array.from({ length: 24 }, (_, i) => `vm-${String(i).padStart(2, '0')}`);
  for (const [i, disk] of names.entries()) {
    fs.writeFileSync(image, randomData(64 * KiB + i, i + 1));
    await snap(fsStore(storeDir), image, disk, { chunkSize: 64 * KiB });
  }
  // A second point of one disk, and the latest manifest of another made unreadable.
  fs.writeFileSync(image, randomData(64 * KiB, 99));
  await snap(fsStore(storeDir), image, 'vm-03', { chunkSize: 64 * KiB });
  const damaged = path.join(storeDir, 'r2', 'plain', 'disks', 'vm-05', 'points', v2PointFiles(storeDir, 'vm-05')[0]);
  const bytes = fs.readFileSync(damaged);
  bytes[bytes.length - 5] ^= 0x5a;
  fs.writeFileSync(damaged, bytes);
  const store = slowGets(fsStore(storeDir));
  const first = await listDisks(store);
  t.ok(store.mostInFlight >= 4, `gets in flight at once: ${store.mostInFlight}`);
  t.same(
    first.disks.map((d) => d.disk),
    names.filter((n) => n !== 'vm-05'),
    'every readable disk, sorted',
  );
  t.same(
    first.disks.map((d) => [d.points, d.latest, d.diskSize]),
    names.flatMap((_, i) => (i === 5 ? [] : [i === 3 ? [2, 2, 64 * KiB] : [1, 1, 64 * KiB + i]])),
    'points, latest and size of each',
  );
  t.match(first.problems, [{ disk: 'vm-05', code: 'RNODE_MANIFEST_CORRUPT' }], 'the damaged disk is named');
  t.equal(first.problems.length, 1, 'and only it');
});
