// --writable --overlay: guest writes (unaligned, across chunks, into holes, write-zeroes) go to the overlay file;
// the export reads them back, its map shows them as data, they survive a restart with the same overlay, and the
// store's objects are byte-identical before and after. An overlay inside the store, or of another point, is refused.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { codecWorkers } from '../../src/pipeline/codec-workers.js';
import { xxh64 } from '../../src/format/checksum.js';
import { assertOverlayOutsideStore } from '../../src/export/index.js';
import { replicate } from '../../src/jobs/replicate.js';
import { recover } from '../../src/jobs/restore.js';
import { openSource } from '../../src/source/index.js';
import { fsStore, listFiles, randomData, sha256File, snap, tmpDir, writeAt } from '../helpers/images.js';
import { changeDisk, CHUNK, compare, haveTools, KiB, makeDisk, MiB, nbdMap, run, serveExport, unixUrl } from './helpers.js';

t.setTimeout(180_000);
t.teardown(() => codecWorkers().close());

function storeDigest(dir: string): Map<string, string> {
  return new Map(
    listFiles(dir).map((f) => [
      f,
      createHash('sha256')
        .update(fs.readFileSync(path.join(dir, f)))
        .digest('hex'),
    ]),
  );
}

t.test('writes go to the overlay, survive a restart, and never touch the store', { skip: !haveTools && 'tools missing' }, async (t) => {
  const dir = tmpDir(t, 'export-overlay');
  const storeDir = path.join(dir, 'store');
  const store = fsStore(storeDir);
  const image = path.join(dir, 'disk.img');
  makeDisk(image);
  await snap(store, image, 'vm', { chunkSize: CHUNK, lease: false });
  changeDisk(image);
  await snap(store, image, 'vm', { lease: false });
  const before = storeDigest(storeDir);
  const overlay = path.join(dir, 'vm.overlay');

  // What the guest writes, applied to a copy of the image: the expected disk afterwards.
  const expected = path.join(dir, 'expected.img');
  fs.copyFileSync(image, expected);
  const writes: Array<[number, Buffer]> = [
    [100 * KiB + 17, randomData(5000, 31)], // unaligned, inside one overlay block: copy-on-write of the rest
    [CHUNK - 4096, randomData(3 * CHUNK, 32)], // across chunks and blocks
    [3 * MiB + 64 * KiB, randomData(128 * KiB, 33)], // into a hole
  ];
  const qemuArgs: string[] = [];
  writes.forEach(([o, data], i) => {
    const f = path.join(dir, `w${i}.bin`);
    fs.writeFileSync(f, data);
    writeAt(expected, o, data);
    qemuArgs.push('-c', `write -s ${f} ${o} ${data.length}`);
  });
  writeAt(expected, 1 * MiB + 4 * KiB, Buffer.alloc(60 * KiB));
  qemuArgs.push('-c', `write -z ${1 * MiB + 4 * KiB} ${60 * KiB}`);

  let exp = await serveExport(t, dir, { store, disk: 'vm', writable: true, overlay, tag: 'w1' });
  const info = await run('nbdinfo', [unixUrl(exp.socket, 'vm')]);
  t.match(info.stdout, /is_read_only: false/, 'writable');
  t.match(info.stdout, /can_multi_conn: false/, 'no multi-conn on a writable export');
  const w = await run('qemu-io', ['-f', 'raw', ...qemuArgs, unixUrl(exp.socket, 'vm')]);
  t.equal(w.code, 0, `qemu-io writes ok ${w.stderr}`);
  t.notMatch(w.stdout, /failed/, 'no write failed');
  t.equal((await compare(expected, unixUrl(exp.socket, 'vm'))).code, 0, 'the export reads back the writes over the point');
  const map = await nbdMap(unixUrl(exp.socket, 'vm'));
  const at = (o: number) => map.find((e) => e.offset <= o && o < e.offset + e.length)!;
  t.equal(at(3 * MiB + 64 * KiB).type, 0, 'a write into a hole shows as data');
  t.equal(at(3 * MiB + 512 * KiB).type, 3, 'the rest of the hole is still hole+zero');
  t.equal((await run('nbdinfo', [unixUrl(exp.socket, 'vm@1')])).code, 1, 'other points are not offered by a writable export');
  await exp.close();

  exp = await serveExport(t, dir, { store, disk: 'vm', writable: true, overlay, tag: 'w2' });
  const r = await compare(expected, unixUrl(exp.socket, 'vm'));
  t.equal(r.code, 0, `after a restart with the same overlay, the writes are still there ${r.stdout}`);
  const copy = path.join(dir, 'copy.img');
  t.equal((await run('nbdcopy', [unixUrl(exp.socket, 'vm'), copy])).code, 0);
  t.equal(sha256File(copy), sha256File(expected), 'nbdcopy of the writable export: byte-exact');

  // "Migrate to production": the existing NBD source captures the recovered disk (with the guest's writes) as a point.
  const prod = fsStore(path.join(dir, 'prod-store'));
  const source = await openSource(unixUrl(exp.socket, 'vm'));
  const rp = await replicate({ store: prod, source, disk: 'vm-prod', lease: false }).finally(() => source.close());
  t.ok(rp.full, 'a new disk: its first point is full');
  const restored = path.join(dir, 'prod.img');
  await recover({ store: prod, disk: 'vm-prod', out: restored });
  t.equal(sha256File(restored), sha256File(expected), 'rnode replicate --source <export URL> captured the recovered disk byte-exact');
  await exp.close();

  t.same(storeDigest(storeDir), before, 'every store object is byte-identical before and after');
  t.ok(fs.statSync(overlay).blocks * 512 < 4 * MiB, `the overlay is sparse (${fs.statSync(overlay).blocks * 512} bytes allocated)`);

  await t.rejects(
    serveExport(t, dir, { store, disk: 'vm', point: '1', writable: true, overlay, tag: 'w3' }),
    { code: 'RNODE_USAGE', message: /holds writes over point 2/ },
    'the overlay of point 2 is refused for point 1',
  );
  await t.rejects(serveExport(t, dir, { store, disk: 'vm', writable: true, tag: 'w4' }), { code: 'RNODE_USAGE' }, '--writable needs --overlay');
});

t.test("an overlay is refused for another store's point of the same disk id, number and size", async (t) => {
  // It was taken: the guest saw the blocks it wrote over store A's point beside store B's data, a mix of two disks.
  const dir = tmpDir(t, 'export-overlay-other-store');
  const stores = ['a', 'b'].map((name, i) => {
    const image = path.join(dir, `${name}.img`);
    fs.writeFileSync(image, randomData(4 * CHUNK, 60 + i));
    return { store: fsStore(path.join(dir, `store-${name}`)), image };
  });
  for (const { store, image } of stores) await snap(store, image, 'vm', { chunkSize: CHUNK, lease: false });
  const overlay = path.join(dir, 'vm.overlay');
  await (await serveExport(t, dir, { store: stores[0].store, disk: 'vm', writable: true, overlay, tag: 'a1' })).close();
  await t.rejects(
    serveExport(t, dir, { store: stores[1].store, disk: 'vm', writable: true, overlay, tag: 'b1' }),
    {
      code: 'RNODE_USAGE',
      message: /holds writes over point 1 of disk vm taken at \S+, and the point 1 of disk vm here was taken at \S+: another store's point/,
    },
    "store B's point 1 refuses store A's overlay",
  );
  await (await serveExport(t, dir, { store: stores[0].store, disk: 'vm', writable: true, overlay, tag: 'a2' })).close();
  t.pass("store A's export opens it again");
  // An overlay an rnode before this check wrote (header version 1) does not say when its point was taken: it opens.
  const header = fs.readFileSync(overlay).subarray(0, 4096);
  header.writeUInt32LE(1, 8);
  header.fill(0, 168, 248);
  header.writeBigUInt64LE(xxh64(header.subarray(0, 160)), 160);
  const fd = fs.openSync(overlay, 'r+');
  fs.writeSync(fd, header, 0, 4096, 0);
  fs.closeSync(fd);
  await (await serveExport(t, dir, { store: stores[0].store, disk: 'vm', writable: true, overlay, tag: 'a3' })).close();
  t.pass('a version-1 overlay still opens');
});

t.test('an overlay inside the store directory is refused', async (t) => {
  const dir = tmpDir(t, 'export-overlay-in');
  const storeDir = path.join(dir, 'store');
  fs.mkdirSync(path.join(storeDir, 'disks'), { recursive: true });
  t.throws(() => assertOverlayOutsideStore(path.join(storeDir, 'disks', 'x.overlay'), storeDir), { code: 'RNODE_OUTPUT_IN_STORE' });
  t.throws(() => assertOverlayOutsideStore(path.join(storeDir, 'new', 'x.overlay'), `file://${storeDir}`), { code: 'RNODE_OUTPUT_IN_STORE' });
  fs.symlinkSync(storeDir, path.join(dir, 'link'));
  t.throws(
    () => assertOverlayOutsideStore(path.join(dir, 'link', 'x.overlay'), storeDir),
    { code: 'RNODE_OUTPUT_IN_STORE' },
    'through a symlink too',
  );
  t.doesNotThrow(() => assertOverlayOutsideStore(path.join(dir, 'x.overlay'), storeDir));
  t.doesNotThrow(() => assertOverlayOutsideStore(path.join(dir, 'x.overlay'), 's3://bucket/prefix'));
});
