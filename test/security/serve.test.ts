// Bugs (issue 10, items 4 and 5): `rnode serve` accepted a peer's PUT of lease.json with expiresAt 2099, after which
// every replicate of that disk, local ones included, failed RNODE_LEASE_HELD for decades; idle raw TCP connections
// that never upgraded were never closed (1,200 held for 45 s+) and one address could open any number of them; a
// GET or list with a path-traversal key ("../x") was answered RNODE_INTERNAL instead of a client error code.
// The node now owns its leases (lease messages, TTL clamped), every lease reader treats an absurd expiry as expired,
// connections must upgrade and say hello within --handshake-timeout, and one address holds at most
// --max-connections-per-address connections. The hygiene tests run the real `rnode serve` binary with those flags.
import t from 'tap';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import WebSocket from 'ws';
import { ErrorCodes } from '../../src/errors.js';
import * as leases from '../../src/repository/lease.js';
import { encodeFrame, FrameType, TransportErrorCodes, decodeFrame } from '../../src/transport/index.js';
import { CLI, ensureBuilt } from '../helpers/cli.js';
import { KiB, expectRestore, fingerprint, fsStore, randomData, snap, stopCodecWorkersAtEnd, tmpDir } from '../helpers/images.js';
import { remote, spawnServe, startNode } from '../transport/helpers.js';

stopCodecWorkersAtEnd(t);

const CHUNK = 64 * KiB;
const FAR = '2099-01-01T00:00:00.000Z';
// Read through the module object so this file also runs (and fails) on builds from before the lease rules.
const { Lease } = leases;
const MAX_LEASE_TTL_MS: number = ((leases as Record<string, unknown>).MAX_LEASE_TTL_MS as number) ?? 10 * 60_000;

t.test('a peer cannot write, delete or read a lease object; it leases through the node, with a clamped TTL', async (t) => {
  const dir = tmpDir(t, 'sec-lease-ws');
  const { url, storeDir } = await startNode(t, dir);
  const rs = remote(t, url);
  const key = 'disks/d/lease.json';
  const forged = { format: 'rnode-lease', disk: 'd', holder: 'attacker/1/x', token: 1, acquiredAt: new Date().toISOString(), expiresAt: FAR };
  await t.rejects(
    rs.put(key, Buffer.from(JSON.stringify(forged)), { ifNoneMatch: true }),
    { code: TransportErrorCodes.REJECTED, message: /leases are not written/ },
    'PUT of lease.json with expiresAt 2099 refused with a client error',
  );
  t.notOk(fs.existsSync(path.join(storeDir, key)), 'nothing stored');
  await t.rejects(rs.delete(key), { code: TransportErrorCodes.REJECTED }, 'DELETE of lease.json refused');

  // Replicate through the peer takes the lease with lease messages; the node writes the record.
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, randomData(8 * CHUNK, 3));
  t.match(await snap(rs, img, 'd', { chunkSize: CHUNK }), { point: 1 }, 'replicate over ws leases through the node');
  const rec = JSON.parse(fs.readFileSync(path.join(storeDir, key), 'utf8'));
  t.equal(Date.parse(rec.expiresAt), 0, 'released (expired, kept for the fencing token)');
  await t.rejects(rs.get(key), { code: TransportErrorCodes.REJECTED }, 'a peer cannot read lease records (holder ids)');

  // A TTL asked far beyond the limit is clamped by the node.
  const grant = await rs.leases.acquire('d', 'peer-a/1/aa', 3600_000 * 24 * 365);
  t.equal(Date.parse(grant.expiresAt) - Date.parse(grant.renewedAt!), MAX_LEASE_TTL_MS, `TTL clamped to ${MAX_LEASE_TTL_MS / 60000} min`);
  t.equal(grant.token, rec.token + 1, 'the fencing token grows');
  await t.rejects(Lease.acquire(rs, 'd', { holder: 'peer-b' }), { code: ErrorCodes.LEASE_HELD }, 'another peer waits for it');
  await rs.leases.release(grant);
  const b = await Lease.acquire(rs, 'd', { holder: 'peer-b' });
  t.equal(b.token, grant.token + 1, 'released: the next peer takes it');
  await b.release();
});

t.test('a lease written into a store with expiresAt 2099 does not block a later replicate', async (t) => {
  const dir = tmpDir(t, 'sec-lease-far');
  const storeDir = path.join(dir, 'store');
  const store = fsStore(storeDir);
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, randomData(8 * CHUNK, 4));
  await snap(store, img, 'd', { chunkSize: CHUNK });
  const file = path.join(storeDir, 'disks', 'd', 'lease.json');
  const now = new Date().toISOString();
  fs.writeFileSync(file, JSON.stringify({ format: 'rnode-lease', disk: 'd', holder: 'elsewhere/1/x', token: 99, acquiredAt: now, expiresAt: FAR }));
  const r = await snap(store, img, 'd', { lease: { waitMs: 0 } });
  t.match(r, { point: 2 }, 'replicate took the disk: an expiry beyond the maximum TTL counts as expired');
  t.equal(JSON.parse(fs.readFileSync(file, 'utf8')).token, 100, 'and its lease carries the next fencing token');
  // The same record renewed a minute ago with a 2099 expiry is absurd too; one with a sane TTL still binds.
  fs.writeFileSync(
    file,
    JSON.stringify({
      format: 'rnode-lease',
      disk: 'd',
      holder: 'elsewhere/1/x',
      token: 101,
      acquiredAt: now,
      renewedAt: now,
      expiresAt: new Date(Date.now() + 60_000).toISOString(),
    }),
  );
  await t.rejects(snap(store, img, 'd', { lease: { waitMs: 0 } }), { code: ErrorCodes.LEASE_HELD }, 'a live lease within the TTL rules still holds');
  await expectRestore(t, store, 'd', 2, fingerprint(img), dir, 'point 2');
});

t.test('GET, HEAD and list with a path-traversal key are refused with a client error code', async (t) => {
  const dir = tmpDir(t, 'sec-traversal');
  const { url } = await startNode(t, dir);
  fs.writeFileSync(path.join(dir, 'secret.txt'), 'outside the store');
  const ws = new WebSocket(url);
  const replies = new Map<number, Record<string, unknown>>();
  ws.on('message', (b: Buffer) => {
    const f = decodeFrame(b);
    replies.set(f.stream, f.meta);
  });
  await new Promise((r, j) => {
    ws.once('open', r);
    ws.once('error', j);
  });
  let seq = 0;
  const send = (stream: number, meta: Record<string, unknown>) => ws.send(encodeFrame({ type: FrameType.CONTROL, stream, seq: seq++, meta }));
  send(0, { op: 'hello' });
  send(1, { op: 'get', key: '../secret.txt' });
  send(2, { op: 'head', key: 'disks/../../secret.txt' });
  send(3, { op: 'list', prefix: '../' });
  send(4, { op: 'get', key: 'a\\..\\b' });
  const t0 = Date.now();
  while (replies.size < 5 && Date.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 20));
  for (const s of [1, 2, 3, 4]) {
    t.equal(replies.get(s)?.code, TransportErrorCodes.REJECTED, `request ${s}: ${String(replies.get(s)?.message)}`);
  }
  ws.terminate();
});

/** Resolves when sock is closed by the other end (or after ms), with how long it took. */
function closedWithin(sock: net.Socket, ms: number): Promise<number> {
  const t0 = Date.now();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      resolve(Date.now() - t0);
    };
    const timer = setTimeout(() => resolve(Infinity), ms);
    sock.once('close', done);
    sock.on('error', () => undefined);
  });
}

function connect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => resolve(s));
    s.once('error', reject);
  });
}

t.test('rnode serve closes connections that never upgrade and caps connections per address', async (t) => {
  ensureBuilt();
  const dir = tmpDir(t, 'sec-hygiene');
  const { url } = await spawnServe(t, CLI, [
    '--listen',
    '127.0.0.1:0',
    '--store',
    path.join(dir, 'store'),
    '--handshake-timeout',
    '1',
    '--max-connections-per-address',
    '4',
  ]);
  const port = Number(new URL(url).port);

  // Raw TCP sockets that send nothing, and one that sends half an HTTP request: all closed within the timeout.
  const idle = await Promise.all([connect(port), connect(port), connect(port)]);
  idle[2].write('GET /rnode HTTP/1.1\r\nHost: x\r\n');
  const waits = await Promise.all(idle.map((s) => closedWithin(s, 5000)));
  for (const [i, ms] of waits.entries()) t.ok(ms < 3000, `idle connection ${i} closed after ${ms} ms (timeout 1 s)`);

  // Four open connections from 127.0.0.1 are the cap: the fifth is refused at once with a 503 naming the flag.
  const held = await Promise.all([1, 2, 3, 4].map(() => connect(port)));
  const fifth = await connect(port);
  let answer = '';
  fifth.on('data', (b: Buffer) => {
    answer += b.toString();
  });
  const refusedMs = await closedWithin(fifth, 3000);
  t.ok(refusedMs < 900, `the fifth connection was closed after ${refusedMs} ms, before the handshake timeout`);
  t.match(answer, /503[\s\S]*RNODE_TRANSPORT_BUSY[\s\S]*--max-connections-per-address/, 'and told why');
  for (const s of held) s.destroy();
  await new Promise((r) => setTimeout(r, 200));

  // Once they are gone a real peer connects and works.
  const rs = remote(t, url);
  t.same([...(await collectKeys(rs))], [], 'a peer is served again');
});

t.test('a client refused by the per-address cap says the node is busy and names the flag (it said unreachable)', async (t) => {
  ensureBuilt();
  const dir = tmpDir(t, 'sec-cap-client');
  const { url } = await spawnServe(t, CLI, ['--listen', '127.0.0.1:0', '--store', path.join(dir, 'store'), '--max-connections-per-address', '1']);
  const held = await connect(Number(new URL(url).port));
  t.teardown(() => held.destroy());
  const rs = remote(t, url, { initialBudgetMs: 300 });
  await t.rejects(
    collectKeys(rs),
    {
      code: TransportErrorCodes.BUSY,
      message: /refused the connection: 1 connections from 127\.0\.0\.1 already open .*--max-connections-per-address where the node runs/,
    },
    'busy, retried within the connect budget, then named',
  );
});

async function collectKeys(rs: ReturnType<typeof remote>): Promise<string[]> {
  const out: string[] = [];
  for await (const o of rs.list('disks/')) out.push(o.key);
  return out;
}

t.test('the node upgrades only at /rnode (and /), and a client refuses a store URL with a path (it chose nothing)', async (t) => {
  const dir = tmpDir(t, 'sec-path');
  const { url } = await startNode(t, dir);
  const status = (p: string) =>
    new Promise<number>((resolve, reject) => {
      const ws = new WebSocket(`${url}${p}`);
      ws.on('unexpected-response', (_req, res) => {
        resolve(res.statusCode ?? 0);
        ws.terminate();
      });
      ws.on('open', () => {
        resolve(101);
        ws.terminate();
      });
      ws.on('error', reject);
    });
  t.equal(await status('/rnode'), 101, 'the protocol path upgrades');
  t.equal(await status('/'), 101, 'and so does the root, the URL serve prints');
  t.equal(await status('/other'), 404, 'another path is refused');
  t.equal(await status('/rnode/x?y'), 404, 'so is one below it');
  for (const extra of ['/store-b', '/?prefix=x', '/#frag']) {
    t.throws(() => remote(t, `${url}${extra}`), { code: ErrorCodes.BAD_STORE_URL, message: /names a path, query or fragment/ }, extra);
  }
  t.doesNotThrow(() => remote(t, `${url}/`), 'a bare trailing slash is the same location');
});
