// Encrypted points over the peer link: a receiving node (which never holds the key) validates every encrypted
// chunk by its stored bytes, stores only version-2 objects with no plaintext in them, and rejects a damaged one;
// full and incremental points restore byte-exact with the key, over the link and from the node's own directory;
// the CLI path (`rnode serve`, then replicate/verify/recover --encryption-key-file with ws://) works end to end.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { EncryptionKey } from '../../src/crypto/keys.js';
import { Domain } from '../../src/repository/domain.js';
import { PLAIN_DOMAIN } from '../../src/repository/names.js';
import { BlobFlag, readPackTrailer } from '../../src/repository/pack.js';
import type { BlobEntry } from '../../src/repository/pack.js';
import { verify } from '../../src/jobs/verify.js';
import { CLI, ensureBuilt, json, runCli } from '../helpers/cli.js';
import {
  KiB,
  MiB,
  expectRestore,
  fingerprint,
  fsStore,
  listFiles,
  randomData,
  snap,
  stopCodecWorkersAtEnd,
  textData,
  tmpDir,
  writeAt,
} from '../helpers/images.js';
import { remote, spawnServe, startNode } from '../transport/helpers.js';

stopCodecWorkersAtEnd(t);

const CHUNK = 64 * KiB;
const MASTER = crypto.createHash('sha256').update('remote-test-key').digest();
const KEY = EncryptionKey.fromBytes(MASTER);
const CANARY = Buffer.from('RNODE-REMOTE-CANARY '.repeat(3277)).subarray(0, CHUNK);

function disk(file: string): void {
  // Incompressible full-size chunks (stored as codec none: payload = chunk + nonce + tag), text and a canary.
  fs.writeFileSync(file, Buffer.concat([randomData(MiB, 1), CANARY, textData(MiB, 2), Buffer.alloc(256 * KiB), randomData(100 * KiB, 3)]));
}

t.test('encrypted points through a receiving node that holds no key', async (t) => {
  const dir = tmpDir(t, 'enc-ws');
  const img = path.join(dir, 'disk.img');
  disk(img);
  const fp1 = fingerprint(img);
  const { storeDir, server, url } = await startNode(t, dir, { token: 'tok' });
  const rs = remote(t, url, { token: 'tok' });
  t.match(await snap(rs, img, 'd', { chunkSize: CHUNK, encryption: KEY, checkpointRecords: 8 }), { point: 1, encryption: { keyId: KEY.keyId } });
  for (const i of [1, 17, 30]) writeAt(img, i * CHUNK + 3, randomData(200, i));
  const fp2 = fingerprint(img);
  t.match(await snap(rs, img, 'd', { encryption: KEY, checkpointRecords: 8 }), { point: 2, parent: 1, chunksChanged: 3 });
  t.equal(server.stats.rejected, 0, 'the node accepted every encrypted chunk');
  // v2: chunks travel as blobs in packs (r2/<key's domain>/packs/..); the node validates each pack by its stored bytes.
  const domain = Domain.of(KEY).name;
  const packsDir = path.join(storeDir, 'r2', domain, 'packs');
  const packFiles = listFiles(packsDir);
  const blobs: BlobEntry[] = [];
  for (const f of packFiles) blobs.push(...(await readPackTrailer(fsStore(storeDir), domain, path.basename(f), KEY)).entries);
  t.equal(server.stats.packPuts, packFiles.length, `${packFiles.length} packs validated by stored bytes`);
  t.ok(blobs.length >= 30, `${blobs.length} chunks in them`);

  const files = listFiles(storeDir);
  t.notOk(
    files.some((f) => f.includes('/chunks/') || f.startsWith(`r2/${PLAIN_DOMAIN}/`)),
    'no legacy chunk object and nothing in the plain repository',
  );
  t.ok(
    blobs.every((e) => (e.flags & BlobFlag.SEALED) !== 0),
    'every blob on the node is sealed',
  );
  t.notOk(
    files.some((f) => fs.readFileSync(path.join(storeDir, f)).includes('REMOTE-CANARY')),
    'no plaintext on the node',
  );
  t.ok(
    blobs.some((e) => e.plainLength === CHUNK && e.codec === 0 && e.length === CHUNK + 28),
    'an incompressible full-size chunk: chunk + nonce + tag, accepted',
  );

  await expectRestore(t, rs, 'd', 1, fp1, dir, 'point 1 over ws://', { encryption: KEY });
  await expectRestore(t, rs, 'd', 2, fp2, dir, 'point 2 over ws://', { encryption: KEY });
  await expectRestore(t, fsStore(storeDir), 'd', 2, fp2, dir, "point 2 from the node's own directory", { encryption: KEY });
  // v2: an encrypted disk's points are found with its key only (docs/formats.md); without it verify says so.
  await t.rejects(
    verify({ store: rs, disk: 'd', point: 'all' }),
    { code: 'RNODE_KEY_REQUIRED' },
    'verify over the link without the key: the key is required',
  );
  t.match(await verify({ store: rs, disk: 'd', point: 'all', encryption: KEY }), { ok: true, checked: 'contents' }, 'and with it');

  // A damaged encrypted pack sent to the node is refused and not stored. Its trailer is sealed, so the node checks
  // its structure only (docs/repository-v2.md, Transport): a broken pack magic, and a blob area too small for its blobs.
  const packKey = `r2/${domain}/packs/${packFiles[0]}`;
  const good = fs.readFileSync(path.join(packsDir, packFiles[0]));
  const badMagic = Buffer.from(good);
  badMagic[badMagic.length - 1] ^= 0x04;
  await t.rejects(rs.put(packKey, badMagic), { code: 'RNODE_TRANSPORT_REJECTED', message: /pack magic/ });
  const { entries } = await readPackTrailer(fsStore(storeDir), domain, path.basename(packFiles[0]), KEY);
  const lastEnd = entries[entries.length - 1].offset + entries[entries.length - 1].length;
  const noBlobs = Buffer.concat([good.subarray(0, 0), good.subarray(lastEnd)]); // the trailer without its blobs
  await t.rejects(rs.put(packKey, noBlobs), { code: 'RNODE_TRANSPORT_REJECTED', message: /cannot hold/ });
  t.equal(server.stats.rejected, 2);
  t.ok(fs.readFileSync(path.join(packsDir, packFiles[0])).equals(good), 'the stored object is untouched');
});

t.test('CLI: rnode serve, then replicate/verify/recover --encryption-key-file with ws://', async (t) => {
  ensureBuilt();
  const dir = tmpDir(t, 'enc-ws-cli');
  const img = path.join(dir, 'disk.img');
  disk(img);
  const tok = path.join(dir, 'token');
  fs.writeFileSync(tok, 'enc-cli-token\n', { mode: 0o600 });
  const keyFile = path.join(dir, 'key');
  fs.writeFileSync(keyFile, MASTER.toString('hex'), { mode: 0o600 });
  const serve = await spawnServe(t, CLI, ['--listen', '127.0.0.1:0', '--store', path.join(dir, 'recv'), '--token-file', tok]);
  const common = ['--token-file', tok, '--encryption-key-file', keyFile];
  const r = await runCli(['replicate', '--source', img, '--target', serve.url, '--disk', 'c', '--chunk-size', '64KiB', '--json', ...common]);
  t.equal(r.code, 0, r.stderr);
  t.match(json(r), { point: 1, encryption: { keyId: KEY.keyId } });
  const v = await runCli(['verify', '--store', serve.url, '--disk', 'c', '--json', ...common]);
  t.match(json(v), { ok: true, checked: 'contents' });
  const out = path.join(dir, 'out.img');
  const rc = await runCli(['recover', '--store', serve.url, '--disk', 'c', '--out', out, '--json', ...common]);
  t.equal(rc.code, 0, rc.stderr);
  t.same(fingerprint(out), fingerprint(img), 'recovered over ws:// byte-exact');
  const noKey = await runCli(['recover', '--store', serve.url, '--disk', 'c', '--out', path.join(dir, 'x.img'), '--token-file', tok]);
  t.equal(noKey.code, 2);
  t.match(noKey.stderr, /RNODE_KEY_REQUIRED/);
  t.notOk(serve.log().includes(MASTER.toString('hex').slice(0, 16)), 'the key is nowhere in the node log');
});
