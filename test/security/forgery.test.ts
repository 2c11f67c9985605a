// Bug (issue 10, item 1): encrypted stores could be forged without the key. Manifests and chunk tables were only
// checksummed, so re-sealing them with the project's own format code was enough: a manifest re-pointed to an older
// parent, a dropped table record and a record turned into a zero chunk each made `recover` exit 0 with a WRONG image
// (and `verify` exit 0); manifests rewritten as version 1 with no encryption field let a key-less `replicate` write
// an unencrypted point onto the encrypted disk. Each attack below uses only what a writer with bucket access has: the
// store's bytes and rnode's public format code (encodeManifest, encodeSegment), never the key. Every one must now be
// refused with a coded error naming the forged object, before any output exists.
import t from 'tap';
import type { Test } from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { EncryptionKey } from '../../src/crypto/keys.js';
import { ErrorCodes, type RnodeError } from '../../src/errors.js';
import { encodeManifest, type PointManifest } from '../../src/format/manifest.js';
import { encodeSegment, TableFlag, type ChunkEntry } from '../../src/format/table.js';
import { prune } from '../../src/recovery/prune-v2.js';
import { verify } from '../../src/recovery/verify.js';
import type { BlockSource } from '../../src/source/types.js';
import type { ObjectStore } from '../../src/store/index.js';
import {
  KiB, countingSource, expectRestore, fingerprint, fsStore, randomData, restore, snap, stopCodecWorkersAtEnd, tmpDir, writeAt, type Fingerprint,
} from '../helpers/images.js';

stopCodecWorkersAtEnd(t);

const CHUNK = 64 * KiB;
const KEY = EncryptionKey.fromBytes(crypto.createHash('sha256').update('forgery-test-key').digest());

interface Fixture { dir: string; storeDir: string; store: ObjectStore; img: string; fps: Fingerprint[] }

/** An encrypted 1 MiB disk with three points; point 2 changes chunks 6 and 7, point 3 chunks 9 and 10. */
async function threePoints(t: Test, tag: string): Promise<Fixture> {
  const dir = tmpDir(t, tag);
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, randomData(16 * CHUNK, 1));
  const storeDir = path.join(dir, 'store');
  const store = fsStore(storeDir);
  const fps: Fingerprint[] = [];
  for (let p = 1; p <= 3; p++) {
    if (p > 1) for (const i of [3 * p, 3 * p + 1]) writeAt(img, i * CHUNK + 100, randomData(3000, 10 * p + i));
    await snap(store, img, 'd', { chunkSize: CHUNK, encryption: KEY });
    fps.push(fingerprint(img));
  }
  return { dir, storeDir, store, img, fps };
}

const manifestFile = (f: Fixture, p: number) => path.join(f.storeDir, 'disks', 'd', 'points', `${String(p).padStart(10, '0')}.json`);

/** The attacker's view of a manifest: its JSON without the checksum (which encodeManifest recomputes). */
function readManifest(f: Fixture, p: number): PointManifest {
  const { checksum: _c, ...m } = JSON.parse(fs.readFileSync(manifestFile(f, p), 'utf8'));
  return m;
}

function writeManifest(f: Fixture, m: PointManifest): void {
  fs.writeFileSync(manifestFile(f, m.point), encodeManifest(m));
}

/** Table records of a segment file, whatever its trailer (the attacker parses the documented record layout). */
function readRecords(file: string): ChunkEntry[] {
  const b = fs.readFileSync(file);
  const out: ChunkEntry[] = [];
  for (let i = 0, o = 12; i < b.readUInt32LE(8); i++, o += 64) {
    out.push({
      index: Number(b.readBigUInt64LE(o)), xxh64: b.readBigUInt64LE(o + 8), strong: Buffer.from(b.subarray(o + 16, o + 32)),
      writer: b.readUInt32LE(o + 32), plainLength: b.readUInt32LE(o + 36), storedLength: b.readUInt32LE(o + 40),
      flags: b.readUInt8(o + 44), codec: b.readUInt8(o + 45),
    });
  }
  return out;
}

/** Rewrites point p's single segment with edit applied to its records, and its manifest to match (re-sealed). */
function editTable(f: Fixture, p: number, edit: (es: ChunkEntry[]) => ChunkEntry[]): void {
  const m = readManifest(f, p);
  const ref = m.table.segments[0];
  const file = path.join(f.storeDir, ref.key);
  const entries = edit(readRecords(file));
  fs.writeFileSync(file, encodeSegment(entries));
  m.table.records = entries.length;
  m.table.segments[0] = { ...ref, records: entries.length, first: entries[0]?.index ?? -1, last: entries.at(-1)?.index ?? -1 };
  writeManifest(f, m);
}

/** The attack must be refused with METADATA_FORGED naming the object, by recover (no output left) and verify. */
async function expectForged(t: Test, f: Fixture, point: number, objectKey: RegExp): Promise<void> {
  const out = path.join(f.dir, `out-${point}-${Math.random().toString(36).slice(2)}.img`);
  try {
    await restore(f.store, 'd', point, out, { encryption: KEY });
    t.fail(`recover of point ${point} succeeded (wrong image: ${fingerprint(out).sha256 !== f.fps[point - 1].sha256 ? 'differs' : 'same'})`);
  } catch (err) {
    t.equal((err as RnodeError).code, ErrorCodes.METADATA_FORGED, `recover refused: ${(err as Error).message}`);
    t.match((err as Error).message, objectKey, 'the error names the forged object');
  }
  t.notOk(fs.existsSync(out), 'no output');
  t.same(fs.readdirSync(f.dir).filter((n) => n.startsWith(path.basename(out))), [], 'no partial output');
  const v = await verify({ store: f.store, disk: 'd', point: String(point), encryption: KEY });
  t.notOk(v.ok, 'verify fails');
  t.ok(v.problems.some((p) => p.code === ErrorCodes.METADATA_FORGED), `verify reports METADATA_FORGED (${v.problems[0]?.code})`);
}

t.test('a manifest re-pointed to an older parent is refused', async (t) => {
  const f = await threePoints(t, 'forge-parent');
  await expectRestore(t, f.store, 'd', 3, f.fps[2], f.dir, 'untouched point 3', { encryption: KEY });
  writeManifest(f, { ...readManifest(f, 3), parent: 1 });
  await expectForged(t, f, 3, /points\/0000000003\.json/);
});

t.test('a dropped table record is refused', async (t) => {
  const f = await threePoints(t, 'forge-drop');
  editTable(f, 3, (es) => es.filter((e) => e.index !== 9));
  // The record count is in the manifest too, so the manifest's MAC is what fails first.
  await expectForged(t, f, 3, /points\/0000000003\.json|tables\/0000000003\//);
});

t.test('a table record turned into a zero chunk is refused', async (t) => {
  const f = await threePoints(t, 'forge-zero');
  editTable(f, 3, (es) => es.map((e) => e.index !== 10 ? e
    : { ...e, xxh64: 0n, strong: Buffer.alloc(16), writer: 0, storedLength: 0, flags: TableFlag.ZERO, codec: 0 }));
  await expectForged(t, f, 3, /tables\/0000000003\//);
});

t.test('a segment replayed from another point is refused', async (t) => {
  const f = await threePoints(t, 'forge-replay');
  const m2 = readManifest(f, 2);
  const m3 = readManifest(f, 3);
  fs.copyFileSync(path.join(f.storeDir, m2.table.segments[0].key), path.join(f.storeDir, m3.table.segments[0].key));
  writeManifest(f, { ...m3, table: { ...m3.table, segments: [{ ...m2.table.segments[0], key: m3.table.segments[0].key }], records: m2.table.records } });
  await expectForged(t, f, 3, /points\/0000000003\.json/);
});

t.test('manifests downgraded to unencrypted version 1: key-less replicate, prune and recover are refused', async (t) => {
  const f = await threePoints(t, 'forge-downgrade');
  for (let p = 1; p <= 3; p++) {
    const { encryption: _e, mac: _m, ...m } = readManifest(f, p) as PointManifest & { mac?: string };
    // Tables too, as version 1 segments, so nothing in a manifest or table says "encrypted" any more.
    m.table.segments = m.table.segments.map(({ mac: _x, ...ref }) => {
      fs.writeFileSync(path.join(f.storeDir, ref.key), encodeSegment(readRecords(path.join(f.storeDir, ref.key))));
      return ref;
    });
    writeManifest(f, { ...m, version: 1 });
  }
  writeAt(f.img, 0, randomData(1000, 99));
  try {
    const r = await snap(f.store, f.img, 'd');
    t.fail(`key-less replicate into the encrypted disk succeeded (point ${r.point}, encrypted: ${r.encryption !== undefined})`);
  } catch (err) {
    t.equal((err as RnodeError).code, ErrorCodes.KEY_REQUIRED, `key-less replicate refused: ${(err as Error).message}`);
  }
  await t.rejects(prune({ store: f.store, disk: 'd', keep: 1 }), { code: ErrorCodes.KEY_REQUIRED }, 'key-less prune refused');
  await t.rejects(restore(f.store, 'd', 3, path.join(f.dir, 'keyless.img')), { code: ErrorCodes.METADATA_FORGED }, 'key-less recover of the downgraded point refused');
  await t.rejects(restore(f.store, 'd', 3, path.join(f.dir, 'keyed.img'), { encryption: KEY }), { code: ErrorCodes.METADATA_FORGED },
    'recover with the key of an unencrypted-looking point refused');
  // With the key, replicate refuses to build on the downgraded chain too.
  await t.rejects(snap(f.store, f.img, 'd', { encryption: KEY }), { code: ErrorCodes.METADATA_FORGED }, 'keyed replicate onto the downgraded chain refused');
});

t.test('an authenticated disk keeps working: incremental, prune (with the key) and recover', async (t) => {
  const f = await threePoints(t, 'forge-ok');
  await t.rejects(prune({ store: f.store, disk: 'd', keep: 2 }), { code: ErrorCodes.KEY_REQUIRED }, 'prune without the key refused');
  const pr = await prune({ store: f.store, disk: 'd', keep: 2, encryption: KEY });
  t.same(pr.deleted, [1], 'prune with the key');
  await expectRestore(t, f.store, 'd', 2, f.fps[1], f.dir, 'rebased point 2', { encryption: KEY });
  await expectRestore(t, f.store, 'd', 3, f.fps[2], f.dir, 'point 3 after prune', { encryption: KEY });
  const v = await verify({ store: f.store, disk: 'd', point: 'all', encryption: KEY });
  t.ok(v.ok, `verify all after prune: ${JSON.stringify(v.problems.slice(0, 2))}`);
  const m2 = readManifest(f, 2);
  t.equal(m2.version, 3, 'manifests are version 3');
  t.equal(m2.parent, null, 'rebased');
});

t.test('a forged checkpoint (nextIndex moved to the end) is not resumed: the point is written in full and restores byte-exact', async (t) => {
  const f = await threePoints(t, 'forge-pending');
  fs.writeFileSync(f.img, randomData(16 * CHUNK, 77)); // every chunk changes
  const ac = new AbortController();
  // Two chunks in flight, cancelled after the 8th read: a checkpoint every 2 records covers about half the disk.
  const cutAfter8 = (s: BlockSource) => {
    const c = countingSource(s);
    const read = c.read.bind(c);
    c.read = async (o: number, b: Buffer, l: number) => { const n = await read(o, b, l); if (c.reads >= 8) ac.abort(); return n; };
    return c;
  };
  await t.rejects(snap(f.store, f.img, 'd', { encryption: KEY, checkpointRecords: 2, concurrency: 2, signal: ac.signal, wrapSource: cutAfter8 }),
    { code: ErrorCodes.CANCELLED }, 'interrupted mid-point');
  const pendingFile = path.join(f.storeDir, 'disks', 'd', 'pending', '0000000004.json');
  const ck = JSON.parse(fs.readFileSync(pendingFile, 'utf8'));
  t.ok(ck.nextIndex > 0 && ck.nextIndex < 16, `a checkpoint up to chunk ${ck.nextIndex}`);
  // The attacker claims the whole disk is done: a resumed run would commit a point missing the later chunks.
  fs.writeFileSync(pendingFile, JSON.stringify({ ...ck, nextIndex: 16 }));
  const r = await snap(f.store, f.img, 'd', { encryption: KEY });
  t.equal(r.resumed, false, 'the forged checkpoint was not resumed');
  await expectRestore(t, f.store, 'd', 4, fingerprint(f.img), f.dir, 'point 4', { encryption: KEY });
});

t.test('a deleted encryption marker is detected, not silently re-created', async (t) => {
  const f = await threePoints(t, 'forge-marker');
  fs.rmSync(path.join(f.storeDir, 'disks', 'd', 'encryption.json'));
  await t.rejects(restore(f.store, 'd', 3, path.join(f.dir, 'm.img'), { encryption: KEY }), { code: ErrorCodes.METADATA_FORGED, message: /encryption\.json/ },
    'recover refused');
  await t.rejects(snap(f.store, f.img, 'd', { encryption: KEY }), { code: ErrorCodes.METADATA_FORGED }, 'replicate with the key refused');
  await t.rejects(snap(f.store, f.img, 'd'), { code: ErrorCodes.KEY_REQUIRED }, 'replicate without the key refused');
  t.notOk(fs.existsSync(path.join(f.storeDir, 'disks', 'd', 'encryption.json')), 'no marker was written back');
});
