// Read compatibility: a store written by the legacy format (test/fixtures/legacy-store, written by the release
// before repository v2) stays readable: points lists its points, recover restores them byte-exact, verify is ok,
// plain and encrypted. A new replicate onto a legacy disk writes a v2 point (full: "repository format upgraded")
// that continues the numbering, and prune --keep 1 then removes the legacy points' objects and keeps the v2 one.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { readKeyFile } from '../../src/crypto/keys.js';
import { prune } from '../../src/jobs/prune-v2.js';
import { verify } from '../../src/jobs/verify.js';
import { listPoints } from '../../src/repository/points.js';
import { expectRestore, fsStore, listFiles, snap, stopCodecWorkersAtEnd, tmpDir } from '../helpers/images.js';
import { json, runCli } from '../helpers/cli.js';

stopCodecWorkersAtEnd(t);

const FIXTURE = path.join(import.meta.dirname ?? path.dirname(new URL(import.meta.url).pathname), '..', 'fixtures');
const SHA = ['f13eab735221a75ff91037bd1452fb0f8b074df051dc3e573cdc60919f442566', '66a44a348db0343b66fc5c27889b321243d3d40591578371276eb18b2cfa362a'];

function legacyImage(point: number): Buffer {
  const img = Buffer.alloc(512 * 1024);
  for (let i = 0; i < img.length; i += 32)
    crypto
      .createHash('sha256')
      .update('seed' + i)
      .digest()
      .copy(img, i);
  img.fill(0, 128 * 1024, 192 * 1024);
  Buffer.from('hello legacy rnode '.repeat(3000)).copy(img, 256 * 1024);
  if (point === 2) img.fill(9, 70000, 71000);
  return img;
}

function copyFixture(t: Parameters<typeof tmpDir>[0]) {
  const dir = tmpDir(t, 'compat');
  const storeDir = path.join(dir, 'store');
  fs.cpSync(path.join(FIXTURE, 'legacy-store'), storeDir, { recursive: true });
  const keyFile = path.join(dir, 'key');
  fs.copyFileSync(path.join(FIXTURE, 'legacy-store.key'), keyFile);
  fs.chmodSync(keyFile, 0o600);
  return { dir, storeDir, keyFile, store: fsStore(storeDir), key: readKeyFile(keyFile) };
}

t.test('a legacy store stays readable: points, recover, verify (plain and encrypted)', async (t) => {
  const { dir, storeDir, keyFile, store, key } = copyFixture(t);
  t.equal(crypto.createHash('sha256').update(legacyImage(1)).digest('hex'), SHA[0], 'the fixture image is rebuilt exactly');
  for (const [disk, k] of [
    ['plain-disk', undefined],
    ['enc-disk', key],
  ] as const) {
    const points = await listPoints(store, disk, k);
    t.same(
      points.map((m) => [m.point, m.version]),
      [
        [1, k ? 3 : 1],
        [2, k ? 3 : 1],
      ],
      `${disk}: legacy points listed`,
    );
    for (const p of [1, 2])
      await expectRestore(t, store, disk, p, { size: 512 * 1024, sha256: SHA[p - 1] }, dir, `${disk} point ${p}`, { encryption: k });
    const v = await verify({ store, disk, point: 'all', encryption: k });
    t.equal(v.ok, true, `${disk}: verify ok`);
  }
  const cli = await runCli(['points', '--store', storeDir, '--disk', 'enc-disk', '--encryption-key-file', keyFile, '--json']);
  t.equal(cli.code, 0, cli.stderr);
  t.same(
    json(cli).points.map((p: { point: number }) => p.point),
    [1, 2],
  );
  const rec = await runCli(['recover', '--store', storeDir, '--disk', 'plain-disk', '--point', '2', '--out', path.join(dir, 'cli.img')]);
  t.equal(rec.code, 0, rec.stderr);
  t.equal(
    crypto
      .createHash('sha256')
      .update(fs.readFileSync(path.join(dir, 'cli.img')))
      .digest('hex'),
    SHA[1],
  );
});

t.test('a new replicate onto a legacy disk writes a v2 point; prune then drops the legacy objects', async (t) => {
  const { dir, storeDir, store, key } = copyFixture(t);
  for (const [disk, k] of [
    ['plain-disk', undefined],
    ['enc-disk', key],
  ] as const) {
    const img = path.join(dir, `${disk}.img`);
    const data = legacyImage(2);
    data.fill(7, 300000, 300100);
    fs.writeFileSync(img, data);
    const want = { size: data.length, sha256: crypto.createHash('sha256').update(data).digest('hex') };
    const r = await snap(store, img, disk, { encryption: k });
    t.equal(r.point, 3, `${disk}: the numbering continues`);
    t.equal(r.full, true);
    t.equal(r.fullReason, 'repository format upgraded');
    const points = await listPoints(store, disk, k);
    t.same(
      points.map((m) => m.version),
      [k ? 3 : 1, k ? 3 : 1, 4],
      `${disk}: legacy points, then a v2 point`,
    );
    await expectRestore(t, store, disk, 3, want, dir, `${disk} v2 point`, { encryption: k });
    await expectRestore(t, store, disk, 1, { size: 512 * 1024, sha256: SHA[0] }, dir, `${disk} legacy point 1 (still)`, { encryption: k });
    const p = await prune({ store, disk, keep: 1, encryption: k });
    t.same(p.deleted, [1, 2]);
    t.ok(p.chunksDeleted > 0, `${disk}: the legacy chunk objects went (${p.chunksDeleted})`);
    t.same(
      listFiles(path.join(storeDir, 'disks', disk)).filter((f) => !/^(lease|encryption)\.json$/.test(f)),
      [],
      `${disk}: only the lease and marker stay in the legacy area`,
    );
    await expectRestore(t, store, disk, 3, want, dir, `${disk} v2 point after prune`, { encryption: k });
    t.equal((await verify({ store, disk, point: 'all', encryption: k })).ok, true);
  }
});

t.test('disks lists the disks of a store: legacy and v2 points together, keyed v2 names with their key only', async (t) => {
  const { dir, storeDir, keyFile } = copyFixture(t);
  const list = async (...extra: string[]) => {
    const r = await runCli(['disks', '--store', storeDir, ...extra, '--json']);
    t.equal(r.code, 0, r.stderr);
    return json(r) as { disks: { disk: string; points: number; latest: number; diskSize: number; encryption?: object }[]; unlisted: object[] };
  };
  // Legacy names are plain paths (disks/<id>/), encrypted or not: both are listed.
  const bare = await list();
  t.same(
    bare.disks.map((d) => [d.disk, d.points, d.latest, d.diskSize, d.encryption !== undefined]),
    [
      ['enc-disk', 2, 2, 512 * 1024, true],
      ['plain-disk', 2, 2, 512 * 1024, false],
    ],
  );
  t.same(bare.unlisted, []);

  // A v2 point continues plain-disk's numbering; a new encrypted disk lives in its key's repository, under a keyed name.
  const img = path.join(dir, 'img');
  fs.writeFileSync(img, legacyImage(2));
  for (const args of [
    ['--disk', 'plain-disk'],
    ['--disk', 'new-enc', '--encryption-key-file', keyFile],
  ]) {
    const r = await runCli(['replicate', '--source', img, '--target', storeDir, ...args]);
    t.equal(r.code, 0, r.stderr);
  }
  const after = await list();
  t.same(
    after.disks.map((d) => [d.disk, d.points, d.latest]),
    [
      ['enc-disk', 2, 2],
      ['plain-disk', 3, 3],
    ],
  );
  t.match(after.unlisted, [{ domain: /^k/, disks: 1 }], 'the keyed one is counted, not named');
  const keyed = await list('--encryption-key-file', keyFile);
  t.same(
    keyed.disks.map((d) => [d.disk, d.points, d.latest]),
    [
      ['enc-disk', 2, 2],
      ['new-enc', 1, 1],
      ['plain-disk', 3, 3],
    ],
    'with its key it is named',
  );
  t.same(keyed.unlisted, []);
  const text = await runCli(['disks', '--store', storeDir]);
  t.match(text.stdout, /^plain-disk +3 +3 /m);
  t.match(text.stdout, /not listed: 1 disk of repository k\S+, encrypted with a key; pass it with --encryption-key-file/);
  // A damaged latest manifest names its disk and fails the listing, but hides no other disk.
  const manifests = path.join(storeDir, 'r2', 'plain', 'disks', 'plain-disk', 'points');
  const newest = path.join(manifests, fs.readdirSync(manifests).sort().pop()!);
  const b = fs.readFileSync(newest);
  b[b.length - 5] ^= 0xff;
  fs.writeFileSync(newest, b);
  const damaged = await runCli(['disks', '--store', storeDir, '--json']);
  t.equal(damaged.code, 1, 'exit 1');
  t.same(
    json(damaged).disks.map((d: { disk: string }) => d.disk),
    ['enc-disk'],
    'the others are listed',
  );
  t.match(json(damaged).problems, [{ disk: 'plain-disk', code: 'RNODE_MANIFEST_CORRUPT' }]);
  // Without --json, the failure line is the CLI's one form (it lacked the "rnode: " every other failure line has).
  const damagedText = await runCli(['disks', '--store', storeDir]);
  t.match(damagedText.stderr, /^rnode: RNODE_MANIFEST_CORRUPT: 1 disk\(s\) could not be read; first: /m);
  const empty = path.join(dir, 'empty');
  fs.mkdirSync(empty);
  t.match((await runCli(['disks', '--store', empty])).stdout, /^the store holds no disks$/m);
});

// Bug: an rnode from before v2 sees only a disk's legacy points, so after today's build upgraded the disk (v2 point 2)
// it wrote its own "point 2". points hid it, recover returned the v2 point's bytes with exit 0, check said ok, and
// prune --keep 1 deleted legacy point 1's manifest, then failed on every run decoding a v2 table as a legacy one.
t.test('a legacy point an older rnode writes after the upgrade is refused by readers and prune, which deletes nothing', async (t) => {
  const { dir, storeDir } = copyFixture(t);
  const legacyArea = path.join(storeDir, 'disks', 'plain-disk');
  const oldPoint2 = path.join(legacyArea, 'points', '0000000002.json');
  const oldBytes = fs.readFileSync(oldPoint2);
  fs.rmSync(oldPoint2); // the store as the old node left it after its point 1
  const img = path.join(dir, 'img');
  const data = legacyImage(1);
  data.fill(7, 300000, 300100);
  fs.writeFileSync(img, data);
  const upgraded = await runCli(['replicate', '--source', img, '--target', storeDir, '--disk', 'plain-disk', '--json']);
  t.equal(upgraded.code, 0, upgraded.stderr);
  t.match(json(upgraded), { point: 2, fullReason: 'repository format upgraded' });
  fs.writeFileSync(oldPoint2, oldBytes); // the old node's next run: legacy "point 2" on top of its point 1

  const before = listFiles(storeDir).filter((f) => !f.endsWith('lease.json'));
  const out = path.join(dir, 'out.img');
  for (const args of [
    ['points', '--store', storeDir, '--disk', 'plain-disk'],
    ['recover', '--store', storeDir, '--disk', 'plain-disk', '--point', '2', '--out', out],
    ['recover', '--store', storeDir, '--disk', 'plain-disk', '--out', out],
    ['verify', '--store', storeDir, '--disk', 'plain-disk', '--point', 'all'],
    ['prune', '--store', storeDir, '--disk', 'plain-disk', '--keep', '1'],
    ['prune', '--store', storeDir, '--disk', 'plain-disk', '--keep', '1'],
    ['replicate', '--source', img, '--target', storeDir, '--disk', 'plain-disk'],
  ]) {
    const r = await runCli(args);
    t.equal(r.code, 1, `${args[0]}: exit 1`);
    t.match(r.stderr, /RNODE_LEGACY_AFTER_UPGRADE.*legacy point 2 .*upgrade rnode/, `${args[0]}: says why and what to do`);
  }
  t.notOk(fs.existsSync(out), 'recover wrote no image');
  const d = await runCli(['disks', '--store', storeDir, '--json']);
  t.notOk(
    json(d).disks.some((x: { disk: string }) => x.disk === 'plain-disk'),
    'disks does not show the v2 point 2 as the disk latest',
  );
  t.match(json(d).problems, [{ disk: 'plain-disk', code: 'RNODE_LEGACY_AFTER_UPGRADE' }], 'disks names the problem');
  const c = await runCli(['check', '--store', storeDir, '--json']);
  t.equal(c.code, 1, 'check fails');
  t.equal(json(c).ok, false);
  t.match(json(c).problems, [{ code: 'RNODE_LEGACY_AFTER_UPGRADE' }]);
  // The disk's problem, not the store's: stats gave no figure at all.
  const s = await runCli(['stats', '--store', storeDir, '--json']);
  t.equal(s.code, 1, 'stats exits 1');
  t.match(json(s).problems, [{ disk: 'plain-disk', code: 'RNODE_LEGACY_AFTER_UPGRADE' }], 'stats names the problem');
  t.ok(json(s).points > 0, 'and counts the rest');
  t.same(
    listFiles(storeDir).filter((f) => !f.endsWith('lease.json')),
    before,
    'nothing was deleted or written',
  );

  // Done as the sentence says (the old point restored with the old build if needed): its manifest goes. Its tables,
  // chunk objects and a checkpoint the old node left (a run killed before its commit) are then a dead attempt below
  // the disk's newest point, and prune removes them while keeping legacy point 1 and v2 point 2.
  fs.rmSync(oldPoint2);
  fs.mkdirSync(path.join(legacyArea, 'pending'), { recursive: true });
  fs.writeFileSync(path.join(legacyArea, 'pending', '0000000002.json'), '{}');
  const p = await runCli(['prune', '--store', storeDir, '--disk', 'plain-disk', '--keep', '2', '--json']);
  t.equal(p.code, 0, p.stderr);
  t.same(json(p).kept, [1, 2]);
  const after = json(await runCli(['stats', '--store', storeDir, '--json']));
  const listed = json(await runCli(['disks', '--store', storeDir, '--json'])).disks.reduce((n: number, d: { points: number }) => n + d.points, 0);
  t.equal(after.points, listed, `stats counts ${listed} points, as disks lists them: the upgraded disk's v2 point once, not as legacy too`);
  t.same(
    listFiles(legacyArea).filter((f) => /\/0000000002/.test(f)),
    [],
    "the old run's checkpoint, tables and chunk objects are gone",
  );
  const store = fsStore(storeDir);
  await expectRestore(t, store, 'plain-disk', 1, { size: 512 * 1024, sha256: SHA[0] }, dir, 'legacy point 1');
  const want = { size: data.length, sha256: crypto.createHash('sha256').update(data).digest('hex') };
  await expectRestore(t, store, 'plain-disk', 2, want, dir, 'v2 point 2');
});
