// A chunk corrupted (a byte flipped in its payload or header, the object truncated) or deleted in the store:
// `verify` and `recover` (the CLI) exit 1 naming the chunk (index, disk offset, RNODE_CHUNK_CORRUPT or
// RNODE_CHUNK_MISSING) and no output file is left behind. Restores do not trust keys or the 64-bit hash: a
// valid chunk object under another chunk's key, an object of the same point and index from another store,
// and a table entry whose BLAKE3 disagrees are all caught; a table entry with a colliding xxh64 does not make
// replicate skip a changed chunk. Damaged manifests and tables are reported too.
import t from 'tap';
import type { Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { ErrorCodes } from '../../src/errors.js';
import { xxh64 } from '../../src/format/checksum.js';
import { decodeSegment, encodeSegment } from '../../src/format/table.js';
import { verify } from '../../src/recovery/verify.js';
import {
  KiB, MiB, chunkFile, chunkObjects, expectRestore, fingerprint, flipByte, fsStore, listFiles, randomData, restore, snap,
  textData, tmpDir, writeAt, type Fingerprint, stopCodecWorkersAtEnd,
} from '../helpers/images.js';
import { json, lines, runCli } from '../helpers/cli.js';

stopCodecWorkersAtEnd(t);

const CHUNK = 64 * KiB;
const SIZE = MiB + 1000; // 17 chunks

interface Fixture { dir: string; storeDir: string; img: string; fps: Fingerprint[] }

/** Two points: a full one of mixed data, and one where chunk 7 changed. */
async function twoPoints(t: Test): Promise<Fixture> {
  const dir = tmpDir(t, 'corrupt');
  const storeDir = path.join(dir, 'store');
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, Buffer.concat([randomData(SIZE / 2 | 0, 1), textData(SIZE - (SIZE / 2 | 0), 1)]));
  const store = fsStore(storeDir);
  const fps = [fingerprint(img)];
  await snap(store, img, 'd', { chunkSize: CHUNK });
  writeAt(img, 7 * CHUNK + 10, randomData(100, 2));
  fps.push(fingerprint(img));
  const p2 = await snap(store, img, 'd');
  t.equal(p2.chunksChanged, 1);
  return { dir, storeDir, img, fps };
}

const noStack = (s: string) => !/^\s+at /m.test(s);

/** `rnode verify` fails naming the chunk (with --json: the problem carries code, index and offset). */
async function expectVerifyFails(t: Test, f: Fixture, point: string, code: string, index: number,
    asJson = false) {
  const offset = index * CHUNK;
  const r = await runCli(['verify', '--store', f.storeDir, '--disk', 'd', '--point', point, ...(asJson ? ['--json'] : [])]);
  t.equal(r.code, 1, `verify --point ${point}${asJson ? ' --json' : ''} exits 1`);
  if (asJson) {
    const v = json(r);
    t.equal(v.ok, false);
    t.ok(v.problems.some((p: any) => p.code === code && p.index === index && p.offset === offset),
      `--json problems hold {code: ${code}, index: ${index}, offset: ${offset}}: ${JSON.stringify(v.problems)}`);
    return;
  }
  t.equal(lines(r.stderr).length, 1, 'one line on stderr');
  t.match(r.stderr, code, `stderr names the code ${code}`);
  t.match(r.stderr, new RegExp(`chunk ${index}\\b`), `stderr names chunk ${index}`);
  t.match(r.stderr, String(offset), `stderr names the disk offset ${offset}`);
  t.ok(noStack(r.stderr), 'no stack trace');
  t.match(r.stdout, /FAILED/, 'stdout says FAILED');
}

/** The library's verify finds the same problem for a point. */
async function expectLibVerifyFails(t: Test, f: Fixture, point: string, code: string, index: number) {
  const v = await verify({ store: fsStore(f.storeDir), disk: 'd', point });
  t.equal(v.ok, false, `verify(point ${point}) is not ok`);
  t.ok(v.problems.some((p) => p.code === code && p.index === index && p.offset === index * CHUNK),
    `verify(point ${point}) names chunk ${index}: ${JSON.stringify(v.problems)}`);
}

/** recover fails naming the chunk and leaves no output (nor a partial file) behind. */
async function expectRecoverFails(t: Test, f: Fixture, point: string, code: string, index: number) {
  const outDir = fs.mkdtempSync(path.join(f.dir, 'out-'));
  const out = path.join(outDir, 'restored.img');
  const r = await runCli(['recover', '--store', f.storeDir, '--disk', 'd', '--point', point, '--out', out]);
  t.equal(r.code, 1, `recover --point ${point} exits 1`);
  t.equal(lines(r.stderr).length, 1, 'one line on stderr');
  t.match(r.stderr, code, `stderr names the code ${code}`);
  t.match(r.stderr, new RegExp(`chunk ${index}\\b`), `stderr names chunk ${index}`);
  t.match(r.stderr, String(index * CHUNK), 'stderr names the disk offset');
  t.ok(noStack(r.stderr), 'no stack trace');
  t.notOk(fs.existsSync(out), 'the output path does not exist');
  t.same(fs.readdirSync(outDir), [], 'no partial file is left in the output directory');
  return r;
}

t.test('verify --json names a corrupt chunk', async (t) => {
  const f = await twoPoints(t);
  flipByte(chunkFile(f.storeDir, 'd', 1, 5), 48 + 1000);
  await expectVerifyFails(t, f, 'all', ErrorCodes.CHUNK_CORRUPT, 5, true);
});

// [what, damage, code, also through the CLI binary]
const corruptions: Array<[string, (file: string) => void, string, boolean]> = [
  ['a byte flipped in the payload', (f) => flipByte(f, 48 + 1000), ErrorCodes.CHUNK_CORRUPT, true],
  ['a byte flipped in the header (index field)', (f) => flipByte(f, 32), ErrorCodes.CHUNK_CORRUPT, false],
  ['a byte flipped in the header (plaintext xxh64)', (f) => flipByte(f, 16), ErrorCodes.CHUNK_CORRUPT, false],
  ['the object truncated', (f) => fs.truncateSync(f, fs.statSync(f).size - 1), ErrorCodes.CHUNK_CORRUPT, true],
  ['the object cut to 10 bytes', (f) => fs.truncateSync(f, 10), ErrorCodes.CHUNK_CORRUPT, false],
  ['the object deleted', (f) => fs.rmSync(f), ErrorCodes.CHUNK_MISSING, true],
];

for (const [what, damage, code, viaCli] of corruptions) {
  t.test(`chunk 5 of point 1 with ${what}: verify and recover fail naming it`, async (t) => {
    const f = await twoPoints(t);
    damage(chunkFile(f.storeDir, 'd', 1, 5));
    if (viaCli) {
      await Promise.all([
        expectVerifyFails(t, f, 'all', code, 5),
        expectRecoverFails(t, f, 'latest', code, 5), // point 2 restores chunk 5 from point 1
      ]);
    }
    await expectLibVerifyFails(t, f, 'all', code, 5);
    await expectLibVerifyFails(t, f, '1', code, 5);
    await expectLibVerifyFails(t, f, 'latest', code, 5);
    await t.rejects(restore(fsStore(f.storeDir), 'd', 1, path.join(f.dir, 'lib.img')), { code, details: { index: 5, offset: 5 * CHUNK } },
      'the library recover rejects with the code and the chunk in details');
    t.notOk(fs.existsSync(path.join(f.dir, 'lib.img')), 'no output left by the library recover');
  });
}

t.test('a damaged chunk only point 2 uses: point 1 still verifies and restores, point 2 fails', async (t) => {
  const f = await twoPoints(t);
  flipByte(chunkFile(f.storeDir, 'd', 2, 7), 60);
  const ok = await runCli(['verify', '--store', f.storeDir, '--disk', 'd', '--point', '1']);
  t.equal(ok.code, 0, 'verify of point 1 is ok');
  t.equal(ok.stderr, '');
  await expectRestore(t, fsStore(f.storeDir), 'd', 1, f.fps[0], f.dir);
  await expectLibVerifyFails(t, f, '2', ErrorCodes.CHUNK_CORRUPT, 7);
  await expectRecoverFails(t, f, '2', ErrorCodes.CHUNK_CORRUPT, 7);
});

t.test('verify reports every damaged chunk, not only the first', async (t) => {
  const f = await twoPoints(t);
  flipByte(chunkFile(f.storeDir, 'd', 1, 2), 100);
  fs.rmSync(chunkFile(f.storeDir, 'd', 1, 12));
  const v = await verify({ store: fsStore(f.storeDir), disk: 'd', point: '1' });
  t.equal(v.ok, false);
  t.same(v.problems.map((p) => [p.code, p.index]).sort(), [[ErrorCodes.CHUNK_CORRUPT, 2], [ErrorCodes.CHUNK_MISSING, 12]]);
});

t.test('a valid chunk object copied over another chunk key of the same point: restore refuses it', async (t) => {
  const f = await twoPoints(t);
  // Chunks 1 and 3 are both random, same length, same writer: only the header's index tells them apart.
  fs.copyFileSync(chunkFile(f.storeDir, 'd', 1, 1), chunkFile(f.storeDir, 'd', 1, 3));
  const r = await expectRecoverFails(t, f, '1', ErrorCodes.CHUNK_CORRUPT, 3);
  t.match(r.stderr, /holds chunk 1 /, 'the message says which chunk the object really holds');
  await expectLibVerifyFails(t, f, '1', ErrorCodes.CHUNK_CORRUPT, 3);
  await t.rejects(restore(fsStore(f.storeDir), 'd', 1, path.join(f.dir, 'lib.img')), { code: ErrorCodes.CHUNK_CORRUPT, details: { index: 3 } });
});

t.test('the object of the same point and index from another store (other content): restore refuses it', async (t) => {
  const f = await twoPoints(t);
  // A second store of a disk that differs only in chunk 4: its object (writer 1, index 4) has the right
  // header shape (index, writer, lengths, a valid payload checksum) but other bytes.
  const other = path.join(f.dir, 'other-store');
  const img2 = path.join(f.dir, 'other.img');
  fs.copyFileSync(path.join(f.dir, 'disk.img'), img2);
  writeAt(img2, 4 * CHUNK + 5, randomData(64, 77));
  await snap(fsStore(other), img2, 'd', { chunkSize: CHUNK });
  fs.copyFileSync(chunkFile(other, 'd', 1, 4), chunkFile(f.storeDir, 'd', 1, 4));
  await expectRecoverFails(t, f, '1', ErrorCodes.CHUNK_CORRUPT, 4);
  await expectLibVerifyFails(t, f, 'all', ErrorCodes.CHUNK_CORRUPT, 4);
});

/** Rewrites one entry of point 1's (single) table segment, with a valid segment checksum. */
async function tamperTable(storeDir: string, point: number, index: number, change: (e: ReturnType<typeof decodeSegment>[number]) => void) {
  const dir = path.join(storeDir, 'disks', 'd', 'tables', String(point).padStart(10, '0'));
  const segs = listFiles(dir);
  const file = path.join(dir, segs[0]);
  const entries = decodeSegment(fs.readFileSync(file), file);
  const e = entries.find((x) => x.index === index);
  if (!e) throw new Error(`no entry ${index} in ${file}`);
  change(e);
  fs.writeFileSync(file, encodeSegment(entries));
}

t.test('a table entry whose BLAKE3 disagrees with the chunk (xxh64 agrees): restore refuses the chunk', async (t) => {
  const f = await twoPoints(t);
  await tamperTable(f.storeDir, 1, 6, (e) => { e.strong = Buffer.from(e.strong); e.strong[0] ^= 1; });
  const r = await expectRecoverFails(t, f, '1', ErrorCodes.CHUNK_CORRUPT, 6);
  t.match(r.stderr, /BLAKE3/, 'the strong digest is what caught it');
});

t.test('an xxh64 collision with the parent does not make replicate skip a changed chunk', async (t) => {
  const f = await twoPoints(t);
  const store = fsStore(f.storeDir);
  // Point 3 will change chunk 3 to D. Make point 2's view claim chunk 3 already has xxh64(D) (a 64-bit
  // collision); point 2's table does not hold chunk 3, so forge it in point 1's table (the chain's base).
  const d = randomData(CHUNK, 333);
  await tamperTable(f.storeDir, 1, 3, (e) => { e.xxh64 = xxh64(d); });
  writeAt(f.img, 3 * CHUNK, d);
  const fp3 = fingerprint(f.img);
  const p3 = await snap(store, f.img, 'd');
  t.equal(p3.chunksChanged, 1, 'chunk 3 is stored although its xxh64 matches the parent');
  t.ok(chunkObjects(f.storeDir, 'd').includes('3/3'), 'chunk object 3/3 was written');
  await expectRestore(t, store, 'd', 3, fp3, f.dir);
});

t.test('a damaged manifest or table segment is reported by verify with its code', async (t) => {
  const f = await twoPoints(t);
  const tableDir = path.join(f.storeDir, 'disks', 'd', 'tables', '0000000002');
  flipByte(path.join(tableDir, listFiles(tableDir)[0]), 20);
  const v = await verify({ store: fsStore(f.storeDir), disk: 'd', point: 'all' });
  t.equal(v.ok, false, 'a bit flip in a table segment fails verify');
  t.ok(v.problems.some((p) => p.code === ErrorCodes.MANIFEST_CORRUPT && p.point === 2), 'reported as MANIFEST_CORRUPT of point 2');
  const out = path.join(f.dir, 'o.img');
  const rr = await runCli(['recover', '--store', f.storeDir, '--disk', 'd', '--point', '2', '--out', out]);
  t.equal(rr.code, 1);
  t.match(rr.stderr, ErrorCodes.MANIFEST_CORRUPT);
  t.notOk(fs.existsSync(out));

  const m = path.join(f.storeDir, 'disks', 'd', 'points', '0000000001.json');
  const text = fs.readFileSync(m, 'utf8');
  fs.writeFileSync(m, text.replace(`"diskSize": ${SIZE}`, `"diskSize": ${SIZE + 1}`));
  t.not(fs.readFileSync(m, 'utf8'), text, 'the manifest was edited');
  const r1 = await runCli(['verify', '--store', f.storeDir, '--disk', 'd', '--point', '1']);
  t.equal(r1.code, 1, 'an edited manifest fails verify');
  t.match(r1.stderr, ErrorCodes.MANIFEST_CORRUPT);
  t.equal(lines(r1.stderr).length, 1);
});
