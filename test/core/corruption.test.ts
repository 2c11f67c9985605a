// A chunk's stored bytes corrupted (a byte flipped in its blob, its pack truncated inside it) or its pack deleted:
// `verify` and `recover` (the CLI) exit 1 naming the chunk (index, disk offset, RNODE_CHUNK_CORRUPT or
// RNODE_CHUNK_MISSING) and no output file is left behind. Restores trust neither the index nor a 64-bit hash: a
// valid blob of another chunk at this chunk's place, the blob of the same chunk from another store with other
// content, and an index entry pointing at another chunk's blob are all caught (the id of what decodes is
// recomputed); a parent record whose id differs from the new content in its last byte only (a collision of every
// shorter digest) does not make replicate skip a changed chunk. Damaged manifests and tables are reported too.
// (Repository v2; these were the legacy chunk-object tamper tests. One pack per chunk here: packs of 64 KiB.)
import t from 'tap';
import type { Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { ErrorCodes } from '../../src/errors.js';
import { Domain } from '../../src/repository/domain.js';
import { decodeIndex, encodeIndex, listIndexIds } from '../../src/repository/index-file.js';
import { r2 } from '../../src/repository/names.js';
import { decodeManifestV4, decodeTableV3, encodeManifestV4, encodeTableV3, segmentDigest } from '../../src/repository/point-format.js';
import { verify } from '../../src/jobs/verify.js';
import { listPointSeqs, listPoints, loadPoint } from '../../src/repository/points.js';
import { tableEntries } from '../../src/repository/view.js';
import {
  KiB,
  MiB,
  blobPlace,
  expectRestore,
  fingerprint,
  flipByte,
  fsStore,
  listFiles,
  randomData,
  restore,
  snap,
  textData,
  tmpDir,
  writeAt,
  type Fingerprint,
  stopCodecWorkersAtEnd,
} from '../helpers/images.js';
import { json, lines, runCli } from '../helpers/cli.js';

stopCodecWorkersAtEnd(t);

const CHUNK = 64 * KiB;
const SIZE = MiB + 1000; // 17 chunks

interface Fixture {
  dir: string;
  storeDir: string;
  img: string;
  fps: Fingerprint[];
}

/** Two points: a full one of mixed data, and one where chunk 7 changed. */
async function twoPoints(t: Test): Promise<Fixture> {
  const dir = tmpDir(t, 'corrupt');
  const storeDir = path.join(dir, 'store');
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, Buffer.concat([randomData((SIZE / 2) | 0, 1), textData(SIZE - ((SIZE / 2) | 0), 1)]));
  const store = fsStore(storeDir);
  const fps = [fingerprint(img)];
  await snap(store, img, 'd', { chunkSize: CHUNK, packSize: CHUNK });
  writeAt(img, 7 * CHUNK + 10, randomData(100, 2));
  fps.push(fingerprint(img));
  const p2 = await snap(store, img, 'd', { packSize: CHUNK });
  t.equal(p2.chunksChanged, 1);
  return { dir, storeDir, img, fps };
}

const noStack = (s: string) => !/^\s+at /m.test(s);

/** `rnode verify` fails naming the chunk (with --json: the problem carries code, index and offset). */
async function expectVerifyFails(t: Test, f: Fixture, point: string, code: string, index: number, asJson = false) {
  const offset = index * CHUNK;
  const r = await runCli(['verify', '--store', f.storeDir, '--disk', 'd', '--point', point, ...(asJson ? ['--json'] : [])]);
  t.equal(r.code, 1, `verify --point ${point}${asJson ? ' --json' : ''} exits 1`);
  if (asJson) {
    const v = json(r);
    t.equal(v.ok, false);
    t.ok(
      v.problems.some((p: any) => p.code === code && p.index === index && p.offset === offset),
      `--json problems hold {code: ${code}, index: ${index}, offset: ${offset}}: ${JSON.stringify(v.problems)}`,
    );
    return;
  }
  t.equal(lines(r.stderr).length, 1, 'one line on stderr');
  t.match(r.stderr, new RegExp(`^rnode: ${code}: `), `stderr names the code ${code}, as every failure line does`);
  t.match(r.stderr, new RegExp(`chunk ${index}\\b`), `stderr names chunk ${index}`);
  t.match(r.stderr, String(offset), `stderr names the disk offset ${offset}`);
  t.ok(noStack(r.stderr), 'no stack trace');
  t.match(r.stdout, /FAILED/, 'stdout says FAILED');
}

/** The library's verify finds the same problem for a point. */
async function expectLibVerifyFails(t: Test, f: Fixture, point: string, code: string, index: number) {
  const v = await verify({ store: fsStore(f.storeDir), disk: 'd', point });
  t.equal(v.ok, false, `verify(point ${point}) is not ok`);
  t.ok(
    v.problems.some((p) => p.code === code && p.index === index && p.offset === index * CHUNK),
    `verify(point ${point}) names chunk ${index}: ${JSON.stringify(v.problems)}`,
  );
}

/** recover fails naming the chunk and leaves no output (nor a partial file) behind. */
async function expectRecoverFails(t: Test, f: Fixture, point: string, code: string, index: number) {
  const outDir = fs.mkdtempSync(path.join(f.dir, 'out-'));
  const out = path.join(outDir, 'restored.img');
  const r = await runCli(['recover', '--store', f.storeDir, '--disk', 'd', '--point', point, '--out', out]);
  t.equal(r.code, 1, `recover --point ${point} exits 1`);
  t.equal(lines(r.stderr).length, 1, 'one line on stderr');
  t.match(r.stderr, new RegExp(`^rnode: ${code}: `), `stderr names the code ${code}, as every failure line does`);
  t.match(r.stderr, new RegExp(`chunk ${index}\\b`), `stderr names chunk ${index}`);
  t.match(r.stderr, String(index * CHUNK), 'stderr names the disk offset');
  t.ok(noStack(r.stderr), 'no stack trace');
  t.notOk(fs.existsSync(out), 'the output path does not exist');
  t.same(fs.readdirSync(outDir), [], 'no partial file is left in the output directory');
  return r;
}

t.test('verify --json names a corrupt chunk', async (t) => {
  const f = await twoPoints(t);
  const b = await blobPlace(f.storeDir, 'd', 1, 5);
  flipByte(b.file, b.offset + 1000);
  await expectVerifyFails(t, f, 'all', ErrorCodes.CHUNK_CORRUPT, 5, true);
});

type Place = Awaited<ReturnType<typeof blobPlace>>;
// [what, damage, code, also through the CLI binary]; chunk 5 is random data: a blob of its own pack.
const corruptions: Array<[string, (b: Place) => void, string, boolean]> = [
  ['a byte flipped in its blob', (b) => flipByte(b.file, b.offset + 1000), ErrorCodes.CHUNK_CORRUPT, true],
  ['the first byte of its blob flipped', (b) => flipByte(b.file, b.offset), ErrorCodes.CHUNK_CORRUPT, false],
  ['its pack truncated inside the blob', (b) => fs.truncateSync(b.file, b.offset + b.length - 1), ErrorCodes.CHUNK_CORRUPT, true],
  ['its pack cut to 10 bytes', (b) => fs.truncateSync(b.file, 10), ErrorCodes.CHUNK_CORRUPT, false],
  ['its pack deleted', (b) => fs.rmSync(b.file), ErrorCodes.CHUNK_MISSING, true],
];

for (const [what, damage, code, viaCli] of corruptions) {
  t.test(`chunk 5 of point 1 with ${what}: verify and recover fail naming it`, async (t) => {
    const f = await twoPoints(t);
    damage(await blobPlace(f.storeDir, 'd', 1, 5));
    if (viaCli) {
      await Promise.all([
        expectVerifyFails(t, f, 'all', code, 5),
        expectRecoverFails(t, f, 'latest', code, 5), // point 2 restores chunk 5 from point 1
      ]);
    }
    await expectLibVerifyFails(t, f, 'all', code, 5);
    await expectLibVerifyFails(t, f, '1', code, 5);
    await expectLibVerifyFails(t, f, 'latest', code, 5);
    await t.rejects(
      restore(fsStore(f.storeDir), 'd', 1, path.join(f.dir, 'lib.img')),
      { code, details: { index: 5, offset: 5 * CHUNK } },
      'the library recover rejects with the code and the chunk in details',
    );
    t.notOk(fs.existsSync(path.join(f.dir, 'lib.img')), 'no output left by the library recover');
  });
}

t.test('a damaged chunk only point 2 uses: point 1 still verifies and restores, point 2 fails', async (t) => {
  const f = await twoPoints(t);
  const b = await blobPlace(f.storeDir, 'd', 2, 7);
  flipByte(b.file, b.offset + 60);
  const ok = await runCli(['verify', '--store', f.storeDir, '--disk', 'd', '--point', '1']);
  t.equal(ok.code, 0, 'verify of point 1 is ok');
  t.equal(ok.stderr, '');
  await expectRestore(t, fsStore(f.storeDir), 'd', 1, f.fps[0], f.dir);
  await expectLibVerifyFails(t, f, '2', ErrorCodes.CHUNK_CORRUPT, 7);
  await expectRecoverFails(t, f, '2', ErrorCodes.CHUNK_CORRUPT, 7);
});

t.test('verify reports every damaged chunk, not only the first', async (t) => {
  const f = await twoPoints(t);
  const b2 = await blobPlace(f.storeDir, 'd', 1, 2);
  flipByte(b2.file, b2.offset + 100);
  fs.rmSync((await blobPlace(f.storeDir, 'd', 1, 3)).file);
  const v = await verify({ store: fsStore(f.storeDir), disk: 'd', point: '1' });
  t.equal(v.ok, false);
  t.same(v.problems.map((p) => [p.code, p.index]).sort(), [
    [ErrorCodes.CHUNK_CORRUPT, 2],
    [ErrorCodes.CHUNK_MISSING, 3],
  ]);
});

t.test("a valid blob of another chunk at a chunk's place: restore refuses it", async (t) => {
  const f = await twoPoints(t);
  // Chunks 1 and 3 are both random, blobs of the same length: only their ids tell them apart.
  const b1 = await blobPlace(f.storeDir, 'd', 1, 1);
  const b3 = await blobPlace(f.storeDir, 'd', 1, 3);
  t.equal(b1.length, b3.length);
  const src = fs.readFileSync(b1.file).subarray(b1.offset, b1.offset + b1.length);
  const dst = fs.readFileSync(b3.file);
  src.copy(dst, b3.offset);
  fs.writeFileSync(b3.file, dst);
  const r = await expectRecoverFails(t, f, '1', ErrorCodes.CHUNK_CORRUPT, 3);
  t.match(r.stderr, /checksum mismatch|chunk id mismatch/, "the message says the blob is not this chunk's");
  await expectLibVerifyFails(t, f, '1', ErrorCodes.CHUNK_CORRUPT, 3);
  await t.rejects(restore(fsStore(f.storeDir), 'd', 1, path.join(f.dir, 'lib.img')), { code: ErrorCodes.CHUNK_CORRUPT, details: { index: 3 } });
});

t.test('the blob of the same chunk from another store (other content): restore refuses it', async (t) => {
  const f = await twoPoints(t);
  const other = path.join(f.dir, 'other-store');
  const img2 = path.join(f.dir, 'other.img');
  fs.copyFileSync(path.join(f.dir, 'disk.img'), img2);
  writeAt(img2, 4 * CHUNK + 5, randomData(64, 77));
  await snap(fsStore(other), img2, 'd', { chunkSize: CHUNK, packSize: CHUNK });
  const from = await blobPlace(other, 'd', 1, 4);
  const to = await blobPlace(f.storeDir, 'd', 1, 4);
  const dst = fs.readFileSync(to.file);
  fs.readFileSync(from.file)
    .subarray(from.offset, from.offset + from.length)
    .copy(dst, to.offset);
  fs.writeFileSync(to.file, dst);
  await expectRecoverFails(t, f, '1', ErrorCodes.CHUNK_CORRUPT, 4);
  await expectLibVerifyFails(t, f, 'all', ErrorCodes.CHUNK_CORRUPT, 4);
});

t.test("an index entry that points at another chunk's blob: restore refuses the chunk", async (t) => {
  const f = await twoPoints(t);
  const d = Domain.of(undefined);
  const store = fsStore(f.storeDir);
  const p6 = await blobPlace(f.storeDir, 'd', 1, 6);
  const p1 = await blobPlace(f.storeDir, 'd', 1, 1);
  // Rewrite (with a valid checksum: no key in the plain domain) the index object naming chunk 6 so it points at chunk 1's blob.
  // The entry takes chunk 1's stored checksum too: only the id recomputed from the plaintext can tell.
  const all = [];
  for (const id of await listIndexIds(store, d.name)) all.push(...decodeIndex(await store.get(r2.index(d.name, id)), d, id));
  const one = all.find((x) => x.packId === p1.packId && x.entry.offset === p1.offset)!;
  for (const id of await listIndexIds(store, d.name)) {
    const key = r2.index(d.name, id);
    const locs = decodeIndex(await store.get(key), d, id);
    const l = locs.find((x) => x.packId === p6.packId && x.entry.offset === p6.offset);
    if (!l) continue;
    l.packId = p1.packId;
    l.entry = { ...l.entry, offset: p1.offset, length: p1.length, payloadXxh64: one.entry.payloadXxh64 };
    await store.put(key, encodeIndex(d, id, locs));
  }
  const r = await expectRecoverFails(t, f, '1', ErrorCodes.CHUNK_CORRUPT, 6);
  t.match(r.stderr, /chunk id mismatch/, 'the recomputed id is what caught it');
});

t.test('a parent record equal to the new content in all but the last id byte does not make replicate skip it', async (t) => {
  const f = await twoPoints(t);
  const store = fsStore(f.storeDir);
  const dom = Domain.of(undefined);
  // Point 3 will change chunk 3 to D. Forge point 1's record of chunk 3 (the chain's base; point 2 does not hold
  // chunk 3) to an id that agrees with D's in its first 31 bytes: every digest shorter than the id collides.
  const d = randomData(CHUNK, 333);
  const forged = Buffer.from(dom.chunkId(d));
  forged[31] ^= 1;
  const mkey = r2.point(dom.name, 'd', 1);
  const m = decodeManifestV4(await store.get(mkey), dom, 'd', 1);
  const ref = m.table.segments[0];
  const place = { disk: 'd', point: 1, parent: null, generation: 0, segment: 0 };
  const entries = decodeTableV3(await store.get(ref.key), dom, place, ref.key);
  entries.find((e) => e.index === 3)!.id = forged;
  const seg = encodeTableV3(dom, place, entries);
  await store.put(ref.key, seg);
  ref.digest = segmentDigest(seg);
  await store.put(mkey, encodeManifestV4(dom, m));
  writeAt(f.img, 3 * CHUNK, d);
  const fp3 = fingerprint(f.img);
  const p3 = await snap(store, f.img, 'd');
  t.equal(p3.chunksChanged, 1, 'chunk 3 is stored although all but one byte of its id matches the parent');
  t.equal(p3.chunksDeduplicated, 0);
  await expectRestore(t, store, 'd', 3, fp3, f.dir);
});

t.test('a damaged manifest or table segment is reported by verify with its code', async (t) => {
  const f = await twoPoints(t);
  const tableDir = path.join(f.storeDir, 'r2', 'plain', 'disks', 'd', 'tables', '0000000002');
  flipByte(path.join(tableDir, listFiles(tableDir)[0]), 20);
  const v = await verify({ store: fsStore(f.storeDir), disk: 'd', point: 'all' });
  t.equal(v.ok, false, 'a bit flip in a table segment fails verify');
  t.ok(
    v.problems.some((p) => p.code === ErrorCodes.MANIFEST_CORRUPT && p.point === 2),
    'reported as MANIFEST_CORRUPT of point 2',
  );
  const out = path.join(f.dir, 'o.img');
  const rr = await runCli(['recover', '--store', f.storeDir, '--disk', 'd', '--point', '2', '--out', out]);
  t.equal(rr.code, 1);
  t.match(rr.stderr, ErrorCodes.MANIFEST_CORRUPT);
  t.notOk(fs.existsSync(out));

  const m = path.join(f.storeDir, 'r2', 'plain', 'disks', 'd', 'points', '0000000001');
  const bytes = fs.readFileSync(m);
  const at = bytes.indexOf(Buffer.from(`"diskSize":${SIZE}`));
  t.ok(at > 0, 'the manifest holds its disk size');
  bytes.write(`"diskSize":${SIZE + 1}`.slice(0, `"diskSize":${SIZE}`.length), at);
  fs.writeFileSync(m, bytes);
  const r1 = await runCli(['verify', '--store', f.storeDir, '--disk', 'd', '--point', '1']);
  t.equal(r1.code, 1, 'an edited manifest fails verify');
  t.match(r1.stderr, ErrorCodes.MANIFEST_CORRUPT);
  t.equal(lines(r1.stderr).length, 1);
});

// Regression: one damaged manifest of an old point stopped the disk's protection for good: replicate (even --full)
// and prune failed with MANIFEST_CORRUPT, and only a new disk id got a point again.
t.test('a damaged point in the chain: the next replicate starts a new chain that restores, and prune can drop the damage', async (t) => {
  const f = await twoPoints(t);
  flipByte(path.join(f.storeDir, 'r2', 'plain', 'disks', 'd', 'points', '0000000001'), 30);
  writeAt(f.img, 2 * CHUNK, randomData(100, 3));
  const fp3 = fingerprint(f.img);
  const r = await runCli(['replicate', '--source', f.img, '--target', f.storeDir, '--disk', 'd', '--cache-dir', 'none', '--json']);
  t.equal(r.code, 0, r.stderr);
  const p3 = json(r);
  t.equal(p3.point, 3, 'numbered after the damaged points');
  t.equal(p3.full, true, 'a chain of its own');
  t.match(p3.fullReason, /the chain of point 2 is damaged \(manifest \S+0000000001 is corrupt.*a new chain starts here/);
  await expectRestore(t, fsStore(f.storeDir), 'd', 3, fp3, f.dir);
  t.equal((await verify({ store: fsStore(f.storeDir), disk: 'd', point: '3' })).ok, true, 'the new point verifies');

  const kept = await runCli(['prune', '--store', f.storeDir, '--disk', 'd', '--keep', '1']);
  t.equal(kept.code, 0, `prune keeps the new chain and deletes the damaged points: ${kept.stderr}`);
  t.same(await listPointSeqs(fsStore(f.storeDir), 'd'), [3]);
  const check = await runCli(['check', '--store', f.storeDir, '--read-data']);
  t.equal(check.code, 0, `the repository is whole again: ${check.stderr}`);
  await expectRestore(t, fsStore(f.storeDir), 'd', 3, fp3, f.dir);
});

// Regression: a damaged table (its manifest intact) of a point in the chain failed every later replicate with
// RNODE_MANIFEST_CORRUPT as the scan read it, and prune with it: the disk was not protected any more, while the
// docs said the next replicate starts a new chain.
t.test('a damaged table in the chain: the next replicate starts a new chain that restores, and prune can drop the damage', async (t) => {
  const f = await twoPoints(t);
  writeAt(f.img, 5 * CHUNK, randomData(100, 4));
  const r3 = await runCli(['replicate', '--source', f.img, '--target', f.storeDir, '--disk', 'd', '--cache-dir', 'none', '--json']);
  t.equal(r3.code, 0, r3.stderr);
  const segment = path.join(f.storeDir, 'r2', 'plain', 'disks', 'd', 'tables', '0000000002', 'g0000-00000000');
  t.ok(fs.existsSync(segment), 'point 2 has its own table');
  flipByte(segment, 40);
  writeAt(f.img, 2 * CHUNK, randomData(100, 5));
  const fp4 = fingerprint(f.img);
  const r = await runCli(['replicate', '--source', f.img, '--target', f.storeDir, '--disk', 'd', '--cache-dir', 'none', '--json']);
  t.equal(r.code, 0, r.stderr);
  const p4 = json(r);
  t.equal(p4.point, 4, 'numbered after the damaged chain');
  t.equal(p4.full, true, 'a chain of its own');
  t.match(p4.fullReason, /the chain of point 3 is damaged \(chunk table \S+0000000002\S* is not the segment.*a new chain starts here/);
  await expectRestore(t, fsStore(f.storeDir), 'd', 4, fp4, f.dir);

  const kept = await runCli(['prune', '--store', f.storeDir, '--disk', 'd', '--keep', '1']);
  t.equal(kept.code, 0, `prune keeps the new chain and deletes the damaged points: ${kept.stderr}`);
  t.same(await listPointSeqs(fsStore(f.storeDir), 'd'), [4]);
  const check = await runCli(['check', '--store', f.storeDir, '--read-data']);
  t.equal(check.code, 0, `the repository is whole again: ${check.stderr}`);
  await expectRestore(t, fsStore(f.storeDir), 'd', 4, fp4, f.dir);
});

// A damaged table of one disk stops every prune's sweep of the repository (what it references is not known): the
// error said "restore from another point or store", which no operator could act on. It now says what to run.
t.test('a damaged table stops the sweep of every disk, with an error that says how to get past it', async (t) => {
  const f = await twoPoints(t);
  const other = path.join(f.dir, 'other.img');
  fs.writeFileSync(other, randomData(SIZE, 9));
  for (let i = 0; i < 2; i++) {
    writeAt(other, i * CHUNK, randomData(100, 10 + i));
    const r = await runCli(['replicate', '--source', other, '--target', f.storeDir, '--disk', 'e', '--cache-dir', 'none']);
    t.equal(r.code, 0, r.stderr);
  }
  flipByte(path.join(f.storeDir, 'r2', 'plain', 'disks', 'd', 'tables', '0000000002', 'g0000-00000000'), 40);
  const blocked = await runCli(['prune', '--store', f.storeDir, '--disk', 'e', '--keep', '1']);
  t.equal(blocked.code, 1, 'prune of another disk fails: nothing may be deleted');
  t.match(blocked.stderr, ErrorCodes.MANIFEST_CORRUPT);
  t.match(blocked.stderr, /replicate disk d again .*prune --disk d --keep <n>/, 'the error says what to run');
  t.ok(noStack(blocked.stderr), 'no stack trace');

  writeAt(f.img, 3 * CHUNK, randomData(100, 12));
  const fp = fingerprint(f.img);
  const r = await runCli(['replicate', '--source', f.img, '--target', f.storeDir, '--disk', 'd', '--cache-dir', 'none', '--json']);
  t.equal(r.code, 0, r.stderr);
  t.equal(json(r).full, true, 'the damaged chain is not built upon');
  const dropped = await runCli(['prune', '--store', f.storeDir, '--disk', 'd', '--keep', '1']);
  t.equal(dropped.code, 0, dropped.stderr);
  const again = await runCli(['prune', '--store', f.storeDir, '--disk', 'e', '--keep', '1']);
  t.equal(again.code, 0, `the other disk prunes again: ${again.stderr}`);
  await expectRestore(t, fsStore(f.storeDir), 'd', 3, fp, f.dir);
});

// Regression: `points` failed as a whole (RNODE_MANIFEST_CORRUPT, exit 1) on the first damaged manifest, hiding the
// intact points that recover still restores: the list the error messages send the operator to was the one missing.
t.test('points lists every readable point and names the damaged one; restoring still refuses it', async (t) => {
  const f = await twoPoints(t);
  flipByte(path.join(f.storeDir, 'r2', 'plain', 'disks', 'd', 'points', '0000000002'), 30);
  const r = await runCli(['points', '--store', f.storeDir, '--disk', 'd', '--json']);
  t.equal(r.code, 1, 'exit 1, as disks with a problem');
  const listed = json(r);
  t.same(
    listed.points.map((p: any) => p.point),
    [1],
    'the intact point is listed',
  );
  t.match(listed.problems, [{ point: 2, code: ErrorCodes.MANIFEST_CORRUPT, message: /0000000002/ }], 'the damaged one is named');
  t.equal(listed.problems.length, 1);
  const human = await runCli(['points', '--store', f.storeDir, '--disk', 'd']);
  t.equal(human.code, 1, human.stderr);
  t.match(human.stdout, /^1 +- +full /m, 'the row of point 1');
  t.match(human.stdout, /^point 2 cannot be read: RNODE_MANIFEST_CORRUPT: /m);
  t.equal(lines(human.stderr).length, 1);
  t.match(human.stderr, /^rnode: RNODE_MANIFEST_CORRUPT: 1 point\(s\) of disk d cannot be read, named above/);

  // What chooses a point to restore from still never passes over the damage.
  await t.rejects(listPoints(fsStore(f.storeDir), 'd'), { code: ErrorCodes.MANIFEST_CORRUPT });
  const latest = await runCli(['recover', '--store', f.storeDir, '--disk', 'd', '--out', path.join(f.dir, 'latest.img')]);
  t.equal(latest.code, 1, 'recover of the latest (damaged) point fails');
  t.match(latest.stderr, ErrorCodes.MANIFEST_CORRUPT);
  const out = path.join(f.dir, 'one.img');
  const one = await runCli(['recover', '--store', f.storeDir, '--disk', 'd', '--point', '1', '--out', out]);
  t.equal(one.code, 0, `the listed point restores: ${one.stderr}`);
  t.same(fingerprint(out), f.fps[0]);
});

t.test('a chunk stored twice is read from its other copy when the first is damaged', async (t) => {
  const f = await twoPoints(t);
  // A second copy of every chunk but one: the same disk replicated into another store (plain chunk ids do not
  // depend on the store), its packs and indexes copied in beside the first's.
  const other = path.join(f.dir, 'other');
  await snap(fsStore(other), f.img, 'e', { chunkSize: CHUNK, packSize: CHUNK });
  for (const kind of ['packs', 'index'])
    fs.cpSync(path.join(other, 'r2', 'plain', kind), path.join(f.storeDir, 'r2', 'plain', kind), { recursive: true });
  const first = await blobPlace(f.storeDir, 'd', 1, 5);
  flipByte(first.file, first.offset + 1000);
  await expectRestore(t, fsStore(f.storeDir), 'd', 1, f.fps[0], f.dir);
  await expectRestore(t, fsStore(f.storeDir), 'd', 2, f.fps[1], f.dir);
  const v = await verify({ store: fsStore(f.storeDir), disk: 'd', point: '2' });
  t.equal(v.ok, true, 'verify reads the intact copy too');
});

// Regression: a damaged chunk was reused by every later replicate (dedup found it in the index), so re-replicating,
// as the error advised, made points as broken as the old ones. Repair drops it; a full point stores it anew.
t.test('a damaged chunk: check --read-data --repair, then replicate --full, and every point restores again', async (t) => {
  const f = await twoPoints(t);
  const b = await blobPlace(f.storeDir, 'd', 1, 5);
  flipByte(b.file, b.offset + 1000);
  await expectRecoverFails(t, f, '2', ErrorCodes.CHUNK_CORRUPT, 5);
  const again = await runCli(['replicate', '--source', f.img, '--target', f.storeDir, '--disk', 'd', '--cache-dir', 'none']);
  t.equal(again.code, 0, again.stderr);
  await expectRecoverFails(t, f, '3', ErrorCodes.CHUNK_CORRUPT, 5); // what re-replicating used to give

  const usage = await runCli(['check', '--store', f.storeDir, '--repair']);
  t.equal(usage.code, 2, '--repair alone is a usage error');
  const r = await runCli(['check', '--store', f.storeDir, '--read-data', '--repair', '--json']);
  t.equal(r.code, 1, 'check still reports the damage it found');
  const repair = json(r).domains[0].repair;
  t.equal(repair.packsRepaired, 1);
  t.equal(repair.dropped.length, 1, 'the damaged chunk is left out');
  t.equal(repair.dropped[0], (await chunkId(f, 1, 5)).toString('hex'));
  t.notOk(fs.existsSync(b.file), 'the damaged pack is gone');

  const full = await runCli(['replicate', '--source', f.img, '--target', f.storeDir, '--disk', 'd', '--cache-dir', 'none', '--full', '--json']);
  t.equal(full.code, 0, full.stderr);
  t.equal(json(full).full, true);
  const store = fsStore(f.storeDir);
  await expectRestore(t, store, 'd', 1, f.fps[0], f.dir);
  await expectRestore(t, store, 'd', 2, f.fps[1], f.dir);
  await expectRestore(t, store, 'd', 3, f.fps[1], f.dir);
  await expectRestore(t, store, 'd', 4, f.fps[1], f.dir);
  const ok = await runCli(['check', '--store', f.storeDir, '--read-data']);
  t.equal(ok.code, 0, `the repository is whole again: ${ok.stdout}${ok.stderr}`);
});

// Regression: after --repair dropped a damaged chunk, a plain incremental inherited the parent's entry for it (an
// unchanged chunk is not looked up) and committed a point that failed to restore like its parent; only --full healed.
// Now an incremental from a raw source reads and stores that chunk again, whether it compares by chunk ids or by the
// change hashes this node kept, and the older points restore again too.
for (const cache of ['none', 'kept'] as const) {
  t.test(`a chunk --repair dropped is stored again by the next incremental (change hashes: ${cache})`, async (t) => {
    const f = await twoPoints(t);
    const cacheDir = cache === 'none' ? 'none' : path.join(f.dir, 'cache');
    const replicate = () => runCli(['replicate', '--source', f.img, '--target', f.storeDir, '--disk', 'd', '--cache-dir', cacheDir, '--json']);
    if (cache === 'kept') t.equal((await replicate()).code, 0, 'point 3 keeps this node’s change hashes');
    const b = await blobPlace(f.storeDir, 'd', 1, 5);
    flipByte(b.file, b.offset + 1000);
    const r = await runCli(['check', '--store', f.storeDir, '--read-data', '--repair', '--json']);
    t.equal(json(r).domains[0].repair.dropped.length, 1, 'the damaged chunk is dropped');

    const next = await replicate();
    t.equal(next.code, 0, next.stderr);
    const p = json(next);
    t.equal(p.full, false, 'an incremental');
    t.equal(p.comparedBy, cache === 'none' ? 'chunk-ids' : 'change-hashes');
    t.equal(p.chunksChanged, 1, 'the dropped chunk was stored again, nothing else');
    const store = fsStore(f.storeDir);
    await expectRestore(t, store, 'd', p.point, f.fps[1], f.dir, 'the new point');
    await expectRestore(t, store, 'd', 1, f.fps[0], f.dir, 'point 1, whose chunk it was');
    const ok = await runCli(['check', '--store', f.storeDir, '--read-data']);
    t.equal(ok.code, 0, `the repository is whole again: ${ok.stdout}${ok.stderr}`);
  });
}

async function chunkId(f: Fixture, point: number, index: number): Promise<Buffer> {
  const store = fsStore(f.storeDir);
  for await (const e of tableEntries(store, await loadPoint(store, 'd', point), undefined)) if (e.index === index) return e.id!;
  throw new Error(`no chunk ${index}`);
}
