// Prune's lease of a domain is the disk lease `prune.<domain>` (disks/prune.plain/lease.json). Bug: a disk of id
// `prune.plain` was accepted, so its replicate held the plain repository's prune lease: `prune` failed with "another
// prune is sweeping this repository", and a prune's lease made the replicate fail as "being written by" the prune.
// Now no new point is written under an id that starts with `prune.` (RNODE_BAD_DISK_ID); the points a disk of such an
// id already has (written by an older rnode) stay readable.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { ErrorCodes } from '../../src/errors.js';
import { replicate } from '../../src/jobs/replicate.js';
import { openSource } from '../../src/source/index.js';
import { MemoryStore } from '../../src/store/memory/memory-store.js';
import { json, runCli } from '../helpers/cli.js';
import { fsStore, randomData, tmpDir } from '../helpers/images.js';
import { CHUNK, applyChanges, chunkData, writePoint } from '../helpers/v2.js';

const RESERVED =
  /RNODE_BAD_DISK_ID: disk id "prune\.[^"]*" cannot take new points: ids that start with "prune\." are reserved for prune's lease .*choose another --disk/;

t.test('a disk id that starts with prune. takes no new point, by any path', async (t) => {
  const dir = tmpDir(t, 'reserved-id');
  const store = path.join(dir, 'store');
  const img = path.join(dir, 'd.img');
  fs.writeFileSync(img, randomData(256 * 1024, 1));
  for (const disk of ['prune.plain', 'prune.k0123456789abcdef', 'prune.other']) {
    const r = await runCli(['replicate', '--source', img, '--target', store, '--disk', disk]);
    t.equal(r.code, 2, `--disk ${disk} is refused`);
    t.match(r.stderr, RESERVED);
  }
  // The default id of a file of that name is refused the same way.
  const named = path.join(dir, 'prune.plain');
  fs.copyFileSync(img, named);
  const byName = await runCli(['replicate', '--source', named, '--target', store]);
  t.equal(byName.code, 2);
  t.match(byName.stderr, RESERVED);
  t.notOk(fs.existsSync(path.join(store, 'disks', 'prune.plain')), 'no lease or object of the disk was written');

  // Other ids with "prune" in them are not reserved.
  for (const disk of ['prune', 'prune-db', 'prunes.img', 'a.prune.plain']) {
    const r = await runCli(['replicate', '--source', img, '--target', store, '--disk', disk]);
    t.equal(r.code, 0, `--disk ${disk}: ${r.stderr}`);
  }

  // The job itself refuses it too, as the agent and a VM run call it.
  const source = await openSource(img);
  t.teardown(() => source.close());
  await t.rejects(replicate({ store: new MemoryStore(), source, disk: 'prune.plain' }), { code: ErrorCodes.BAD_DISK_ID });
});

t.test('the points a disk named prune.<domain> already has stay readable', async (t) => {
  const dir = tmpDir(t, 'reserved-old');
  const storeDir = path.join(dir, 'store');
  const disk = 'prune.plain';
  // Written with the format modules, as an rnode that took the id did.
  const size = 8 * CHUNK;
  const img = Buffer.alloc(size);
  const images: Buffer[] = [];
  for (let p = 1; p <= 2; p++) {
    const changes = new Map([...Array(4).keys()].map((i) => [i + p, chunkData(p * 10 + i)]));
    await writePoint(fsStore(storeDir), undefined, disk, p, p === 1 ? null : p - 1, size, changes);
    applyChanges(img, changes);
    images.push(Buffer.from(img));
  }

  const pts = await runCli(['points', '--store', storeDir, '--disk', disk, '--json']);
  t.equal(pts.code, 0, pts.stderr);
  t.equal(json(pts).points.length, 2);
  const ver = await runCli(['verify', '--store', storeDir, '--disk', disk, '--point', 'all']);
  t.equal(ver.code, 0, ver.stderr);
  const out = path.join(dir, 'out.img');
  for (const p of [1, 2]) {
    const rec = await runCli(['recover', '--store', storeDir, '--disk', disk, '--point', String(p), '--out', out]);
    t.equal(rec.code, 0, rec.stderr);
    t.ok(fs.readFileSync(out).equals(images[p - 1]), `point ${p} restores byte-exact`);
  }
  const disks = await runCli(['disks', '--store', storeDir, '--json']);
  t.equal(disks.code, 0, disks.stderr);
  t.match(json(disks).disks, [{ disk, points: 2 }]);

  const more = await runCli(['replicate', '--source', out, '--target', storeDir, '--disk', disk]);
  t.equal(more.code, 2, 'but it takes no new point');
  t.match(more.stderr, RESERVED);
  t.equal(json(await runCli(['points', '--store', storeDir, '--disk', disk, '--json'])).points.length, 2);

  const pruned = await runCli(['prune', '--store', storeDir, '--disk', disk, '--keep', '1', '--json']);
  t.equal(pruned.code, 0, `its retention and the repository's sweep still run: ${pruned.stderr}`);
  t.same(
    json(await runCli(['points', '--store', storeDir, '--disk', disk, '--json'])).points.map((p: { point: number }) => p.point),
    [2],
  );
});
