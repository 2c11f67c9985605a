// Repository v2 safety: a crash (SIGKILL) at every failpoint of replicate leaves the old points, and the next run
// resumes and restores byte-exact; writers of different disks into one repository at once never collide and every
// point restores; with encryption on, tampered metadata (two manifests swapped, index entries swapped, an index
// object replayed under another name, a pack truncated, a manifest moved under another disk's keyed name) is detected
// and named, never restored from, and prune deletes nothing on it.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import type { Test } from 'tap';
import { EncryptionKey } from '../../src/crypto/keys.js';
import { ErrorCodes } from '../../src/errors.js';
import { check } from '../../src/jobs/check.js';
import { pruneStore } from '../../src/jobs/prune-v2.js';
import { stats } from '../../src/jobs/stats.js';
import { verify } from '../../src/jobs/verify.js';
import { Domain } from '../../src/repository/domain.js';
import { forgetChunkIndexes } from '../../src/repository/index-cache.js';
import { listIndexIds } from '../../src/repository/index-file.js';
import { r2 } from '../../src/repository/names.js';
import { listPointSeqs } from '../../src/repository/points.js';
import {
  KiB,
  MiB,
  blobPlace,
  expectRestore,
  fingerprint,
  fsStore,
  listFiles,
  packFiles,
  randomData,
  restore,
  snap,
  stopCodecWorkersAtEnd,
  textData,
  tmpDir,
  writeAt,
} from '../helpers/images.js';
import { json, runCli } from '../helpers/cli.js';

stopCodecWorkersAtEnd(t);

const CHUNK = 64 * KiB;

const FAILPOINTS = ['after-pack', 'after-index', 'after-segment', 'after-checkpoint', 'before-commit', 'after-commit'];

async function nextRun(t: Test, args: string[], storeDir: string) {
  let r = await runCli(args);
  if (r.code !== 0 && /RNODE_LEASE_HELD/.test(r.stderr)) {
    // The killed writer's lease is live until its TTL: age it, as the TTL passing would.
    const file = path.join(storeDir, 'disks', 'd', 'lease.json');
    const lease = JSON.parse(fs.readFileSync(file, 'utf8'));
    fs.writeFileSync(file, JSON.stringify({ ...lease, expiresAt: new Date(0).toISOString() }));
    r = await runCli(args);
  }
  t.equal(r.code, 0, `the run after the crash succeeds: ${r.stderr.trim()}`);
  return r;
}

// Point 1 is written once (through the CLI, as the crashed and the next run are); each test crashes a copy.
let pointOne: string;
t.before(async () => {
  pointOne = tmpDir(t, 'v2crash');
  const img = path.join(pointOne, 'disk.img');
  fs.writeFileSync(img, Buffer.concat([randomData(MiB, 1), textData(MiB, 2)]));
  const first = await runCli(replicateArgs(pointOne));
  t.equal(first.code, 0, first.stderr);
});

function replicateArgs(dir: string): string[] {
  const img = path.join(dir, 'disk.img');
  const storeDir = path.join(dir, 'store');
  return ['replicate', '--source', img, '--target', storeDir, '--disk', 'd', '--chunk-size', '64KiB', '--pack-size', '256KiB', '--json'];
}

for (const fp of FAILPOINTS) {
  t.test(`a crash at ${fp}: the old points stay, the next run completes, every point restores byte-exact`, async (t) => {
    const dir = tmpDir(t, 'v2crash');
    fs.cpSync(pointOne, dir, { recursive: true });
    const img = path.join(dir, 'disk.img');
    const storeDir = path.join(dir, 'store');
    const args = replicateArgs(dir);
    t.same(await listPointSeqs(fsStore(storeDir), 'd'), [1], 'point 1 is there');
    const fp1 = fingerprint(img);
    writeAt(img, 100 * KiB, randomData(600 * KiB, 3));
    const fp2 = fingerprint(img);
    const crashed = await runCli(args, { env: { RNODE_FAILPOINT: fp } });
    t.equal(crashed.signal, 'SIGKILL', `killed at ${fp}`);
    const store = fsStore(storeDir);
    const seqs = await listPointSeqs(store, 'd');
    t.same(seqs, fp === 'after-commit' ? [1, 2] : [1], 'the old set of points, or the new one');
    await expectRestore(t, store, 'd', 1, fp1, dir, 'point 1 after the crash');
    const r = json(await nextRun(t, args, storeDir));
    t.equal(r.point, fp === 'after-commit' ? 3 : 2);
    if (fp === 'after-checkpoint') t.equal(r.resumed, true, 'the checkpoint is resumed');
    forgetChunkIndexes(store);
    await expectRestore(t, store, 'd', 'latest', fp2, dir, 'the point after the crash');
    await expectRestore(t, store, 'd', 1, fp1, dir, 'point 1 (still)');
    t.equal((await verify({ store, disk: 'd', point: 'all' })).ok, true, 'verify all ok');
  });
}

t.test('concurrent writers of different disks into one repository', async (t) => {
  const dir = tmpDir(t, 'v2conc');
  const store = fsStore(path.join(dir, 'store'));
  const base = randomData(2 * MiB, 9);
  const imgs = [0, 1, 2, 3].map((i) => {
    const f = path.join(dir, `d${i}.img`);
    const b = Buffer.from(base);
    randomData(256 * KiB, 50 + i).copy(b, i * 256 * KiB);
    fs.writeFileSync(f, b);
    return f;
  });
  // Separate stores over one directory: writers share nothing but the files (as separate nodes would).
  const results = await Promise.all(
    imgs.map((f, i) => snap(fsStore(path.join(dir, 'store')), f, `disk-${i}`, { chunkSize: CHUNK, packSize: 512 * KiB })),
  );
  t.same(
    results.map((r) => r.point),
    [1, 1, 1, 1],
  );
  const packs = packFiles(path.join(dir, 'store')).map((f) => path.basename(f));
  t.equal(new Set(packs).size, packs.length, 'no two packs collide');
  for (const [i, f] of imgs.entries()) {
    await expectRestore(t, store, `disk-${i}`, 1, fingerprint(f), dir, `disk ${i}`);
    t.equal((await verify({ store, disk: `disk-${i}`, point: 'all' })).ok, true);
  }
  // Once they are done, a fifth disk of the same template finds everything deduplicated.
  const r = await snap(store, imgs[0], 'disk-4', { chunkSize: CHUNK });
  t.equal(r.chunksDeduplicated, r.chunksTotal, "a later writer reuses the earlier writers' chunks");
});

async function encryptedStore(t: Test) {
  const dir = tmpDir(t, 'v2tamper');
  const storeDir = path.join(dir, 'store');
  const store = fsStore(storeDir);
  const key = EncryptionKey.fromBytes(Buffer.alloc(32, 42));
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, Buffer.concat([randomData(MiB, 11), textData(MiB, 12)]));
  const fps = [fingerprint(img)];
  await snap(store, img, 'd', { chunkSize: CHUNK, encryption: key, packSize: 256 * KiB });
  writeAt(img, 5 * CHUNK, randomData(CHUNK, 13));
  fps.push(fingerprint(img));
  await snap(store, img, 'd', { encryption: key, packSize: 256 * KiB });
  const d = Domain.of(key);
  return { dir, storeDir, store, key, img, fps, d, dname: d.dname('d') };
}

t.test('encrypted: two manifests swapped are named forged and never restored from', async (t) => {
  const s = await encryptedStore(t);
  const a = path.join(s.storeDir, r2.point(s.d.name, s.dname, 1));
  const b = path.join(s.storeDir, r2.point(s.d.name, s.dname, 2));
  const [ab, bb] = [fs.readFileSync(a), fs.readFileSync(b)];
  fs.writeFileSync(a, bb);
  fs.writeFileSync(b, ab);
  for (const p of [1, 2]) {
    const out = path.join(s.dir, `o${p}.img`);
    await t.rejects(restore(s.store, 'd', p, out, { encryption: s.key }), { code: ErrorCodes.METADATA_FORGED, message: /manifest r2\// });
    t.notOk(fs.existsSync(out), 'nothing written');
  }
});

t.test('encrypted: swapped index entries are named forged', async (t) => {
  const s = await encryptedStore(t);
  const [id] = await listIndexIds(s.store, s.d.name);
  const file = path.join(s.storeDir, r2.index(s.d.name, id));
  const b = fs.readFileSync(file);
  const o = 8 + 12 + 4; // header, nonce, count: the first two 80-byte entries (as ciphertext)
  const first = Buffer.from(b.subarray(o, o + 80));
  b.copy(b, o, o + 80, o + 160);
  first.copy(b, o + 80);
  fs.writeFileSync(file, b);
  forgetChunkIndexes(s.store);
  await t.rejects(restore(s.store, 'd', 2, path.join(s.dir, 'o.img'), { encryption: s.key }), {
    code: ErrorCodes.METADATA_FORGED,
    message: new RegExp(`index ${r2.index(s.d.name, id)}`),
  });
});

t.test('encrypted: an index object replayed under another name is named forged', async (t) => {
  const s = await encryptedStore(t);
  const [id] = await listIndexIds(s.store, s.d.name);
  const other = 'ab' + id.slice(2);
  fs.mkdirSync(path.dirname(path.join(s.storeDir, r2.index(s.d.name, other))), { recursive: true });
  fs.copyFileSync(path.join(s.storeDir, r2.index(s.d.name, id)), path.join(s.storeDir, r2.index(s.d.name, other)));
  forgetChunkIndexes(s.store);
  await t.rejects(restore(s.store, 'd', 1, path.join(s.dir, 'o.img'), { encryption: s.key }), {
    code: ErrorCodes.METADATA_FORGED,
    message: new RegExp(other),
  });
  // An index object of an earlier run put back after it was deleted opens (it is authentic) but names only real
  // blobs: the data it leads to is still checked against each chunk's id, so point 1 restores byte-exact.
  fs.rmSync(path.join(s.storeDir, r2.index(s.d.name, other)));
  forgetChunkIndexes(s.store);
  await expectRestore(t, s.store, 'd', 1, s.fps[0], s.dir, 'point 1', { encryption: s.key });
});

t.test('encrypted: a truncated pack is named, never restored from', async (t) => {
  const s = await encryptedStore(t);
  const b = await blobPlace(s.storeDir, 'd', 2, 5, s.key);
  fs.truncateSync(b.file, b.offset + 10);
  forgetChunkIndexes(s.store);
  const out = path.join(s.dir, 'o.img');
  await t.rejects(restore(s.store, 'd', 2, out, { encryption: s.key }), {
    code: ErrorCodes.CHUNK_CORRUPT,
    message: new RegExp(`pack ${r2.pack(s.d.name, b.packId)}`),
  });
  t.notOk(fs.existsSync(out), 'no output left');
  const v = await verify({ store: s.store, disk: 'd', point: '2', encryption: s.key });
  t.equal(v.ok, false);
  t.ok(
    v.problems.some((p) => p.code === ErrorCodes.CHUNK_CORRUPT && p.index === 5),
    'verify names chunk 5',
  );
  t.notOk(
    listFiles(s.storeDir).some((f) => f.includes('/d/') || f.endsWith('/d')),
    'no object name holds the disk id',
  );
});

// The disk readers prune, stats and check share learn an encrypted disk's id from inside its newest manifest (names are
// keyed, one-way), so they check it twice: the name must be the keyed name of that id, and the manifest must open
// under it. Each check alone is passed by one of the two moves below.
t.test("encrypted: a manifest moved under another disk's keyed name is named forged by check, stats and prune, which deletes nothing", async (t) => {
  const s = await encryptedStore(t);
  await snap(s.store, s.img, 'e', { chunkSize: CHUNK, encryption: s.key, packSize: 256 * KiB });
  const ename = s.d.dname('e');
  const moved = path.join(s.storeDir, r2.point(s.d.name, ename, 9));
  const original = fs.readFileSync(path.join(s.storeDir, r2.point(s.d.name, s.dname, 2)));
  // AES-GCM is malleable before its tag is checked: the body's "disk":"d" flipped to "disk":"e" reads as disk e when
  // peeked at, so only opening it (its tag) tells it is forged.
  const body = s.key.peekMetadataUnauthenticated(original.subarray(8))!;
  const at = body.indexOf('"disk":"d"');
  t.ok(at >= 0, 'the sealed manifest names its disk');
  const flipped = Buffer.from(original);
  flipped[8 + 12 + at + '"disk":"'.length] ^= 'd'.charCodeAt(0) ^ 'e'.charCodeAt(0);
  t.match(s.key.peekMetadataUnauthenticated(flipped.subarray(8))!.toString('utf8'), /"disk":"e"/, 'the flipped manifest peeks as disk e');

  const cases: Array<[string, Buffer]> = [
    ['copied as it is (the name is not the keyed name of d)', original],
    ['with its disk id flipped to e (it does not open)', flipped],
  ];
  for (const [what, bytes] of cases) {
    fs.writeFileSync(moved, bytes);
    const packs = packFiles(s.storeDir).sort();
    const c = await check({ store: s.store, encryption: s.key });
    t.notOk(c.ok, `${what}: check fails`);
    t.ok(
      c.problems.some((p) => p.code === ErrorCodes.METADATA_FORGED && p.key === r2.point(s.d.name, ename, 9)),
      `${what}: check names ${r2.point(s.d.name, ename, 9)} forged: ${JSON.stringify(c.problems.slice(0, 2))}`,
    );
    await t.rejects(stats({ store: s.store, encryption: s.key }), { code: ErrorCodes.METADATA_FORGED }, `${what}: stats refuses`);
    await t.rejects(
      pruneStore({ store: s.store, encryption: s.key, graceMs: 0, maxUnused: 0 }),
      { code: ErrorCodes.METADATA_FORGED },
      `${what}: prune refuses`,
    );
    t.same(packFiles(s.storeDir).sort(), packs, `${what}: prune deleted no pack`);
  }
  fs.rmSync(moved);
  t.ok((await check({ store: s.store, encryption: s.key })).ok, 'with the moved manifest gone, check is ok');
  await expectRestore(t, s.store, 'e', 1, s.fps[1], s.dir, 'disk e', { encryption: s.key });
});

// Regression: with a point's manifest missing, its table looked stale to prune (no listed manifest named it): prune
// deleted it, and the packs only it named three runs later, each exit 0, though check named the broken chain. Its
// child then could not be restored, nor could the point itself once its manifest was put back from a backup.
t.test('a missing manifest in the middle of a chain: prune refuses and deletes nothing; put back, every point restores', async (t) => {
  const dir = tmpDir(t, 'missing-parent');
  const storeDir = path.join(dir, 'store');
  const store = fsStore(storeDir);
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, randomData(MiB, 61));
  const fps: string[] = [];
  for (let p = 1; p <= 3; p++) {
    if (p > 1) writeAt(img, p * 3 * 64 * KiB, randomData(64 * KiB, 61 + p));
    await snap(store, img, 'd', { chunkSize: 64 * KiB, packSize: 256 * KiB });
    fps[p] = fingerprint(img);
  }
  const manifest = path.join(storeDir, r2.point('plain', 'd', 2));
  const aside = path.join(dir, 'point-2.manifest');
  fs.renameSync(manifest, aside);
  const objects = () => listFiles(storeDir).filter((f) => f.startsWith('r2/'));
  const before = objects();
  for (let run = 0; run < 3; run++) {
    await t.rejects(
      pruneStore({ store, graceMs: 0, maxUnused: 0 }),
      { code: ErrorCodes.MANIFEST_CORRUPT, message: /point 3 of disk d needs point 2, which is missing.*prune deletes nothing/ },
      `prune ${run + 1} refuses`,
    );
  }
  t.same(objects(), before, 'nothing was deleted: no table, no pack, no index');
  fs.renameSync(aside, manifest);
  for (const p of [1, 2, 3]) await expectRestore(t, store, 'd', p, fps[p], dir, `point ${p}`);
});
