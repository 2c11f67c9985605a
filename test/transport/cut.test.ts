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
  // Each connection carries at most ~2 MB: the point needs several, and each one still completes a whole pack (a
  // connection shorter than a pack would re-send that pack for ever).
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
