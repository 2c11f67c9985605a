// rnode check finds a damaged blob only with --read-data, a deleted pack and an edited index entry without it; a
// damaged pack trailer is one problem, not every chunk in the pack missing, and --repair rewrites that pack; prune
// end to end through the CLI (retention, then the sweep over three runs with grace 0) keeps restores byte-exact,
// including those of a disk that shares its chunks with the pruned points.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { r2 } from '../../src/repository/names.js';
import { fsStore, KiB, randomData, snap, stopCodecWorkersAtEnd, writeAt } from '../helpers/images.js';
import { json, runCli } from '../helpers/cli.js';
import { copyOf, packFiles, setup, type CheckStatsStore } from '../helpers/check-stats.js';

stopCodecWorkersAtEnd(t);
// The store is written once; each test damages or prunes its own copy.
let fixture: CheckStatsStore;
t.before(async () => {
  fixture = await setup(t);
});

t.test('check finds damage: a changed blob (with --read-data), a deleted pack, an edited index', async (t) => {
  const { storeDir, keyFile } = copyOf(t, fixture);
  const args = ['check', '--store', storeDir, '--encryption-key-file', keyFile, '--json'];
  const packs = packFiles(storeDir, 'plain');
  t.ok(packs.length > 0);
  const victim = packs[0];
  const orig = fs.readFileSync(victim);
  const bad = Buffer.from(orig);
  bad[100] ^= 0xff;
  fs.writeFileSync(victim, bad);
  const quick = await runCli(args);
  t.equal(quick.code, 0, 'the structure is intact: without --read-data the damage in a blob is not seen');
  const deep = await runCli([...args, '--read-data']);
  t.equal(deep.code, 1, 'with --read-data it is');
  t.ok(
    json(deep).problems.some((p: any) => p.code === 'RNODE_CHUNK_CORRUPT'),
    'RNODE_CHUNK_CORRUPT',
  );
  fs.writeFileSync(victim, orig);

  fs.renameSync(victim, `${victim}.moved`);
  const gone = await runCli(args);
  t.equal(gone.code, 1);
  t.ok(
    json(gone).problems.some((p: any) => p.code === 'RNODE_CHUNK_MISSING'),
    'a deleted pack: RNODE_CHUNK_MISSING',
  );
  fs.renameSync(`${victim}.moved`, victim);

  // A truncated pack: named once, without the advice to run the check that is running.
  fs.truncateSync(victim, 1000);
  const cut = await runCli(args.filter((a) => a !== '--json'));
  t.equal(cut.code, 1);
  t.match(cut.stdout, /RNODE_MANIFEST_CORRUPT: pack \S+ is corrupt \(no pack magic at its end\); it was truncated or damaged\n/);
  t.notMatch(cut.stdout + cut.stderr, /run "rnode check/, 'check does not advise running check');
  t.match(cut.stderr, /^rnode: RNODE_MANIFEST_CORRUPT: \d+ problem\(s\) found; first: /, 'the failure line, like every other one');
  fs.writeFileSync(victim, orig);

  const indexRoot = path.join(storeDir, 'r2', 'plain', 'index');
  const xx = fs.readdirSync(indexRoot)[0];
  const idx = path.join(indexRoot, xx, fs.readdirSync(path.join(indexRoot, xx))[0]);
  const ib = fs.readFileSync(idx);
  const edited = Buffer.from(ib);
  edited[8 + 4 + 16 + 32] ^= 1; // the offset of the first entry
  fs.writeFileSync(idx, edited);
  const ed = await runCli(args);
  t.equal(ed.code, 1);
  t.ok(
    json(ed).problems.some((p: any) => p.code === 'RNODE_MANIFEST_CORRUPT' && p.key === r2.index('plain', path.basename(idx))),
    'an edited index object is named',
  );
  fs.writeFileSync(idx, ib);
  t.equal((await runCli(args)).code, 0, 'restored: ok again');

  // Bug: an emptied config was reported twice, as corrupt and as missing ("has objects but no config").
  const config = path.join(storeDir, ...r2.config('plain').split('/'));
  const cb = fs.readFileSync(config);
  fs.writeFileSync(config, '');
  const empty = await runCli(args.filter((a) => a !== '--json'));
  t.equal(empty.code, 1, 'an empty config: a problem');
  t.match(empty.stdout, /RNODE_MANIFEST_CORRUPT: .*config.* is corrupt/, 'named as corrupt');
  t.notMatch(empty.stdout, /no config/, 'not as missing: it is there');
  fs.writeFileSync(config, cb);
  fs.rmSync(config);
  const missing = await runCli(args.filter((a) => a !== '--json'));
  t.match(missing.stdout, /repository plain has objects but no config/, 'a config that is gone is still named missing');
  // Bug: prune swept nothing, said nothing and exited 0 (prune --disk --keep: "the disk has no committed points").
  for (const key of [[], ['--encryption-key-file', keyFile]]) {
    const pruned = await runCli(['prune', '--store', storeDir, ...key]);
    t.equal(pruned.code, 1, `prune ${key.length ? 'with' : 'without'} a key fails`);
    t.match(pruned.stderr, /RNODE_MANIFEST_CORRUPT: repository plain has objects but no config r2\/plain\/config/, 'naming the config');
  }
  fs.writeFileSync(config, cb);
  t.equal((await runCli(args)).code, 0, 'restored: ok again');
});

// Bug (finder F): a pack whose trailer alone was damaged made check report every chunk in it RNODE_CHUNK_MISSING,
// though recover and verify read them fine through the index; --read-data skipped the pack (0 blobs read) and
// --repair left it as it was, so check failed the same way for good.
t.test('a damaged pack trailer: its chunks are not missing, --read-data reads them, --repair rewrites the pack', async (t) => {
  const { storeDir, keyFile, dir } = copyOf(t, fixture);
  const args = ['check', '--store', storeDir, '--encryption-key-file', keyFile, '--json'];
  // One pack of each repository: the plain one's trailer is then damaged, the encrypted one's fails authentication.
  const sealed = fs.readdirSync(path.join(storeDir, 'r2')).find((d) => d !== 'plain')!;
  const victims = [packFiles(storeDir, 'plain')[0], packFiles(storeDir, sealed)[0]];
  for (const victim of victims) {
    const bad = fs.readFileSync(victim);
    bad[bad.length - 100] ^= 0xff; // inside the trailer, before the 8-byte tail
    fs.writeFileSync(victim, bad);
  }

  const quick = json(await runCli(args));
  t.same(
    quick.problems.map((p: any) => [p.code, p.key]).sort(),
    [
      ['RNODE_MANIFEST_CORRUPT', r2.pack('plain', path.basename(victims[0]))],
      ['RNODE_METADATA_FORGED', r2.pack(sealed, path.basename(victims[1]))],
    ].sort(),
    'each trailer is one problem: no chunk is reported missing',
  );
  for (const p of quick.problems) t.match(p.message, /its chunks are still read where the index places them/);

  const deep = json(await runCli([...args, '--read-data']));
  for (const d of deep.domains) t.ok(d.blobsRead > 0, `--read-data reads the blobs of ${d.domain} (${d.blobsRead})`);
  t.equal(deep.problems.length, 2, 'and finds none of them damaged');

  const repaired = await runCli([...args, '--read-data', '--repair']);
  t.equal(repaired.code, 1, 'the run that repairs still reports what it found');
  for (const d of json(repaired).domains) t.match(d.repair, { packsRepaired: 1, dropped: [] }, `${d.domain}: the pack is rewritten whole`);
  for (const victim of victims) t.notOk(fs.existsSync(victim), 'the damaged pack is gone');
  const after = await runCli([...args, '--read-data']);
  t.equal(after.code, 0, `ok after the repair: ${after.stdout.slice(0, 400)}`);
  for (const disk of ['a', 'b', 'e']) {
    const out = path.join(dir, `${disk}.out`);
    const key = disk === 'e' ? ['--encryption-key-file', keyFile] : [];
    t.equal((await runCli(['recover', '--store', storeDir, '--disk', disk, '--out', out, ...key])).code, 0);
    t.ok(fs.readFileSync(out).equals(fs.readFileSync(path.join(dir, 'disk.img'))), `disk ${disk} restores byte-exact`);
  }

  // A pack cut short keeps its own error: the chunks past its end are missing, and said so.
  const other = copyOf(t, fixture);
  const cut = packFiles(other.storeDir, 'plain')[0];
  fs.truncateSync(cut, Math.floor(fs.statSync(cut).size / 2));
  const short = json(await runCli(['check', '--store', other.storeDir, '--encryption-key-file', other.keyFile, '--json']));
  t.ok(
    short.problems.some((p: any) => p.code === 'RNODE_CHUNK_MISSING'),
    'a truncated pack: its chunks are missing',
  );
  t.notOk(
    short.problems.some((p: any) => /still read where the index/.test(p.message)),
    'and no stand-in is claimed',
  );
});

// Bug (finder C): --repair left a pack cut short as it was, and its index entries with it: every later replicate, --full
// too, found its lost chunks there (dedup), stored nothing and committed points that never restored, exit 0; the
// chunk error's advice (repair, then --full) was the very thing that had not worked.
t.test('a pack cut short: --repair keeps the blobs before the cut, and replicate --full stores the rest anew', async (t) => {
  const { storeDir, dir, img, keyFile } = copyOf(t, fixture);
  const key = ['--encryption-key-file', keyFile];
  const cut = packFiles(storeDir, 'plain')[0];
  fs.truncateSync(cut, Math.floor(fs.statSync(cut).size / 2));
  // Before the repair, a replicate of that data finds its chunks there (dedup): it must not commit over the cut.
  const before = await runCli(['replicate', '--source', img, '--target', storeDir, '--disk', 'a', '--full', '--cache-dir', 'none']);
  t.equal(before.code, 1, 'a replicate over the cut pack fails');
  t.match(before.stderr, /RNODE_CHUNK_MISSING: pack \S+, which this point reuses chunks from, is cut short .*run "rnode check --read-data --repair"/);
  const repaired = await runCli(['check', '--store', storeDir, '--read-data', '--repair', '--json', ...key]);
  t.equal(repaired.code, 1, 'the run that repairs reports what it found');
  const plain = json(repaired).domains.find((d: any) => d.domain === 'plain');
  t.match(plain?.repair, { packsRepaired: 1 }, 'the cut pack is rewritten');
  t.ok(
    plain.repair.dropped.length > 0 && plain.repair.blobsCopied > 0,
    `blobs before the cut kept (${plain.repair.blobsCopied}), those past it dropped (${plain.repair.dropped.length})`,
  );
  t.notOk(fs.existsSync(cut), 'and deleted');
  const full = await runCli(['replicate', '--source', img, '--target', storeDir, '--disk', 'a', '--full', '--cache-dir', 'none', '--json']);
  t.equal(full.code, 0, full.stderr);
  t.ok(json(full).packsWritten > 0, 'replicate --full stores the dropped chunks anew');
  const out = path.join(dir, 'a.out');
  t.equal((await runCli(['recover', '--store', storeDir, '--disk', 'a', '--out', out])).code, 0);
  t.ok(fs.readFileSync(out).equals(fs.readFileSync(img)), 'the new point restores byte-exact');
  const after = await runCli(['check', '--store', storeDir, '--read-data', ...key]);
  t.equal(after.code, 0, `every point restores again, the old ones too: ${after.stdout.slice(0, 300)}`);
});

// Bug (finder C): check cut the advice out of a damaged index object's message, leaving "...: it indexes the intact
// chunks again from their packs and deletes it" with no command to run.
t.test("a damaged index object: check's message keeps the command that repairs it", async (t) => {
  const { storeDir, keyFile } = copyOf(t, fixture);
  const indexRoot = path.join(storeDir, 'r2', 'plain', 'index');
  const xx = fs.readdirSync(indexRoot)[0];
  fs.writeFileSync(path.join(indexRoot, xx, fs.readdirSync(path.join(indexRoot, xx))[0]), randomData(300, 9));
  const r = await runCli(['check', '--store', storeDir, '--encryption-key-file', keyFile]);
  t.match(r.stdout, /is corrupt \(not a metadata envelope\); run "rnode check --read-data --repair": it indexes the intact chunks again/);
});

t.test('prune through the CLI: retention, the sweep over three runs, restores stay byte-exact', async (t) => {
  const { dir, storeDir, img } = copyOf(t, fixture);
  const store = fsStore(storeDir);
  const images: Buffer[] = [fs.readFileSync(img)];
  for (let p = 2; p <= 4; p++) {
    writeAt(img, ((p * 97) % 30) * 64 * KiB, randomData(256 * KiB, 100 + p));
    t.equal((await snap(store, img, 'a', { chunkSize: 64 * KiB })).point, p);
    images.push(fs.readFileSync(img));
  }
  const prune = (...extra: string[]) => runCli(['prune', '--store', storeDir, '--grace', '0', '--max-unused', '1', ...extra, '--json']);
  const first = await prune('--disk', 'a', '--keep', '2');
  t.equal(first.code, 0, first.stderr);
  t.same(json(first).kept, [3, 4]);
  for (let i = 0; i < 2; i++) t.equal((await prune()).code, 0);
  const s = json(await runCli(['stats', '--store', storeDir, '--json']));
  t.equal(s.domains.find((d: any) => d.domain === 'plain').unusedBytes, 0, 'nothing unused is left');
  for (const p of [3, 4]) {
    const out = path.join(dir, `r${p}.img`);
    const r = await runCli(['recover', '--store', storeDir, '--disk', 'a', '--point', String(p), '--out', out]);
    t.equal(r.code, 0, r.stderr);
    t.ok(fs.readFileSync(out).equals(images[p - 1]), `point ${p} restores byte-exact`);
  }
  const b = path.join(dir, 'b.img');
  t.equal((await runCli(['recover', '--store', storeDir, '--disk', 'b', '--out', b])).code, 0);
  t.ok(fs.readFileSync(b).equals(images[0]), "disk b, which shares its chunks with a's pruned points, restores byte-exact");
  const v = await runCli(['verify', '--store', storeDir, '--disk', 'a', '--point', 'all']);
  t.equal(v.code, 0, v.stdout + v.stderr);
});
