// Encrypted points end to end: full and incremental points restore byte-exact with the key; the store holds no
// plaintext (a recognisable text pattern, random and text samples grepped in every object) and no unkeyed digest of
// any chunk (xxh64 and BLAKE3 of every plaintext chunk, in binary and hex, found nowhere), while an unencrypted
// store of the same disk holds all of them (so the search would find them); a missing or wrong key is refused before
// any chunk is read or any output exists; tampered and swapped blobs are CHUNK_CORRUPT naming the chunk, with no
// output left; keys never mix on a disk; verify without the key asks for it (v2 metadata is sealed); prune needs the key;
// a cut encrypted point resumes with its key and starts afresh with another; and the CLI does all of it with
// --encryption-key-file, the key never printed.
import t from 'tap';
import type { Test } from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { EncryptionKey } from '../../src/crypto/keys.js';
import { ErrorCodes, RnodeError } from '../../src/errors.js';
import { strongDigest, xxh64 } from '../../src/format/checksum.js';
import { decodeChunkHeader } from '../../src/format/chunk.js';
import { listPoints, listPointSeqs, listV2PointSeqs } from '../../src/repository/points.js';
import { Domain } from '../../src/repository/domain.js';
import { MIN_PACK_SIZE } from '../../src/repository/domain.js';
import { MANIFEST_VERSION_V2 } from '../../src/repository/point-format.js';
import { prune } from '../../src/jobs/prune-v2.js';
import { verify } from '../../src/jobs/verify.js';
import { type ObjectStore } from '../../src/store/index.js';
import { FaultyStore } from '../../src/testing.js';
import { json, lines, runCli } from '../helpers/cli.js';
import {
  KiB,
  MiB,
  blobPlace,
  expectRestore,
  fingerprint,
  fsStore,
  listFiles,
  randomData,
  restore,
  snap,
  stopCodecWorkersAtEnd,
  textData,
  tmpDir,
  writeAt,
  type Fingerprint,
} from '../helpers/images.js';

stopCodecWorkersAtEnd(t);

const CHUNK = 128 * KiB;
const CANARY = 'RNODE-PLAINTEXT-CANARY: the quick brown fox jumps over the lazy dog. ';
const MASTER = crypto.createHash('sha256').update('points-test-key').digest();
const KEY = EncryptionKey.fromBytes(MASTER);
const OTHER = EncryptionKey.fromBytes(crypto.createHash('sha256').update('points-test-other-key').digest());

/** A 2 MiB disk: a canary text pattern, random data, zeros, and compressible text. */
function writeDisk(file: string): void {
  const canary = Buffer.from(CANARY.repeat(Math.ceil((512 * KiB) / CANARY.length))).subarray(0, 512 * KiB);
  fs.writeFileSync(file, Buffer.concat([canary, randomData(512 * KiB, 7), Buffer.alloc(512 * KiB), textData(512 * KiB, 7)]));
}

/** Every object of an fs store, by path. */
function storeObjects(storeDir: string): Map<string, Buffer> {
  return new Map(listFiles(storeDir).map((f) => [f, fs.readFileSync(path.join(storeDir, f))]));
}

/** The unkeyed digests of every non-zero plaintext chunk of a disk image, in the forms a store could hold them. */
function plainDigests(file: string): Array<{ what: string; bytes: Buffer }> {
  const disk = fs.readFileSync(file);
  const out: Array<{ what: string; bytes: Buffer }> = [];
  for (let off = 0; off < disk.length; off += CHUNK) {
    const c = disk.subarray(off, Math.min(off + CHUNK, disk.length));
    if (c.every((b) => b === 0)) continue;
    const x = xxh64(c);
    const le = Buffer.alloc(8);
    le.writeBigUInt64LE(x);
    const be = Buffer.alloc(8);
    be.writeBigUInt64BE(x);
    const strong = strongDigest(c);
    const full = crypto.createHash('sha256').update(c).digest();
    const plainId = Domain.of(undefined).chunkId(c); // v2's public (fixed-key) chunk id
    for (const [what, bytes] of [
      ['xxh64 LE', le],
      ['xxh64 BE', be],
      ['BLAKE3-128', strong],
      ['SHA-256', full],
      ['plain v2 chunk id', plainId],
    ] as const) {
      out.push(
        { what: `${what} of chunk ${off / CHUNK}`, bytes },
        { what: `${what} (hex) of chunk ${off / CHUNK}`, bytes: Buffer.from(bytes.toString('hex')) },
      );
    }
  }
  return out;
}

/** Samples of the plaintext a store must not hold: the canary, and 32-byte windows of the random and text parts. */
function plaintextSamples(file: string): Array<{ what: string; bytes: Buffer }> {
  const disk = fs.readFileSync(file);
  return [
    { what: 'canary text', bytes: Buffer.from('PLAINTEXT-CANARY') },
    { what: 'random data', bytes: disk.subarray(512 * KiB + 1000, 512 * KiB + 1032) },
    { what: 'text data', bytes: disk.subarray(1536 * KiB + 5000, 1536 * KiB + 5032) },
  ];
}

function findIn(objects: Map<string, Buffer>, needles: Array<{ what: string; bytes: Buffer }>): string[] {
  const found: string[] = [];
  for (const n of needles) for (const [f, b] of objects) if (b.includes(n.bytes)) found.push(`${n.what} in ${f}`);
  return found;
}

/** Only the output's own name and its partial file may appear: neither must remain after a failed restore. */
function assertNoOutput(t: Test, out: string): void {
  t.notOk(fs.existsSync(out), `no ${path.basename(out)} left`);
  t.same(
    fs.readdirSync(path.dirname(out)).filter((f) => f.includes(path.basename(out))),
    [],
    'no partial output left',
  );
}

async function rejectsWith(t: Test, p: Promise<unknown>, code: string, what: string): Promise<RnodeError | undefined> {
  try {
    await p;
    t.fail(`${what}: succeeded`);
  } catch (err) {
    t.equal((err as RnodeError).code, code, `${what}: ${code} (${(err as Error).message})`);
    return err as RnodeError;
  }
  return undefined;
}

/** Counts reads of chunk objects through a store. */
function countingChunkReads(store: ObjectStore): { store: ObjectStore; reads: () => number } {
  let n = 0;
  const get = store.get.bind(store);
  store.get = (key, range) => {
    if (key.includes('/chunks/')) n++;
    return get(key, range);
  };
  return { store, reads: () => n };
}

interface Fixture {
  dir: string;
  storeDir: string;
  store: ObjectStore;
  img: string;
  fps: Fingerprint[];
}

/** An encrypted disk with two points: full, then an incremental after chunks 1 and 9 changed. */
async function encryptedDisk(t: Test, tag: string): Promise<Fixture> {
  const dir = tmpDir(t, tag);
  const img = path.join(dir, 'disk.img');
  writeDisk(img);
  const storeDir = path.join(dir, 'store');
  const store = fsStore(storeDir);
  const fps = [fingerprint(img)];
  const p1 = await snap(store, img, 'd', { chunkSize: CHUNK, encryption: KEY });
  t.match(p1, { point: 1, full: true, encryption: { alg: 'aes-256-gcm', keyId: KEY.keyId } });
  writeAt(img, CHUNK + 77, Buffer.from('changed canary: RNODE-PLAINTEXT-CANARY'));
  writeAt(img, 9 * CHUNK + 5, randomData(4000, 8));
  fps.push(fingerprint(img));
  const p2 = await snap(store, img, 'd', { encryption: KEY });
  t.match(p2, { point: 2, parent: 1, full: false, chunksChanged: 2 }, 'the incremental finds exactly the changed chunks by keyed digest');
  return { dir, storeDir, store, img, fps };
}

t.test('full and incremental encrypted points restore byte-exact; the store holds no plaintext and no unkeyed digest', async (t) => {
  const f = await encryptedDisk(t, 'enc-points');
  await expectRestore(t, f.store, 'd', 1, f.fps[0], f.dir, 'encrypted full point', { encryption: KEY });
  await expectRestore(t, f.store, 'd', 2, f.fps[1], f.dir, 'encrypted incremental point', { encryption: KEY });
  const points = await listPoints(f.store, 'd', KEY);
  const sealed = [MANIFEST_VERSION_V2, { alg: 'aes-256-gcm', keyId: KEY.keyId }];
  t.same(
    points.map((m) => [m.version, m.encryption]),
    [sealed, sealed],
    'manifests are v2 (sealed, authenticated) and record the key id',
  );

  // Both points' plaintext (the first image is gone: rebuild it) must be absent; so must every unkeyed digest.
  const first = path.join(f.dir, 'first.img');
  writeDisk(first);
  const objects = storeObjects(f.storeDir);
  t.ok(objects.size > 10, `${objects.size} store objects searched`);
  const chunks = [...objects.keys()].filter((k) => k.includes('/chunks/'));
  t.ok(
    chunks.every((k) => decodeChunkHeader(objects.get(k)!).version === 2),
    'every chunk object is format version 2',
  );
  const needles = [...plaintextSamples(first), ...plaintextSamples(f.img), ...plainDigests(first), ...plainDigests(f.img)];
  t.same(findIn(objects, needles), [], `none of ${needles.length} plaintext samples and unkeyed digests is in the store`);
  t.notOk(
    [...objects.values()].some((b) => b.includes(MASTER) || b.includes(Buffer.from(MASTER.toString('hex')))),
    'nor the key',
  );

  // The same search finds all of it in an unencrypted store of the same disk: it is a real search.
  const plainDir = path.join(f.dir, 'plain-store');
  await snap(fsStore(plainDir), first, 'd', { chunkSize: CHUNK });
  const plainFound = findIn(storeObjects(plainDir), [...plaintextSamples(first), ...plainDigests(first).filter((n) => !n.what.startsWith('SHA'))]);
  t.ok(plainFound.some((s) => s.startsWith('canary')) && plainFound.some((s) => s.startsWith('random')), 'control: plaintext is visible unencrypted');
  t.ok(
    plainFound.some((s) => s.startsWith('xxh64 LE')) && plainFound.some((s) => s.startsWith('plain v2 chunk id of')),
    'control: unkeyed digests are visible unencrypted',
  );

  const v = await verify({ store: f.store, disk: 'd', point: 'all', encryption: KEY });
  t.match(v, { ok: true, encrypted: true, checked: 'contents', chunksChecked: 14 }, 'verify with the key decrypts every chunk');
  // v2: an encrypted disk's points are found with its key only; without it verify is refused and says why.
  await rejectsWith(t, verify({ store: f.store, disk: 'd', point: 'all' }), ErrorCodes.KEY_REQUIRED, 'verify without the key');
});

t.test('a missing or wrong key is refused before any chunk is read and before the output exists', async (t) => {
  const f = await encryptedDisk(t, 'enc-keys');
  const out = path.join(f.dir, 'out', 'restored.img');
  fs.mkdirSync(path.dirname(out));
  const c = countingChunkReads(f.store);
  const e1 = await rejectsWith(t, restore(c.store, 'd', 2, out), ErrorCodes.KEY_REQUIRED, 'recover without a key');
  t.match(e1?.message, /encrypted \(key id [0-9a-f]{32}\); pass its key with --encryption-key-file/);
  t.ok(e1?.isUsage, 'exit 2 on the CLI');
  assertNoOutput(t, out);
  const e2 = await rejectsWith(t, restore(c.store, 'd', 1, out, { encryption: OTHER }), ErrorCodes.KEY_MISMATCH, 'recover with another key');
  t.match(e2?.message, new RegExp(`key id ${OTHER.keyId}\\) is not the key .* \\(key id ${KEY.keyId}\\)`));
  assertNoOutput(t, out);
  await rejectsWith(t, verify({ store: c.store, disk: 'd', point: 'all', encryption: OTHER }), ErrorCodes.KEY_MISMATCH, 'verify with another key');
  t.equal(c.reads(), 0, 'no chunk object was read');
});

t.test('tampered and swapped chunk blobs: CHUNK_CORRUPT naming the chunk and offset, no output left', async (t) => {
  const f = await encryptedDisk(t, 'enc-tamper');
  const out = path.join(f.dir, 'out', 'restored.img');
  fs.mkdirSync(path.dirname(out));
  // Chunks 4 and 5 are random data (stored as they are, so their sealed blobs have one length), unchanged in point 2.
  const victim = await blobPlace(f.storeDir, 'd', 1, 4, KEY);
  const donor = await blobPlace(f.storeDir, 'd', 1, 5, KEY);
  t.equal(victim.length, donor.length, 'the two blobs are the same size');
  const originalPack = fs.readFileSync(victim.file);
  const patch = (bytes: Buffer) => {
    const b = Buffer.from(fs.readFileSync(victim.file));
    bytes.copy(b, victim.offset);
    fs.writeFileSync(victim.file, b);
  };
  const blob = originalPack.subarray(victim.offset, victim.offset + victim.length);

  // A byte of ciphertext changed: only the GCM tag can tell (the pack trailer is sealed, the blob has no checksum).
  const tampered = Buffer.from(blob);
  tampered[500] ^= 0x20;
  patch(tampered);
  const e = await rejectsWith(t, restore(f.store, 'd', 2, out, { encryption: KEY }), ErrorCodes.CHUNK_CORRUPT, 'recover of a tampered blob');
  t.match(e?.message, /chunk 4 \(disk offset 524288.*\) of point 2 is corrupt/);
  t.match(e?.details, { index: 4, offset: 4 * CHUNK });
  assertNoOutput(t, out);
  const withKey = await verify({ store: f.store, disk: 'd', point: 'all', encryption: KEY });
  t.match(withKey, { ok: false, problems: [{ code: ErrorCodes.CHUNK_CORRUPT, index: 4, offset: 4 * CHUNK }] }, 'verify with the key finds it');
  await rejectsWith(
    t,
    verify({ store: f.store, disk: 'd', point: 'all' }),
    ErrorCodes.KEY_REQUIRED,
    'verify without the key asks for it (v2 metadata is sealed)',
  );

  // Another chunk's valid sealed blob in this chunk's place: its AAD binds it to its own chunk id.
  patch(Buffer.from(fs.readFileSync(donor.file).subarray(donor.offset, donor.offset + donor.length)));
  const s = await rejectsWith(t, restore(f.store, 'd', 2, out, { encryption: KEY }), ErrorCodes.CHUNK_CORRUPT, 'recover of a swapped blob');
  t.match(s?.message, /chunk 4 .* is corrupt/);
  assertNoOutput(t, out);

  // The same chunk index of another disk under the same key: bound to its content's id, not to a place.
  fs.writeFileSync(victim.file, originalPack);
  const other = path.join(f.dir, 'other.img');
  fs.writeFileSync(other, randomData(2 * MiB, 99));
  await snap(f.store, other, 'e', { chunkSize: CHUNK, encryption: KEY });
  const foreign = await blobPlace(f.storeDir, 'e', 1, 4, KEY);
  t.equal(foreign.length, victim.length, "disk e's chunk 4 blob is the same size");
  patch(Buffer.from(fs.readFileSync(foreign.file).subarray(foreign.offset, foreign.offset + foreign.length)));
  const x = await rejectsWith(t, restore(f.store, 'd', 2, out, { encryption: KEY }), ErrorCodes.CHUNK_CORRUPT, "recover of another disk's blob");
  t.match(x?.message, /chunk 4 .* is corrupt/);
  assertNoOutput(t, out);
  fs.writeFileSync(victim.file, originalPack);
  await expectRestore(t, f.store, 'd', 2, f.fps[1], f.dir, 'after the original pack is put back', { encryption: KEY });
});

t.test('keys never mix on a disk; prune needs the key', async (t) => {
  const f = await encryptedDisk(t, 'enc-mix');
  const packsBefore = listFiles(path.join(f.storeDir, 'r2')).filter((x) => x.includes('/packs/'));
  const nothingNew = async (what: string) => {
    t.same(await listPointSeqs(f.store, 'd', KEY), [1, 2], `${what}: no point written`);
    t.same(
      listFiles(path.join(f.storeDir, 'r2')).filter((x) => x.includes('/packs/')),
      packsBefore,
      `${what}: no chunk written`,
    );
    t.notOk(fs.existsSync(path.join(f.storeDir, 'disks', 'd', 'chunks')), `${what}: no legacy chunk written`);
  };
  const e1 = await rejectsWith(t, snap(f.store, f.img, 'd', { encryption: OTHER }), ErrorCodes.KEY_MISMATCH, 'another key on an encrypted disk');
  t.match(e1?.message, /is not the key disk d is encrypted with/);
  await nothingNew('another key');
  const e2 = await rejectsWith(t, snap(f.store, f.img, 'd'), ErrorCodes.KEY_REQUIRED, 'no key on an encrypted disk');
  t.match(e2?.message, /disk d is encrypted .*--encryption-key-file/);
  await nothingNew('no key');

  const plainStore = fsStore(path.join(f.dir, 'plain'));
  await snap(plainStore, f.img, 'p', { chunkSize: CHUNK });
  const e3 = await rejectsWith(t, snap(plainStore, f.img, 'p', { encryption: KEY }), ErrorCodes.KEY_MISMATCH, 'a key on an unencrypted disk');
  t.match(e3?.message, /disk p is not encrypted .* new --disk id/);
  t.same(await listPointSeqs(plainStore, 'p'), [1]);
  await rejectsWith(
    t,
    restore(plainStore, 'p', 1, path.join(f.dir, 'x.img'), { encryption: KEY }),
    ErrorCodes.KEY_MISMATCH,
    'recover of an unencrypted point with a key',
  );

  // A new disk id takes the other key.
  await snap(f.store, f.img, 'd-rekeyed', { chunkSize: CHUNK, encryption: OTHER });
  await expectRestore(t, f.store, 'd-rekeyed', 1, f.fps[1], f.dir, 'the same data under another key and disk id', { encryption: OTHER });

  await rejectsWith(
    t,
    prune({ store: f.store, disk: 'd', keep: 1 }),
    ErrorCodes.KEY_REQUIRED,
    'prune without the key (it rewrites authenticated tables)',
  );
  const pr = await prune({ store: f.store, disk: 'd', keep: 1, encryption: KEY });
  t.same(pr.deleted, [1], 'prune with the key');
  const [kept] = await listPoints(f.store, 'd', KEY);
  t.match(
    kept,
    { point: 2, parent: null, version: MANIFEST_VERSION_V2, encryption: { keyId: KEY.keyId } },
    'the rebased point stays encrypted (a sealed v2 manifest)',
  );
  await expectRestore(t, f.store, 'd', 2, f.fps[1], f.dir, 'after prune', { encryption: KEY });
  t.match(await snap(f.store, f.img, 'd', { encryption: KEY }), { point: 3, parent: 2, chunksChanged: 0 }, 'and incrementals continue');
});

t.test('a cut encrypted point resumes from its checkpoint with its key, and starts afresh with another', async (t) => {
  const dir = tmpDir(t, 'enc-resume');
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, randomData(2 * MiB, 11));
  const store = fsStore(path.join(dir, 'store'));
  const cut = () =>
    new FaultyStore(store)
      .addFault('put', {
        match: (k) => k.includes('/packs/'),
        nth: 10,
        times: Infinity,
        error: { code: ErrorCodes.STORE_IO, retryable: false, message: 'injected: disk full' },
      })
      .addFault('put', { match: (k) => k.includes('/packs/'), delayMs: 20, times: Infinity });
  // v2: chunks reach the store in packs; the smallest packs put each chunk in its own, so the cut lands mid-point.
  const opts = { chunkSize: 64 * KiB, checkpointRecords: 2, concurrency: 2, packSize: 2 * MIN_PACK_SIZE };
  await rejectsWith(t, snap(cut(), img, 'd', { ...opts, encryption: KEY }), ErrorCodes.STORE_IO, 'the first run is cut');
  const again = await snap(store, img, 'd', { ...opts, encryption: KEY });
  t.match(again, { point: 1, resumed: true, encryption: { keyId: KEY.keyId } }, 'the same key continues the checkpoint');
  await expectRestore(t, store, 'd', 1, fingerprint(img), dir, 'the resumed encrypted point', { encryption: KEY });

  fs.writeFileSync(img, randomData(2 * MiB, 12)); // new chunks: the same ones would all be deduplicated, no pack put
  await rejectsWith(t, snap(cut(), img, 'e', { ...opts, encryption: KEY }), ErrorCodes.STORE_IO, 'another disk, cut');
  // v2: the cut run claimed disk e for its key (src/repository/claims.ts): another key is refused, never mixed in.
  const other = await rejectsWith(t, snap(store, img, 'e', { ...opts, encryption: OTHER }), ErrorCodes.KEY_MISMATCH, 'another key on the cut disk');
  t.match(other?.message, /is not the key disk e is encrypted with .*new --disk id/);
  // Its repository holds nothing of disk e (listing the disk with that key is KEY_MISMATCH: the claim names another).
  t.same(await listV2PointSeqs(store, 'e', OTHER), [], 'nothing written with the other key');
  const same = await snap(store, img, 'e', { ...opts, encryption: KEY });
  t.match(same, { point: 1, resumed: true }, 'its own key continues the checkpoint');
  await expectRestore(t, store, 'e', 1, fingerprint(img), dir, 'the resumed point', { encryption: KEY });
});

t.test('the CLI: --encryption-key-file on replicate, points, recover, verify; the key is never printed', async (t) => {
  const dir = tmpDir(t, 'enc-cli');
  const img = path.join(dir, 'disk.img');
  writeDisk(img);
  const store = path.join(dir, 'store');
  const keyFile = path.join(dir, 'disk.key');
  fs.writeFileSync(keyFile, `${MASTER.toString('base64')}\n`, { mode: 0o600 });
  const all: string[] = [];
  const cli = async (args: string[]) => {
    const r = await runCli(args);
    all.push(r.stdout, r.stderr);
    return r;
  };

  const r1 = await cli([
    'replicate',
    '--source',
    img,
    '--target',
    store,
    '--disk',
    'd',
    '--chunk-size',
    '128KiB',
    '--encryption-key-file',
    keyFile,
    '--json',
  ]);
  t.equal(r1.code, 0, r1.stderr);
  t.match(json(r1), { point: 1, encryption: { alg: 'aes-256-gcm', keyId: KEY.keyId } });
  const human = await cli(['replicate', '--source', img, '--target', store, '--disk', 'd', '--encryption-key-file', keyFile]);
  t.match(human.stdout, new RegExp(`encrypted, aes-256-gcm, key id ${KEY.keyId}`));
  // v2: an encrypted disk's points are found with its key only.
  const pts = await cli(['points', '--store', store, '--disk', 'd', '--json', '--encryption-key-file', keyFile]);
  t.match(json(pts).points, [
    { point: 1, encryption: { keyId: KEY.keyId } },
    { point: 2, encryption: { keyId: KEY.keyId } },
  ]);
  // Without the key, or with another one, "no points" would be false: the listing says which key it needs.
  const ptsNoKey = await cli(['points', '--store', store, '--disk', 'd']);
  t.equal(ptsNoKey.code, 2, 'points without the key: exit 2');
  t.match(ptsNoKey.stderr, new RegExp(`RNODE_KEY_REQUIRED: disk d is encrypted \\(key id ${KEY.keyId}\\)`));
  t.notMatch(ptsNoKey.stdout, /no points/);
  const otherKeyFile = path.join(dir, 'other.key');
  fs.writeFileSync(otherKeyFile, `${crypto.randomBytes(32).toString('base64')}\n`, { mode: 0o600 });
  const ptsOtherKey = await cli(['points', '--store', store, '--disk', 'd', '--encryption-key-file', otherKeyFile, '--json']);
  t.equal(ptsOtherKey.code, 2, 'points with another key: exit 2');
  t.match(json(ptsOtherKey), { error: { code: ErrorCodes.KEY_MISMATCH, keyId: KEY.keyId } });

  const out = path.join(dir, 'restored.img');
  const noKey = await cli(['recover', '--store', store, '--disk', 'd', '--out', out]);
  t.equal(noKey.code, 2, 'recover without the key: exit 2');
  t.equal(lines(noKey.stderr).length, 1);
  t.match(noKey.stderr, /RNODE_KEY_REQUIRED: disk d is encrypted .*pass its key with --encryption-key-file/);
  t.notOk(fs.existsSync(out));
  const rec = await cli(['recover', '--store', store, '--disk', 'd', '--out', out, '--encryption-key-file', keyFile, '--json']);
  t.equal(rec.code, 0, rec.stderr);
  t.equal(fingerprint(out).sha256, fingerprint(img).sha256, 'recover with the key is byte-exact');

  // v2: without the key the points are not found (their names are keyed): verify says which flag is missing.
  const v1 = await cli(['verify', '--store', store, '--disk', 'd', '--point', 'all']);
  t.equal(v1.code, 2, 'verify without the key: exit 2');
  t.match(v1.stderr, /RNODE_KEY_REQUIRED: disk d is encrypted .*pass its key with --encryption-key-file/);
  const v2 = await cli(['verify', '--store', store, '--disk', 'd', '--point', 'all', '--encryption-key-file', keyFile, '--json']);
  t.match(json(v2), { ok: true, encrypted: true, checked: 'contents' });
  const wrong = path.join(dir, 'wrong.key');
  fs.writeFileSync(wrong, OTHER.keyId + OTHER.keyId, { mode: 0o600 }); // 64 hex characters: a valid, different key
  const v3 = await cli(['verify', '--store', store, '--disk', 'd', '--encryption-key-file', wrong]);
  t.equal(v3.code, 2, 'verify with another key: exit 2');
  t.match(v3.stderr, /RNODE_KEY_MISMATCH/);
  const mixed = await cli(['replicate', '--source', img, '--target', store, '--disk', 'd', '--encryption-key-file', wrong]);
  t.equal(mixed.code, 2);
  t.match(mixed.stderr, /RNODE_KEY_MISMATCH: the key given/);

  const text = all.join('\n');
  for (const form of [MASTER.toString('hex'), MASTER.toString('base64'), ...Object.values(KEY.subkeys()).map((k) => k.toString('hex'))]) {
    t.notOk(text.includes(form), 'no form of the key or its subkeys in any output');
  }
});
