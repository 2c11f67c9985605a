// rnode stats and rnode check on a store written by replicate (two clones of one image in the plain repository, one
// encrypted disk): figures and dedup ratio; without the key the encrypted repository is counted (objects, bytes) but
// check and prune need the key (RNODE_KEY_REQUIRED, exit 2); a maintenance prune without it sweeps the plain
// repository and names the encrypted one it left out. check of a store that holds no rnode data is RNODE_STORE_EMPTY,
// not "ok".
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { randomData, stopCodecWorkersAtEnd } from '../helpers/images.js';
import { json, runCli } from '../helpers/cli.js';
import { SIZE, copyOf, setup, type CheckStatsStore } from '../helpers/check-stats.js';

stopCodecWorkersAtEnd(t);
// Both tests only read the store (a prune without the key stops before it changes anything): it is written once.
let fixture: CheckStatsStore;
t.before(async () => {
  fixture = await setup(t);
});

t.test('stats, with and without the key', async (t) => {
  const { storeDir, keyFile } = fixture;
  const s = await runCli(['stats', '--store', storeDir, '--json']);
  t.equal(s.code, 0, s.stderr);
  const st = json(s);
  const plain = st.domains.find((d: any) => d.domain === 'plain');
  t.equal(plain.disks, 2);
  t.equal(plain.points, 2);
  t.equal(plain.logicalBytes, 2 * SIZE);
  t.ok(plain.dedupRatio > 1.9 && plain.dedupRatio <= 2, `two clones: dedup ratio ${plain.dedupRatio}`);
  t.equal(plain.unusedBytes, 0);
  const sealed = st.domains.find((d: any) => d.encrypted);
  t.equal(sealed.readable, false, 'without the key the encrypted repository is not read');
  t.ok(sealed.objects > 0 && sealed.storedBytes > 0 && sealed.packs > 0, 'but its objects and bytes are counted');
  t.same(st.sealedWithoutKey, [sealed.domain]);
  t.equal(st.points, 2);
  t.same(st.legacy, { disks: 0, points: 0, logicalBytes: 0, storedBytes: 0, objects: 0 }, 'leases are not counted as legacy-format data');

  const k = await runCli(['stats', '--store', storeDir, '--encryption-key-file', keyFile, '--json']);
  t.equal(k.code, 0, k.stderr);
  const sk = json(k);
  t.equal(sk.points, 3);
  t.equal(sk.disks, 3);
  t.equal(sk.domains.find((d: any) => d.encrypted).readable, true);
  const human = await runCli(['stats', '--store', storeDir]);
  t.match(human.stdout, /dedup ratio/);
  t.match(human.stdout, /encrypted, no key given/);
});

t.test('check and prune need the key of an encrypted repository', async (t) => {
  const { storeDir, keyFile } = fixture;
  const c = await runCli(['check', '--store', storeDir]);
  t.equal(c.code, 2, 'check without the key exits 2');
  t.match(c.stderr, /^rnode: RNODE_KEY_REQUIRED: /);
  t.notMatch(c.stderr, /\n\s+at /, 'no stack trace');
  const ok = await runCli(['check', '--store', storeDir, '--encryption-key-file', keyFile, '--read-data', '--json']);
  t.equal(ok.code, 0, ok.stdout + ok.stderr);
  const r = json(ok);
  t.equal(r.ok, true);
  t.equal(r.domains.length, 2);
  t.ok(r.domains.every((d: any) => d.blobsRead > 0));
  const p = await runCli(['prune', '--store', storeDir, '--disk', 'e', '--keep', '1']);
  t.equal(p.code, 2, 'prune of an encrypted disk without its key exits 2');
  t.match(p.stderr, /RNODE_KEY_REQUIRED/);
});

// A maintenance prune without the key swept the plain repository, exited 0 and said nothing of the encrypted one, whose
// unused packs were then never freed while the operator read "done".
t.test('prune without the key sweeps the plain repository and names the encrypted one it skipped', async (t) => {
  const { storeDir, keyFile } = copyOf(t, fixture);
  const text = await runCli(['prune', '--store', storeDir]);
  t.equal(text.code, 0, text.stderr);
  t.match(text.stdout, /repository plain: \d+ packs/);
  t.match(
    text.stdout,
    /repository k[0-9a-f]{16}: not swept \(RNODE_KEY_REQUIRED: encrypted, no key given\); pass its key with --encryption-key-file/,
  );
  const r = json(await runCli(['prune', '--store', storeDir, '--json']));
  t.same(
    r.domains.map((d: any) => d.domain),
    ['plain'],
  );
  t.equal(r.skipped.length, 1);
  t.match(r.skipped[0], { domain: /^k[0-9a-f]{16}$/, code: 'RNODE_KEY_REQUIRED' }, 'the same shape as check reports');
  const k = json(await runCli(['prune', '--store', storeDir, '--encryption-key-file', keyFile, '--json']));
  t.same(k.domains.map((d: any) => d.domain).sort(), [r.skipped[0].domain, 'plain'].sort(), 'with the key both are swept');
  t.same(k.skipped, [], 'and none is skipped');
});

// A first replicate stopped after its checkpoint: stats counted its disk, and its chunks as unique data of the
// committed points, so the two clones' dedup ratio fell from 2 to about 1.
t.test('stats counts committed points only: a point being written is pending, not a disk or unique data', async (t) => {
  const { dir, storeDir, keyFile } = copyOf(t, fixture);
  const before = json(await runCli(['stats', '--store', storeDir, '--encryption-key-file', keyFile, '--json']));
  const other = path.join(dir, 'other.img');
  fs.writeFileSync(other, randomData(SIZE, 77));
  for (const enc of [[], ['--encryption-key-file', keyFile]]) {
    const disk = enc.length ? 'f' : 'c';
    const args = ['replicate', '--source', other, '--target', storeDir, '--disk', disk, '--chunk-size', '64KiB', '--cache-dir', 'none', ...enc];
    const stopped = await runCli(args, { env: { RNODE_FAILPOINT: 'after-checkpoint' } });
    t.not(stopped.code, 0, `the first replicate of ${disk} stopped after its checkpoint`);
  }
  const r = await runCli(['stats', '--store', storeDir, '--encryption-key-file', keyFile, '--json']);
  t.equal(r.code, 0, r.stderr);
  const st = json(r);
  t.equal(st.disks, before.disks, 'disks as before (a, b, e)');
  t.equal(st.points, before.points);
  for (const d of st.domains) {
    const was = before.domains.find((b: any) => b.domain === d.domain);
    t.match(
      d,
      { disks: was.disks, points: was.points, dataBytes: was.dataBytes, uniqueBytes: was.uniqueBytes, dedupRatio: was.dedupRatio, unusedBytes: 0 },
      d.domain,
    );
    t.ok(d.pendingBytes > SIZE / 2, `${d.domain}: the stopped point's chunks are pending (${d.pendingBytes} bytes)`);
  }
  t.equal(st.pendingBytes, st.domains[0].pendingBytes + st.domains[1].pendingBytes);
  t.match((await runCli(['stats', '--store', storeDir])).stdout, /in points being written/);
  const c = await runCli(['check', '--store', storeDir, '--encryption-key-file', keyFile, '--json']);
  t.equal(c.code, 0, c.stdout + c.stderr);
  t.same(
    json(c)
      .domains.map((d: any) => [d.domain === 'plain', d.disks])
      .sort(),
    [
      [false, 1],
      [true, 2],
    ],
    'check counts the same disks',
  );
});

// One damaged manifest made stats print only an error: a Management Server charting it lost every figure.
t.test('stats counts every repository it can read, names the one it cannot, and exits 1', async (t) => {
  const { storeDir, keyFile } = copyOf(t, fixture);
  const before = json(await runCli(['stats', '--store', storeDir, '--encryption-key-file', keyFile, '--json']));
  const manifest = path.join(storeDir, 'r2', 'plain', 'disks', 'b', 'points', '0000000001');
  const bytes = fs.readFileSync(manifest);
  bytes[bytes.length >> 1] ^= 0x55;
  fs.writeFileSync(manifest, bytes);
  const r = await runCli(['stats', '--store', storeDir, '--encryption-key-file', keyFile, '--json']);
  t.equal(r.code, 1, 'exit 1');
  const st = json(r);
  t.match(st.problems, [{ domain: 'plain', code: 'RNODE_MANIFEST_CORRUPT' }], 'the damaged repository is named');
  const sealed = st.domains.find((d: any) => d.encrypted);
  const was = before.domains.find((d: any) => d.encrypted);
  t.match(
    sealed,
    { readable: true, points: was.points, dataBytes: was.dataBytes, dedupRatio: was.dedupRatio },
    'the other repository is counted whole',
  );
  t.match(
    st.domains.find((d: any) => d.domain === 'plain'),
    { readable: false, objects: Number, storedBytes: Number },
    'and the damaged one by its objects',
  );
  t.same(st.sealedWithoutKey, [], 'not taken for one sealed without its key');
  const human = await runCli(['stats', '--store', storeDir, '--encryption-key-file', keyFile]);
  t.equal(human.code, 1);
  t.match(human.stdout, /repository plain: \d+ objects, .*; the rest cannot be read, named below/);
  t.match(human.stdout, /^repository plain cannot be read: RNODE_MANIFEST_CORRUPT: /m);
  t.match(human.stderr, /^rnode: RNODE_MANIFEST_CORRUPT: 1 repository\(ies\) or legacy disk\(s\) cannot be read/);

  // Bug: a repository whose config was gone was skipped without a word: stats said "named below", named nothing, and
  // exited 0 with its disks uncounted.
  fs.writeFileSync(manifest, Buffer.from(bytes.map((b, i) => (i === bytes.length >> 1 ? b ^ 0x55 : b))));
  fs.rmSync(path.join(storeDir, 'r2', 'plain', 'config'));
  const noConfig = await runCli(['stats', '--store', storeDir, '--encryption-key-file', keyFile, '--json']);
  t.equal(noConfig.code, 1, 'no config: exit 1');
  t.match(
    json(noConfig).problems,
    [{ domain: 'plain', code: 'RNODE_MANIFEST_CORRUPT', message: /has objects but no config/ }],
    'no config: the repository is named',
  );
});

// Bug: check of an empty folder, or of a folder of other files (a mistyped --store, a mount point whose volume is not
// mounted), said "ok: 0 repositories, 0 legacy disks checked" and exited 0: a health check of the wrong place passed.
t.test('check of a store that holds no rnode data is not ok', async (t) => {
  const dir = t.testdir({ empty: {}, other: { 'notes.txt': 'not a store\n', sub: { 'a.bin': 'x' } } });
  for (const name of ['empty', 'other']) {
    const store = path.join(dir, name);
    const c = await runCli(['check', '--store', store]);
    t.equal(c.code, 1, `${name}: exit 1`);
    t.match(c.stderr, /^rnode: RNODE_STORE_EMPTY: .* holds no rnode data/, `${name}: says so`);
    t.notMatch(c.stderr, /\n\s+at /, 'no stack trace');
    const j = await runCli(['check', '--store', store, '--json']);
    t.equal(j.code, 1);
    t.equal(json(j).error.code, 'RNODE_STORE_EMPTY', `${name}: --json names the code`);
  }
  t.equal(
    (await runCli(['check', '--store', fixture.storeDir, '--encryption-key-file', fixture.keyFile])).code,
    0,
    'a store with data still checks ok',
  );
});
