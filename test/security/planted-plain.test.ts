// Bug: unencrypted points planted on an encrypted disk were restored. Someone who can write the store (or a peer with
// a receiving node's token), without the key, copied the objects of an unencrypted disk of the same id into the store
// and left the disk's claim as it was: `points` and `recover` without the key then listed and restored the planted
// image, exit 0, although the writers refuse a key-less run of that disk (its claim). Legacy-format points planted
// below the encrypted ones were listed with the key, and their recover said to leave out the key, which restored the
// planted image too. Every reader now takes the claim's word: without the key, METADATA_FORGED (unencrypted points
// there) or KEY_REQUIRED; with it, the planted legacy points are named as forged and the encrypted ones still read.
import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { EncryptionKey } from '../../src/crypto/keys.js';
import { ErrorCodes } from '../../src/errors.js';
import { claimKey } from '../../src/repository/claims.js';
import { json, runCli } from '../helpers/cli.js';
import { randomData, tmpDir } from '../helpers/images.js';

const FIXTURE = path.join(import.meta.dirname, '..', 'fixtures', 'legacy-store', 'disks', 'plain-disk');

function setup(t: Test, name: string) {
  const dir = tmpDir(t, name);
  const keyFile = path.join(dir, 'key');
  fs.writeFileSync(keyFile, randomData(32, 71).toString('hex'), { mode: 0o600 });
  const store = path.join(dir, 'store');
  const img = path.join(dir, 'good.img');
  const replicate = (disk: string, ...extra: string[]) =>
    runCli(['replicate', '--source', img, '--target', store, '--disk', disk, '--chunk-size', '64KiB', '--cache-dir', 'none', ...extra]);
  return { dir, keyFile, store, img, replicate, key: ['--encryption-key-file', keyFile] };
}

t.test('unencrypted v2 points copied beside an encrypted disk: refused with and without the key', async (t) => {
  const { dir, store, img, replicate, key } = setup(t, 'planted-v2');
  fs.writeFileSync(img, randomData(256 * 1024, 72));
  t.equal((await replicate('vol1', ...key)).code, 0, 'the encrypted point');
  // The attacker's own store, an unencrypted disk of the same id; its objects copied in, the claim left alone.
  const evil = path.join(dir, 'evil.img');
  fs.writeFileSync(evil, Buffer.alloc(256 * 1024, 0x41));
  const atk = path.join(dir, 'atk');
  t.equal((await runCli(['replicate', '--source', evil, '--target', atk, '--disk', 'vol1', '--cache-dir', 'none'])).code, 0);
  fs.cpSync(path.join(atk, 'r2', 'plain'), path.join(store, 'r2', 'plain'), { recursive: true, force: false, errorOnExist: false });

  const listed = await runCli(['points', '--store', store, '--disk', 'vol1', '--json']);
  t.equal(listed.code, 1, `points without the key fails: ${listed.stderr}`);
  t.match(json(listed).error, { code: ErrorCodes.METADATA_FORGED, message: /disk vol1 is encrypted .*unencrypted point 1 .*Delete them/ });
  const out = path.join(dir, 'out.img');
  const recovered = await runCli(['recover', '--store', store, '--disk', 'vol1', '--out', out]);
  t.equal(recovered.code, 1, 'recover without the key fails');
  t.match(recovered.stderr, /RNODE_METADATA_FORGED/);
  t.notOk(fs.existsSync(out), 'and writes nothing');
  const verify = await runCli(['verify', '--store', store, '--disk', 'vol1']);
  t.match(verify.stderr, /RNODE_METADATA_FORGED/, 'verify without the key too');
  t.match(
    (await runCli(['replicate', '--source', evil, '--target', store, '--disk', 'vol1', '--cache-dir', 'none'])).stderr,
    /RNODE_KEY_REQUIRED/,
    'a key-less replicate is refused (the claim), as before the plant',
  );

  const withKey = await runCli(['points', '--store', store, '--disk', 'vol1', '--json', ...key]);
  t.equal(withKey.code, 0, withKey.stderr);
  t.match(json(withKey).points, [{ point: 1, encryption: {} }], 'with the key: the encrypted point');
  t.equal((await runCli(['recover', '--store', store, '--disk', 'vol1', '--out', out, ...key])).code, 0);
  t.ok(fs.readFileSync(out).equals(fs.readFileSync(img)), 'and it restores the real image');
});

t.test('legacy unencrypted points planted below an encrypted disk: named as forged, never restored', async (t) => {
  const { dir, store, img, replicate, key } = setup(t, 'planted-legacy');
  for (const seed of [73, 74, 75]) {
    fs.writeFileSync(img, randomData(256 * 1024, seed));
    t.equal((await replicate('plain-disk', ...key)).code, 0, `encrypted point (seed ${seed})`);
  }
  t.equal((await runCli(['prune', '--store', store, '--disk', 'plain-disk', '--keep', '1', '--grace', '0', ...key])).code, 0, 'prune --keep 1');
  fs.cpSync(FIXTURE, path.join(store, 'disks', 'plain-disk'), { recursive: true });

  const withKey = await runCli(['points', '--store', store, '--disk', 'plain-disk', '--json', ...key]);
  t.equal(withKey.code, 1, 'points with the key exits 1');
  const doc = json(withKey) as { points: Array<{ point: number }>; problems: Array<{ point: number; code: string; message: string }> };
  t.same(
    doc.points.map((p) => p.point),
    [3],
    'lists the encrypted point',
  );
  t.match(
    doc.problems,
    [
      { point: 1, code: ErrorCodes.METADATA_FORGED, message: /point 1 of disk plain-disk .* is not encrypted, but the disk is .*keep the key/ },
      { point: 2, code: ErrorCodes.METADATA_FORGED },
    ],
    'and names the planted ones',
  );
  const out = path.join(dir, 'out.img');
  const one = await runCli(['recover', '--store', store, '--disk', 'plain-disk', '--point', '1', '--out', out, ...key]);
  t.match(one.stderr, /RNODE_METADATA_FORGED/, 'recover of a planted point with the key: forged, no advice to drop the key');
  t.notMatch(one.stderr, /leave out/);
  for (const point of ['1', 'latest']) {
    const r = await runCli(['recover', '--store', store, '--disk', 'plain-disk', '--point', point, '--out', out]);
    t.match(r.stderr, /RNODE_KEY_REQUIRED/, `recover --point ${point} without the key: the disk is encrypted`);
    t.notOk(fs.existsSync(out), 'nothing written');
  }
  t.equal((await runCli(['recover', '--store', store, '--disk', 'plain-disk', '--out', out, ...key])).code, 0, 'the latest point with the key');
  t.ok(fs.readFileSync(out).equals(fs.readFileSync(img)), 'restores the real image');
});

// Bug: a claim whose key id was edited to another key's (its repository left as it was) gave "the key given (key id X)
// is not the key disk d is encrypted with (key id X)" to that key, and a replicate with the disk's own key kept the
// edited claim. A claim naming one of a key's two fingerprints and not the other was edited: METADATA_FORGED.
t.test('a claim whose key id was edited: METADATA_FORGED to either key, not a mismatch naming one id twice', async (t) => {
  const { dir, store, img, replicate, key, keyFile } = setup(t, 'edited-claim');
  fs.writeFileSync(img, randomData(128 * 1024, 76));
  t.equal((await replicate('d1', ...key)).code, 0);
  const otherFile = path.join(dir, 'other.key');
  const other = randomData(32, 77);
  fs.writeFileSync(otherFile, other.toString('hex'), { mode: 0o600 });
  const claimFile = path.join(store, ...claimKey('d1').split('/'));
  const claim = JSON.parse(fs.readFileSync(claimFile, 'utf8')) as { keyId: string };
  fs.writeFileSync(claimFile, JSON.stringify({ ...claim, keyId: EncryptionKey.fromBytes(other).keyId }) + '\n');

  const withOther = await runCli(['points', '--store', store, '--disk', 'd1', '--encryption-key-file', otherFile]);
  t.match(
    withOther.stderr,
    /RNODE_METADATA_FORGED: the claim \S+ of disk d1 was edited: it names the key id of the key given with another repository/,
  );
  const own = await replicate('d1', ...key);
  t.match(
    own.stderr,
    /RNODE_METADATA_FORGED: the claim \S+ of disk d1 was edited: it names the key given's repository with another key id/,
    "a replicate with the disk's key refuses it",
  );
  t.equal(
    (await runCli(['points', '--store', store, '--disk', 'd1', '--encryption-key-file', keyFile])).code,
    0,
    'its key still reads the points it authenticates',
  );
  t.equal(JSON.parse(fs.readFileSync(claimFile, 'utf8')).keyId, EncryptionKey.fromBytes(other).keyId, 'and writes nothing');
});
