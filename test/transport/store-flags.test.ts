// Every command that takes a store takes the ws flags, and the library opens ws:// stores. Bugs: `prune
// --token-file` was refused ("Unknown option"), so a token-protected node could not be pruned from the CLI;
// and openStore('ws://...') from the library entry failed with an unknown scheme (only the CLI loaded it).
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { DIST_INDEX, ensureBuilt, json, lines, runCli, runNode } from '../helpers/cli.js';
import { MAX_TOKEN_CHARS, RemoteStore } from '../../src/transport/index.js';
import { randomData, tmpDir } from '../helpers/images.js';
import { startNode } from './helpers.js';
import { haveOpenssl } from '../helpers/tls.js';
import { selfSignedCert } from '../../src/testing.js';

t.test('replicate, points, verify, recover and prune all take --token-file for a ws:// store', async (t) => {
  const dir = tmpDir(t, 'wsflags');
  const { url, storeDir } = await startNode(t, dir, { token: 'flag-token' });
  const tok = path.join(dir, 'token');
  fs.writeFileSync(tok, 'flag-token\n', { mode: 0o600 });
  const auth = ['--token-file', tok];
  const image = path.join(dir, 'disk.img');
  fs.writeFileSync(image, randomData(1 << 20, 9));
  for (let i = 0; i < 2; i++) {
    const r = await runCli(['replicate', '--source', image, '--target', url, '--disk', 'w', '--chunk-size', '256KiB', '--json', ...auth]);
    t.equal(r.code, 0, `replicate ${i + 1}: ${r.stderr}`);
  }
  const points = await runCli(['points', '--store', url, '--disk', 'w', '--json', ...auth]);
  t.equal(json(points).points.length, 2, 'points');
  const verify = await runCli(['verify', '--store', url, '--disk', 'w', '--point', 'all', '--json', ...auth]);
  t.equal(verify.code, 0, `verify: ${verify.stderr}`);
  const out = path.join(dir, 'out.img');
  const recover = await runCli(['recover', '--store', url, '--disk', 'w', '--out', out, '--json', ...auth]);
  t.equal(recover.code, 0, `recover: ${recover.stderr}`);
  t.ok(fs.readFileSync(out).equals(fs.readFileSync(image)), 'byte-exact through the node');
  const prune = await runCli(['prune', '--store', url, '--disk', 'w', '--keep', '2', '--json', ...auth]);
  t.equal(prune.code, 0, `prune: ${prune.stderr}`);
  t.same(json(prune).kept, [1, 2], 'prune reached the node and read both points');
  // Deleting a point rewrites the kept point's manifest, which the node refuses over the peer link by design:
  // that refusal (not a flag error) is what the user sees, and it says where to prune.
  // Refused before it writes: it used to rebase point 2 first, leaving a table segment of its own on the node.
  const nodeFiles = () => fs.readdirSync(path.join(storeDir, 'r2'), { recursive: true }).map(String).sort();
  const filesBefore = nodeFiles();
  const rebase = await runCli(['prune', '--store', url, '--disk', 'w', '--keep', '1', ...auth]);
  t.equal(rebase.code, 1);
  t.match(rebase.stderr, /RNODE_TRANSPORT_REJECTED: .*run "rnode prune" on the receiving node/);
  t.same(nodeFiles(), filesBefore, 'the refused retention put nothing on the node');
  // No sweep over the link: each try merged the node's indexes into one more index object before a delete was refused.
  const indexes = () => fs.readdirSync(path.join(storeDir, 'r2', 'plain', 'index'), { recursive: true }).length;
  const before = indexes();
  for (let i = 0; i < 2; i++) await runCli(['prune', '--store', url, '--disk', 'w', '--keep', '1', ...auth]);
  const maintenance = await runCli(['prune', '--store', url, ...auth]);
  t.equal(maintenance.code, 1, 'maintenance alone over the link is refused');
  t.match(maintenance.stderr, /RNODE_TRANSPORT_REJECTED: .*run "rnode prune" on the receiving node/);
  t.equal(indexes(), before, 'and nothing was put on the node');
  // The same for check --repair: it re-indexed and merged indexes on the node, then failed on the delete, leaving
  // every index entry doubled. Refused before it writes.
  const repair = await runCli(['check', '--store', url, '--read-data', '--repair', ...auth]);
  t.equal(repair.code, 1, 'check --repair over the link is refused');
  t.match(repair.stderr, /RNODE_TRANSPORT_REJECTED: .*run "rnode check --read-data --repair" on the receiving node/);
  t.equal(indexes(), before, 'and nothing was put on the node');
  t.equal((await runCli(['check', '--store', url, '--read-data', ...auth])).code, 0, 'check --read-data over the link reads it all, as before');
  const noToken = await runCli(['prune', '--store', url, '--disk', 'w', '--keep', '1']);
  t.equal(noToken.code, 1, 'without the token the node refuses');
  t.match(noToken.stderr, /RNODE_TRANSPORT_AUTH/);
  const local = await runCli(['prune', '--store', path.join(dir, 'local'), '--disk', 'w', '--keep', '1', ...auth]);
  t.equal(local.code, 2, 'the ws flags on a local store are a usage error, not silently ignored');
  t.match(local.stderr, /apply to ws:\/\/ and wss:\/\/ stores only/);
});

t.test('the library entry opens ws:// stores, with the token from a file', async (t) => {
  const dir = tmpDir(t, 'wslib');
  const { url } = await startNode(t, dir, { token: 'lib-token' });
  const tok = path.join(dir, 'token');
  fs.writeFileSync(tok, 'lib-token', { mode: 0o600 });
  const image = path.join(dir, 'disk.img');
  fs.writeFileSync(image, randomData(512 * 1024, 4));
  // A fresh process that imports only the package entry: nothing else registers the ws:// scheme. A script file,
  // as a user's program is.
  const script = path.join(dir, 'lib.mjs');
  fs.writeFileSync(
    script,
    `
    const { openStore, openSource, replicate, listPoints } = await import(${JSON.stringify(DIST_INDEX)});
    const store = await openStore(${JSON.stringify(url)}, { remote: { tokenFile: ${JSON.stringify(tok)} } });
    const source = await openSource(${JSON.stringify(image)});
    const r = await replicate({ store, source, disk: 'lib' });
    await source.close();
    const points = await listPoints(store, 'lib');
    await store.close();
    console.log(JSON.stringify({ point: r.point, points: points.length }));
  `,
  );
  ensureBuilt();
  const r = await runNode([script]);
  t.equal(r.code, 0, r.stderr);
  t.same(json(r), { point: 1, points: 1 });
});

t.test('a token file that holds no usable token is refused up front, in one line (a 3 MB one crashed the sender)', async (t) => {
  const dir = tmpDir(t, 'badtoken');
  const image = path.join(dir, 'disk.img');
  fs.writeFileSync(image, randomData(64 * 1024, 5));
  const long = path.join(dir, 'long');
  fs.writeFileSync(long, 'x'.repeat(MAX_TOKEN_CHARS + 1), { mode: 0o600 });
  const binary = path.join(dir, 'binary');
  fs.writeFileSync(binary, Buffer.from([0x61, 0x00, 0xff, 0x62]), { mode: 0o600 });
  // Readable by the group: whoever reads the token may write and delete points, so it is refused like a key file.
  const loose = path.join(dir, 'loose');
  fs.writeFileSync(loose, 'a-good-token\n');
  fs.chmodSync(loose, 0o640);
  for (const [file, why] of [
    [long, /characters long, more than the 4096 a token may have/],
    [binary, /holds control characters or bytes that are not UTF-8 text/],
    [image, /RNODE_USAGE/],
    [loose, /RNODE_USAGE: the token file \S+ is readable or writable by group or others \(mode 0640\); restrict it with "chmod 600 /],
  ] as const) {
    const r = await runCli(['replicate', '--source', image, '--target', 'ws://127.0.0.1:1', '--token-file', file]);
    t.equal(r.code, 2, `${path.basename(file)}: exit 2`);
    t.equal(lines(r.stderr).length, 1, `one line: ${r.stderr.slice(0, 300)}`);
    t.match(r.stderr, why);
  }
  const serve = await runCli(['serve', '--listen', '127.0.0.1:0', '--store', path.join(dir, 'store'), '--token-file', loose]);
  t.equal(serve.code, 2, 'serve refuses it before it listens');
  t.match(serve.stderr, /RNODE_USAGE: the token file .* is readable or writable by group or others/);
  t.throws(() => new RemoteStore({ url: 'ws://127.0.0.1:1', token: 'x'.repeat(MAX_TOKEN_CHARS + 1) }), { code: 'RNODE_USAGE' }, 'the library too');
});

// `chmod 644 tls.key; rnode serve --tls-key tls.key` (and `rnode export --tls-key`) started without a word, while a key,
// token or vSphere password file with that mode was refused: whoever reads the TLS key can pose as the node.
t.test('a --tls-key the group or others may read is refused before listening, like a key or token file', async (t) => {
  const dir = tmpDir(t, 'loose-tls-key');
  const cert = path.join(dir, 'tls.crt');
  fs.writeFileSync(cert, '-----BEGIN CERTIFICATE-----\n');
  const key = path.join(dir, 'tls.key');
  fs.writeFileSync(key, '-----BEGIN PRIVATE KEY-----\n');
  const tlsFlags = ['--tls-cert', cert, '--tls-key', key];
  for (const mode of [0o644, 0o640, 0o602]) {
    fs.chmodSync(key, mode);
    for (const args of [
      ['serve', '--listen', '127.0.0.1:0', '--store', path.join(dir, 'store'), ...tlsFlags],
      ['export', '--store', path.join(dir, 'store'), '--disk', 'vm', '--listen', '127.0.0.1:0', ...tlsFlags],
    ]) {
      const r = await runCli(args, { timeoutMs: 30_000 });
      t.equal(r.code, 2, `${args[0]}, mode 0${mode.toString(8)}: exit 2`);
      t.equal(lines(r.stderr).length, 1, `one line: ${r.stderr.slice(0, 300)}`);
      const want = `rnode: RNODE_USAGE: the TLS key file ${key} is readable or writable by group or others (mode 0${mode.toString(8)}); restrict it with "chmod 600 ${key}"`;
      t.equal(r.stderr.trim(), want, 'says what to do');
    }
  }
});

t.test("wss:// to a node without TLS says so in one line (it printed OpenSSL's two-line error and advised --ca)", async (t) => {
  const dir = tmpDir(t, 'plain-tls');
  const { url } = await startNode(t, dir);
  const r = await runCli(['points', '--store', url.replace(/^ws:/, 'wss:'), '--disk', 'd']);
  t.equal(r.code, 1);
  t.equal(lines(r.stderr).length, 1, r.stderr);
  t.match(r.stderr, /RNODE_TRANSPORT_TLS: .* the node answers without TLS .*use ws:\/\//);
});

t.test(
  'ws:// to a node that speaks TLS says to use wss:// (it said "socket hang up" after 5 s of retries)',
  { skip: !haveOpenssl && 'openssl CLI not installed' },
  async (t) => {
    const dir = tmpDir(t, 'tls-plain');
    const { url } = await startNode(t, dir, { tls: selfSignedCert(dir) });
    const plain = url.replace(/^wss:/, 'ws:');
    const r = await runCli(['points', '--store', plain, '--disk', 'd']);
    t.equal(r.code, 1);
    t.equal(lines(r.stderr).length, 1, r.stderr);
    const port = new URL(url).port;
    t.match(r.stderr, new RegExp(`RNODE_TRANSPORT_TLS: the node at ws://127\\.0\\.0\\.1:${port} speaks TLS .*use wss://127\\.0\\.0\\.1:${port}`));
    // A node that is gone is still unreachable, not TLS (the probe finds nothing there).
    const gone = await runCli(['points', '--store', 'ws://127.0.0.1:9', '--disk', 'd']);
    t.match(gone.stderr, /RNODE_TRANSPORT_UNREACHABLE/);
  },
);
