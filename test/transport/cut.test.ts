// Regression: a connection cut mid-point under back-pressure must not restart the point nor lose a chunk.
// A TCP proxy cuts the sender's connection after N bytes, for ten N spread over the transfer (and once cutting
// every connection): the RemoteStore reconnects, re-sends only the unacknowledged requests (at most one credit
// window of PUT bytes), and every point restores byte-exact from the node's own directory.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { verify } from '../../src/jobs/verify.js';
import { KiB, MiB, expectRestore, fingerprint, fsStore, randomData, snap, textData, tmpDir, writeAt } from '../helpers/images.js';
import { cuttingProxy, remote, startNode } from './helpers.js';
import type { ObjectStore } from '../../src/store/types.js';

const CHUNK = 64 * KiB;
// Packs of at most 1 MiB (the smallest pack size): the window holds one with room to spare.
const PACK = MiB;
const WINDOW = 2 * MiB;

function image(dir: string): string {
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, Buffer.concat([randomData(2 * MiB, 11), textData(MiB, 12)]));
  return img;
}

t.test('a cut after N bytes, for ten N over the whole transfer', async (t) => {
  // Measure the bytes an uncut point sends, then cut at fractions of it: from the hello to the commit.
  const dir0 = tmpDir(t, 'ws-cut0');
  const node0 = await startNode(t, dir0, { windowBytes: WINDOW });
  const proxy0 = await cuttingProxy(t, node0.server.port, () => undefined);
  await snap(remote(t, `ws://127.0.0.1:${proxy0.port}`), image(dir0), 'd', { chunkSize: CHUNK, checkpointRecords: 8, packSize: PACK });
  const total = proxy0.bytes;
  t.comment(`an uncut point sends ${total} bytes`);
  const cuts = [0.00005, 0.01, 0.08, 0.2, 0.35, 0.5, 0.65, 0.8, 0.92, 0.995].map((f) => Math.max(30, Math.round(f * total)));
  for (const n of cuts) {
    await t.test(`cut after ${n} bytes`, async (t) => {
      const dir = tmpDir(t, 'ws-cut');
      const img = image(dir);
      const fp = fingerprint(img);
      const { server, storeDir } = await startNode(t, dir, { windowBytes: WINDOW });
      const proxy = await cuttingProxy(t, server.port, (c) => (c === 0 ? n : undefined));
      const rs = remote(t, `ws://127.0.0.1:${proxy.port}`);
      const r = await snap(rs, img, 'd', { chunkSize: CHUNK, checkpointRecords: 8, packSize: PACK });
      t.equal(r.point, 1);
      t.equal(proxy.cuts, 1, 'the connection was cut once');
      t.ok(rs.counters.connects >= 2 || n < 300, `reconnected (${rs.counters.connects} sessions)`);
      t.ok(rs.counters.resentBytes <= WINDOW, `re-sent ${rs.counters.resentBytes} bytes <= one window (${WINDOW})`);
      t.ok(rs.counters.maxUnackedBytes <= WINDOW, `unacknowledged bytes peaked at ${rs.counters.maxUnackedBytes} <= window`);
      t.ok(server.stats.peakSessionBytes <= WINDOW, 'the node never held more than the window');
      await expectRestore(t, fsStore(storeDir), 'd', 1, fp, dir, `point after a cut at ${n}`);
    });
  }
});

t.test('every connection cut: the point still completes, an incremental too', async (t) => {
  const dir = tmpDir(t, 'ws-cut-all');
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, Buffer.concat([randomData(4 * MiB, 13), textData(MiB, 14)]));
  const fp1 = fingerprint(img);
  const { server, storeDir } = await startNode(t, dir, { windowBytes: WINDOW });
  // Each connection carries at most ~2 MB, less than the window: the point needs several. Each one still completes a
  // whole pack (a connection shorter than a pack would re-send that pack for ever): the acks its cut loses come back
  // in the next welcome (resume), so the same window is not re-sent on every connection.
  const proxy = await cuttingProxy(t, server.port, () => 2_000_000);
  const rs = remote(t, `ws://127.0.0.1:${proxy.port}`);
  await snap(rs, img, 'd', { chunkSize: CHUNK, checkpointRecords: 8, packSize: PACK });
  t.ok(proxy.cuts >= 2, `cut ${proxy.cuts} times`);
  t.ok(rs.counters.resentBytes <= proxy.cuts * WINDOW, `re-sent ${rs.counters.resentBytes} bytes <= one window per cut`);
  for (const i of [1, 9, 30, 47]) writeAt(img, i * CHUNK, randomData(4096, 100 + i));
  const fp2 = fingerprint(img);
  const r2 = await snap(rs, img, 'd', { checkpointRecords: 8, packSize: PACK });
  t.equal(r2.full, false);
  const local = fsStore(storeDir);
  await expectRestore(t, local, 'd', 1, fp1, dir);
  await expectRestore(t, local, 'd', 2, fp2, dir);
  t.equal((await verify({ store: rs, disk: 'd', point: 'all' })).ok, true, 'verify over the (still cutting) link');
});

async function slowNode(
  t: Parameters<typeof startNode>[0],
  dir: string,
): Promise<{ server: Awaited<ReturnType<typeof startNode>>['server']; fast: ObjectStore; packPuts: Map<string, number> }> {
  const fast = fsStore(path.join(dir, 'recv'));
  // Every pack the node stores, by key: a resume that re-sent what the node had stored stores that pack twice.
  const packPuts = new Map<string, number>();
  const slow: ObjectStore = Object.assign(Object.create(fast) as ObjectStore, {
    put: async (...a: Parameters<ObjectStore['put']>) => {
      await new Promise((r) => setTimeout(r, 250));
      const info = await fast.put(...a);
      if (a[0].includes('/packs/')) packPuts.set(a[0], (packPuts.get(a[0]) ?? 0) + 1);
      return info;
    },
  });
  const { server } = await startNode(t, dir, { windowBytes: WINDOW, store: slow });
  return { server, fast, packPuts };
}

t.test('a link cut before any ack comes back, to a slow store: the acks lost come back with the resume', async (t) => {
  // The node takes 250 ms to store each object; each connection carries 1.5 MB, more than a pack, less than the
  // window. Every cut comes before the node answers the pack it received whole: re-sending all unacknowledged PUTs
  // on the next connection would be cut the same way, for ever. The resumed session's welcome says which it stored.
  const dir = tmpDir(t, 'ws-cut-slow');
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, randomData(6 * MiB, 21));
  const fp = fingerprint(img);
  const { server, fast } = await slowNode(t, dir);
  // The first three connections go at the node's first ack whatever the timing (a slow client could otherwise hear
  // every ack before its 1.5 MB): their resumes have stored PUTs to hand over.
  const proxy = await cuttingProxy(t, server.port, () => 1_500_000, { cutAtAck: (c) => c < 3 });
  const rs = remote(t, `ws://127.0.0.1:${proxy.port}`);
  await snap(rs, img, 'd', { chunkSize: CHUNK, checkpointRecords: 8, packSize: PACK });
  t.ok(proxy.cuts >= 3, `cut ${proxy.cuts} times`);
  t.ok(rs.counters.resumedPuts >= 1, `${rs.counters.resumedPuts} PUTs settled by a resumed session's welcome`);
  // At most the object being received when the link went: one pack (and its frame heads) per cut.
  t.ok(
    rs.counters.resentBytes <= proxy.cuts * (PACK + 64 * KiB),
    `re-sent ${rs.counters.resentBytes} bytes over ${proxy.cuts} cuts: at most one pack each`,
  );
  await expectRestore(t, fast, 'd', 1, fp, dir);
});

t.test('a resume of a session the node still holds open: the node cuts it and hands over what it stored', async (t) => {
  // The link goes on the client's side only, as the node's first ack is on its way (so the node has stored a PUT
  // the client did not hear of): the node sees its old session alive (no FIN, no RST) when the client comes back.
  // The resume names it; the node closes it and answers with its acks.
  const dir = tmpDir(t, 'ws-cut-halfdead');
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, randomData(3 * MiB, 22));
  const fp = fingerprint(img);
  const { server, fast, packPuts } = await slowNode(t, dir);
  const proxy = await cuttingProxy(t, server.port, () => undefined, { halfDead: true, cutAtAck: (c) => c === 0 });
  const rs = remote(t, `ws://127.0.0.1:${proxy.port}`);
  await snap(rs, img, 'd', { chunkSize: CHUNK, checkpointRecords: 8, packSize: PACK });
  t.equal(proxy.cuts, 1);
  t.ok(rs.counters.resumedPuts >= 1, `${rs.counters.resumedPuts} PUTs settled by the resume`);
  // Re-sent: the PUT cut short and those the client wrote after it into the dead link (its socket buffers), never
  // more than the window; a PUT the node had received whole is in the welcome, so no pack is stored twice. (Bounded by
  // one pack when packs closed at every checkpoint; a client that encodes further ahead fills its packs past them.)
  t.ok(rs.counters.resentBytes <= WINDOW, `re-sent ${rs.counters.resentBytes} bytes: at most what was in flight`);
  t.ok(packPuts.size > 0, `the node stored ${packPuts.size} packs`);
  t.same(
    [...packPuts].filter(([, n]) => n > 1),
    [],
    `each of the ${packPuts.size} packs was stored once: nothing the node stored was sent again`,
  );
  t.equal(server.stats.sessions, 1, 'the half-dead session was closed by the resume');
  await expectRestore(t, fast, 'd', 1, fp, dir);
});

// Regression: a link cut before any request is answered, every time (a proxy that drops each connection after less
// than a pack), reconnected at once after every cut: each session counted as the end of an outage, with a new budget,
// and the same pack was re-sent for ever (42,000 reconnects in 10 minutes; SIGTERM waited on that pack too). Once no
// request has been answered for the reconnect budget, the requests fail.
t.test('every connection cut before an answer: the requests fail after the reconnect budget, not for ever', async (t) => {
  const dir = tmpDir(t, 'ws-cut-never-answered');
  const { server } = await startNode(t, dir, { windowBytes: WINDOW });
  const proxy = await cuttingProxy(t, server.port, () => 200_000);
  const rs = remote(t, `ws://127.0.0.1:${proxy.port}`, { reconnectBudgetMs: 1500 });
  await t.rejects(rs.put('disks/d/encryption.json', Buffer.alloc(MiB, 0x20)), {
    code: 'RNODE_TRANSPORT_UNREACHABLE',
    message: /was cut again and again before it answered a request .*check the network path/,
  });
  t.ok(proxy.cuts >= 2, `cut ${proxy.cuts} times before the sender gave up`);
});
