// Issue 13: an incremental from a raw source compares every chunk with its parent, and by keyed BLAKE3 ids that scan
// cannot come near `xxhsum -H2`. A node keeps each committed point's XXH3-128 change hashes in a local cache
// (src/jobs/replicate/change-hashes.ts) and the next incremental compares by those first. The cache is only ever a
// hint: these tests check that the points stay exact when it is used, stale, damaged or absent, and that the chunks
// it finds changed are exactly the ones written.
import t, { type Test } from 'tap';
import crypto from 'node:crypto';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { EncryptionKey } from '../../src/crypto/keys.js';
import { changeHashesAvailable, changeHashPlace, ChangeHashReader, ChangeHashWriter, zeroChunkHash } from '../../src/jobs/replicate/change-hashes.js';
import { ChunkGrid } from '../../src/pipeline/grid.js';
import { Domain } from '../../src/repository/domain.js';
import {
  changeFiveChunks,
  KiB,
  countingSource,
  expectRestore,
  fingerprint,
  fsStore,
  mixedChunkImage,
  randomData,
  snap,
  stopCodecWorkersAtEnd,
  tmpDir,
  writeAt,
} from '../helpers/images.js';

stopCodecWorkersAtEnd(t);

const CHUNK = 64 * KiB;

t.test('libxxhash is loaded here (CI installs it with xxhash)', async (t) => {
  t.ok(changeHashesAvailable(), 'change hashes can be taken');
});

for (const encrypted of [false, true]) {
  t.test(
    `${encrypted ? 'encrypted' : 'plain'}: an incremental compares by the parent point’s change hashes and records exactly the chunks written`,
    async (t) => {
      const encryption = encrypted ? EncryptionKey.fromBytes(crypto.createHash('sha256').update('change-hashes-test').digest()) : undefined;
      const dir = tmpDir(t, 'change-hashes');
      const img = path.join(dir, 'disk.img');
      const store = fsStore(path.join(dir, 'store'));
      const changeHashDir = path.join(dir, 'cache');
      const size = mixedChunkImage(img, CHUNK);
      const p1 = await snap(store, img, 'd', { chunkSize: CHUNK, changeHashDir, encryption });
      t.equal(p1.comparedBy, undefined, 'a full point compares nothing');
      const files = fs.readdirSync(path.join(changeHashDir, 'change-hashes'));
      t.equal(files.length, 1, 'the full point left its change hashes');

      // One changed byte, text turned to zeros, zeros and a hole turned to data, the short last chunk.
      changeFiveChunks(img, CHUNK, size);
      const fp2 = fingerprint(img);
      const counted = { c: undefined as ReturnType<typeof countingSource> | undefined };
      const p2 = await snap(store, img, 'd', { changeHashDir, encryption, wrapSource: (s) => (counted.c = countingSource(s)) });
      t.equal(p2.comparedBy, 'change-hashes', 'compared by change hashes');
      t.equal(p2.chunksChanged, 5, 'exactly the five chunks written are recorded');
      t.equal(counted.c!.reads, 5, 'only they went through the pipeline');
      t.equal(counted.c!.bytes, p2.bytesRead, 'each byte read counts once');
      await expectRestore(t, store, 'd', 2, fp2, dir, 'the incremental', { encryption });

      // The point it wrote left hashes of its own: the next run compares by them too.
      writeAt(img, 7 * CHUNK, randomData(CHUNK, 7));
      const fp3 = fingerprint(img);
      const p3 = await snap(store, img, 'd', { changeHashDir, encryption });
      t.equal(p3.comparedBy, 'change-hashes');
      t.equal(p3.chunksChanged, 1);
      await expectRestore(t, store, 'd', 3, fp3, dir, 'the next incremental', { encryption });

      // A cache folder inside the store folder is refused before anything is written.
      await t.rejects(snap(store, img, 'd', { changeHashDir: path.join(dir, 'store', 'cache') }), { code: 'RNODE_OUTPUT_IN_STORE' });
      t.notOk(fs.existsSync(path.join(dir, 'store', 'cache')), 'nothing was written there');
    },
  );
}

/** Point 1 of disk d of a mixed image, with this node's change hashes of it: the one cache file. */
async function firstPointCached(t: Test) {
  const dir = tmpDir(t, 'change-hashes');
  const img = path.join(dir, 'disk.img');
  const store = fsStore(path.join(dir, 'store'));
  const changeHashDir = path.join(dir, 'cache');
  mixedChunkImage(img, CHUNK);
  await snap(store, img, 'd', { chunkSize: CHUNK, changeHashDir });
  const [file] = fs.readdirSync(path.join(changeHashDir, 'change-hashes')).map((f) => path.join(changeHashDir, 'change-hashes', f));
  return { dir, img, store, changeHashDir, file };
}

t.test('hashes of another point, or damaged ones, are not trusted: the run compares by ids and stays exact', async (t) => {
  const { dir, img, store, changeHashDir, file } = await firstPointCached(t);
  const ofPoint1 = fs.readFileSync(file);

  // A point committed without the cache: the file still holds point 1's hashes, which say nothing of point 2.
  writeAt(img, 5 * CHUNK, randomData(CHUNK, 8));
  await snap(store, img, 'd', { changeHashDir: undefined });
  writeAt(img, 9 * CHUNK, randomData(CHUNK, 9));
  const fp3 = fingerprint(img);
  const p3 = await snap(store, img, 'd', { changeHashDir });
  t.equal(p3.comparedBy, 'chunk-ids', 'hashes bound to an older point are not used');
  t.equal(p3.chunksChanged, 1);
  await expectRestore(t, store, 'd', 3, fp3, dir, 'the point after a stale cache');

  // Point 3 wrote its own hashes (taken on the workers while they compared ids): flip a bit in an entry.
  const ofPoint3 = fs.readFileSync(file);
  t.not(ofPoint3.compare(ofPoint1), 0, 'the run replaced the stale hashes');
  ofPoint3[96 + 16 * 9 + 3] ^= 0x10;
  fs.writeFileSync(file, ofPoint3);
  writeAt(img, 12 * CHUNK, randomData(CHUNK, 10));
  const fp4 = fingerprint(img);
  const counted = { c: undefined as ReturnType<typeof countingSource> | undefined };
  const p4 = await snap(store, img, 'd', { changeHashDir, wrapSource: (s) => (counted.c = countingSource(s)) });
  t.equal(p4.comparedBy, 'change-hashes', 'the header still binds the file to point 3');
  t.equal(p4.chunksChanged, 1, 'the damaged block’s chunks were compared by id: none of them recorded as changed');
  t.ok(counted.c!.reads > 1, `the damaged block's chunks went through the pipeline (${counted.c!.reads} reads)`);
  await expectRestore(t, store, 'd', 4, fp4, dir, 'the point after a damaged cache');

  // A truncated file is not used at all.
  fs.truncateSync(file, 50);
  const p5 = await snap(store, img, 'd', { changeHashDir });
  t.equal(p5.comparedBy, 'chunk-ids');
  t.equal(p5.chunksChanged, 0);
});

t.test('a chunk a run does not settle keeps the parent’s hash, or a zero chunk’s', async (t) => {
  const dir = tmpDir(t, 'change-hashes');
  const grid = new ChunkGrid(10 * CHUNK + 100, CHUNK);
  const place = changeHashPlace(dir, '/store', Domain.of(undefined), 'd', grid);
  const parentPoint = manifestFor(1);
  const first = new ChangeHashWriter(place, 'zero');
  for (let i = 0; i < grid.count; i += 2) first.put(i, Buffer.alloc(16, i + 1));
  t.ok(await first.finish(parentPoint));

  const parent = await ChangeHashReader.open(place, parentPoint);
  t.ok(parent, 'bound to its point');
  t.equal(await ChangeHashReader.open(place, manifestFor(2)), undefined, 'not to another');
  t.same(await parent!.get(4), Buffer.alloc(16, 5));
  const zero = await parent!.get(3);
  t.ok(zero && !zero.equals(Buffer.alloc(16)), 'an unsettled chunk of a scan holds the zero chunk hash');
  const shortZero = await parent!.get(10);
  t.ok(shortZero && !shortZero.equals(zero!), 'the short last chunk holds the hash of its own length of zeros');

  const carry = await ChangeHashReader.open(place, parentPoint);
  const next = new ChangeHashWriter(place, carry);
  next.put(4, Buffer.alloc(16, 0xaa));
  next.put(6, undefined);
  t.ok(await next.finish(manifestFor(2)));
  const child = (await ChangeHashReader.open(place, manifestFor(2)))!;
  t.same(await child.get(2), Buffer.alloc(16, 3), 'carried from the parent');
  t.same(await child.get(4), Buffer.alloc(16, 0xaa), 'taken by the run');
  t.equal(await child.get(6), undefined, 'not known');
  t.same(await child.get(3), zero, 'the parent’s zero chunk hash, carried');
  await Promise.all([parent!.close(), carry!.close(), child.close()]);
  const w = new ChangeHashWriter(place, 'zero');
  w.put(3, undefined);
  t.throws(() => w.put(3, undefined), /after chunk 3/, 'in index order only');
  await w.abort();
  t.same(fs.readdirSync(path.dirname(place.file)).sort(), [path.basename(place.file)], 'an aborted writer leaves no temp file');
});

t.test('over several blocks: untouched blocks are carried or zero, a damaged block is not known', async (t) => {
  const dir = tmpDir(t, 'change-hashes');
  const grid = new ChunkGrid(9000 * CHUNK, CHUNK); // three blocks of entries: 4096, 4096, 808
  const place = changeHashPlace(dir, '/store', Domain.of(undefined), 'd', grid);
  const zeroHash = (await (async () => {
    const w = new ChangeHashWriter(place, 'zero');
    t.ok(await w.finish(manifestFor(1, grid)));
    const r = (await ChangeHashReader.open(place, manifestFor(1, grid)))!;
    const h = await r.get(8999);
    await r.close();
    return h;
  })())!;
  t.ok(zeroHash, 'a run that settled nothing on a scan leaves every chunk as zeros');

  const first = new ChangeHashWriter(place, 'zero');
  first.put(5000, Buffer.alloc(16, 1));
  first.put(8999, Buffer.alloc(16, 2));
  t.ok(await first.finish(manifestFor(2, grid)));
  const carry = await ChangeHashReader.open(place, manifestFor(2, grid));
  const next = new ChangeHashWriter(place, carry);
  next.put(100, Buffer.alloc(16, 3));
  t.ok(await next.finish(manifestFor(3, grid)));
  await carry!.close();
  const r = (await ChangeHashReader.open(place, manifestFor(3, grid)))!;
  t.same(await r.get(100), Buffer.alloc(16, 3), 'block 0: taken');
  t.same(await r.get(4095), zeroHash, 'block 0: carried');
  t.same(await r.get(5000), Buffer.alloc(16, 1), 'block 1, untouched by the run: carried');
  t.same(await r.get(8999), Buffer.alloc(16, 2), 'block 2, the short last one: carried');
  await r.close();

  // A flipped bit in block 1's entries: that block is not known, the others are.
  const bytes = fs.readFileSync(place.file);
  bytes[96 + (4096 * 16 + 8) + 5000 - 4096] ^= 1;
  fs.writeFileSync(place.file, bytes);
  const damaged = (await ChangeHashReader.open(place, manifestFor(3, grid)))!;
  t.equal(await damaged.get(5000), undefined, 'the damaged block: not known');
  t.equal(await damaged.get(4096), undefined);
  t.same(await damaged.get(8999), Buffer.alloc(16, 2), 'the block after it still is');
  t.same(await damaged.get(100), Buffer.alloc(16, 3), 'and the one before');
  await damaged.close();
});

// Blocks no chunk of a run settled are written in one fill (a 16 TiB sparse disk's cache took over a minute entry by
// entry): each entry is a zero chunk's hash, the short last chunk's of its own length.
t.test('an untouched block holds zero chunk hashes, the short last chunk its own', async (t) => {
  const dir = tmpDir(t, 'change-hashes');
  const grid = new ChunkGrid(2 * 4096 * CHUNK + 5 * CHUNK + 100, CHUNK);
  const place = changeHashPlace(dir, '/store', Domain.of(undefined), 'd', grid);
  const w = new ChangeHashWriter(place, 'zero');
  w.put(10, Buffer.alloc(16, 7)); // block 0 settled in part; blocks 1 and 2 untouched
  t.ok(await w.finish(manifestFor(1, grid)));
  const r = (await ChangeHashReader.open(place, manifestFor(1, grid)))!;
  const full = zeroChunkHash(place.seed, CHUNK);
  t.same(await r.get(10), Buffer.alloc(16, 7));
  for (const i of [0, 4095, 4096, 6000, 8191, 8192, 8196]) t.same(await r.get(i), full, `chunk ${i}: a zero chunk's hash`);
  t.same(await r.get(8197), zeroChunkHash(place.seed, 100), 'the short last chunk: 100 zero bytes');
  t.not(zeroChunkHash(place.seed, 100).toString('hex'), full.toString('hex'));
  await r.close();
});

function manifestFor(point: number, grid = new ChunkGrid(10 * CHUNK + 100, CHUNK)) {
  return {
    format: 'rnode-point',
    version: 4,
    disk: 'd',
    point,
    parent: null,
    full: true,
    createdAt: `2026-12-0${point}T00:00:00.000Z`,
    diskSize: grid.diskSize,
    chunkSize: grid.chunkSize,
    source: { kind: 'raw', location: '/img' },
    table: { generation: 0, records: 0, segments: [{ records: 0, first: 0, last: 0, digest: `d${point}`, key: '' }] },
    stats: { chunksTotal: 11, chunksChanged: 0, chunksZero: 0, bytesRead: 0, bytesWritten: 0, seconds: 0 },
  } as unknown as Parameters<typeof ChangeHashReader.open>[1];
}

// The cache decides which chunks a run skips, so only this user's own regular file is read. Bugs: a FIFO put in the
// file's place hung the replicate in open() for good, SIGTERM included; a file anyone could write (or another
// user's, in a shared cache folder) was trusted.
t.test('a cache file that is not this user’s own private regular file is not read, and never hangs the run', { timeout: 60_000 }, async (t) => {
  const { dir, img, store, changeHashDir, file } = await firstPointCached(t);
  const aside = `${file}.aside`;
  let n = 1;
  const next = async (what: string, expected: 'change-hashes' | 'chunk-ids') => {
    writeAt(img, (n % 12) * CHUNK, randomData(CHUNK, 40 + n));
    const fp = fingerprint(img);
    const p = await snap(store, img, 'd', { changeHashDir });
    n++;
    t.equal(p.comparedBy, expected, `${what}: compared by ${expected}`);
    t.equal(p.chunksChanged, 1, `${what}: the one chunk written`);
    await expectRestore(t, store, 'd', n, fp, dir, what);
  };
  await next('its own file', 'change-hashes');

  fs.renameSync(file, aside);
  execFileSync('mkfifo', ['-m', '600', file]);
  await next('a FIFO in its place', 'chunk-ids');
  t.ok(fs.statSync(file).isFile(), 'the run put its own file back');

  fs.chmodSync(file, 0o666);
  await next('a file others may write', 'chunk-ids');
  fs.chmodSync(file, 0o600);
  await next('the same file, private again', 'change-hashes');

  fs.renameSync(file, aside);
  fs.symlinkSync(aside, file);
  await next('a symlink to a cache file', 'chunk-ids');

  if (process.getuid?.() === 0) {
    fs.chownSync(file, 65534, 65534);
    await next('another user’s file', 'chunk-ids');
  }
});

// A run killed before its finish() left its temp file beside the cache file, and nothing removed it: one more file
// per kill, for good (the finder counted 15 after 15 agent kills).
t.test('temp files killed runs left beside the cache file are removed by the next run', async (t) => {
  const { img, store, changeHashDir, file } = await firstPointCached(t);
  const left = [`${file}.0123456789ab.tmp`, `${file}.ba9876543210.tmp`];
  for (const f of left) fs.writeFileSync(f, '');
  const other = `${file}.notours`;
  fs.writeFileSync(other, '');
  writeAt(img, 3 * CHUNK, randomData(CHUNK, 77));
  t.equal((await snap(store, img, 'd', { changeHashDir })).comparedBy, 'change-hashes');
  for (const f of left) t.notOk(fs.existsSync(f), `${path.basename(f)} removed`);
  t.ok(fs.existsSync(other), 'a file of another name is left alone');
  t.same(fs.readdirSync(path.dirname(file)).sort(), [path.basename(file), path.basename(other)].sort(), 'the cache file and the other file only');
});
