// The bandwidth throttle: the token bucket never passes its rate (+5%) whatever the frame sizes (frames larger
// than the burst included), and the sender-side limit (src/store/wrap.ts) paces a real replicate over ws://.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { wrapStore } from '../../src/store/index.js';
import { TokenBucket } from '../../src/transport/index.js';
import { KiB, MiB, randomData, snap, tmpDir } from '../helpers/images.js';
import { remote, startNode } from './helpers.js';

t.test('token bucket: 2 MB/s over mixed frame sizes', async (t) => {
  const rate = 2_000_000;
  const bucket = new TokenBucket(rate);
  const sizes = [64 * KiB, 200 * KiB, 300, 1 * MiB, 10, 64 * KiB];
  let total = 0;
  const t0 = performance.now();
  for (let i = 0; total < 2 * rate; i++) {
    const n = sizes[i % sizes.length];
    await bucket.take(n);
    total += n;
  }
  // A take is granted once the earlier ones are paid for: one more (empty) take waits for the last frame's bill.
  await bucket.take(0);
  const seconds = (performance.now() - t0) / 1000;
  const measured = total / seconds;
  t.comment(`${total} bytes in ${seconds.toFixed(2)} s: ${(measured / 1e6).toFixed(3)} MB/s`);
  t.ok(measured <= rate * 1.05, `never faster than the rate (+5%): ${(measured / 1e6).toFixed(3)} MB/s`);
  // Not much slower either, but loosely: a wake-up later than the 100 ms the bucket banks is lost for good (by design:
  // a stalled sender does not burst), and a busy CI machine stalls this process (1.824 MB/s seen under load, 0.91x).
  // bench/ws.ts holds the steady rate to 5% on a quiet machine.
  t.ok(measured >= rate * 0.75, `not much slower than the rate: ${(measured / 1e6).toFixed(3)} MB/s`);
});

t.test('replicate --bandwidth over ws://: the puts to a RemoteStore paced at 4 MB/s (the limit every target takes)', async (t) => {
  const dir = tmpDir(t, 'ws-throttle');
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, randomData(6 * MiB, 9));
  const { url } = await startNode(t, dir);
  const rs = remote(t, url);
  const t0 = performance.now();
  await snap(wrapStore(rs, { bandwidth: 4_000_000 }), img, 'd', { chunkSize: 64 * KiB });
  const seconds = (performance.now() - t0) / 1000;
  const rate = rs.counters.bytesSent / seconds;
  t.comment(`${rs.counters.bytesSent} wire bytes in ${seconds.toFixed(2)} s: ${(rate / 1e6).toFixed(2)} MB/s`);
  t.ok(rate <= 4_000_000 * 1.05, 'never faster than the setting (+5%)');
  // No lower bound here: setup round trips count and a busy CI machine can starve either end; bench/ws.ts
  // measures the steady-state rate against the setting (within 5%).
});

// Regression: serve --bandwidth charged a whole object once it had arrived and held back its ack, so the peer's
// bytes came in at full speed, a window ahead of the rate (1.15x of the setting on the wire, one 8 MiB pack at a
// time). The node now pays for bytes as it reads them and stops reading until they are paid: at no moment does it
// hold more than the object arriving and the one being checked.
t.test("serve --bandwidth: the node reads a peer's bytes at its rate, not a window ahead", async (t) => {
  const dir = tmpDir(t, 'ws-node-throttle');
  const rate = 2_000_000;
  const arrived: Array<{ at: number; bytes: number }> = [];
  const node = await startNode(t, dir, { bandwidth: rate });
  const checks = node.server.checks;
  const checkPut = checks.checkPut.bind(checks);
  checks.checkPut = async (p) => {
    arrived.push({ at: performance.now(), bytes: p.data.length });
    return checkPut(p);
  };
  const rs = remote(t, node.url);
  await rs.head('x/none').catch(() => undefined); // connected: the session's setup is not timed
  const objects = 6;
  const t0 = performance.now();
  // Objects the node refuses (no rnode key): they arrive, are charged and checked, and come back with their credit.
  const puts = await Promise.allSettled(Array.from({ length: objects }, (_, i) => rs.put(`x/${i}`, randomData(1 * MiB, 20 + i))));
  t.equal(puts.filter((p) => p.status === 'rejected').length, objects, 'every object reached the checks and was refused');
  t.equal(arrived.length, objects);
  const peak = node.server.stats.peakSessionBytes;
  t.comment(`peak held ${peak} bytes; last object checked after ${((arrived[objects - 1].at - t0) / 1000).toFixed(2)} s`);
  t.ok(peak <= 2 * MiB + 64 * KiB, `the node held at most two objects at once (${peak} bytes), not the credit window`);
  // Paid as they arrive: all but the burst (100 ms) must have waited for the rate.
  const minSeconds = ((objects * MiB) / rate - 0.1) * 0.95;
  t.ok((arrived[objects - 1].at - t0) / 1000 >= minSeconds, `the bytes took at least ${minSeconds.toFixed(2)} s at ${rate} B/s`);
});

t.test('serve --bandwidth: control requests pass free, so a slow node still answers leases and heads', async (t) => {
  const dir = tmpDir(t, 'ws-node-throttle-control');
  // 1000 B/s: 40 head requests (~110 bytes each) would take over 4 s if they were charged.
  const { url } = await startNode(t, dir, { bandwidth: 1000 });
  const rs = remote(t, url);
  const t0 = performance.now();
  for (let i = 0; i < 40; i++) await rs.head(`x/${i}`).catch(() => undefined);
  const seconds = (performance.now() - t0) / 1000;
  t.comment(`40 heads in ${seconds.toFixed(2)} s`);
  t.ok(seconds < 2, `not paced by the 1000 B/s limit (${seconds.toFixed(2)} s)`);
});

// A slow link (here a node paced to 500 kB/s) answers a ping only after the megabytes queued before it. The sender
// judged the link dead when its own buffer had not shrunk for two beats, but a PUT's fragments are one corked write
// that ends only once all of it is in the kernel: it dropped a working connection every 20 s and sent the same pack
// again, for ever (below ~100 kB/s with the default beat), then failed blaming a proxy. Bytes handed to the kernel,
// and acknowledged by the peer, count as the link being there.
t.test('a link slower than two heartbeats per PUT is kept: bytes moving toward the node count as heard', async (t) => {
  const dir = tmpDir(t, 'ws-slow-link');
  const { url } = await startNode(t, dir, { bandwidth: 500_000 });
  const rs = remote(t, url, { heartbeatMs: 1000, reconnectBudgetMs: 5000 });
  await rs.head('x/none').catch(() => undefined);
  const t0 = performance.now();
  const err = await rs.put('x/slow', randomData(4 * MiB, 31)).then(
    () => undefined,
    (e: unknown) => e as { code?: string },
  );
  const seconds = (performance.now() - t0) / 1000;
  t.comment(`4 MiB over a 500 kB/s node in ${seconds.toFixed(1)} s, heartbeat 1 s`);
  // The node refuses it (no rnode object): an answer, after the whole object crossed.
  t.equal(err?.code, 'RNODE_TRANSPORT_REJECTED', 'the put was answered');
  t.equal(rs.counters.connects, 1, 'on the one connection it was sent on');
  t.equal(rs.counters.resentFrames, 0, 'nothing was sent twice');
});

// A lease renewal went out behind every PUT byte queued before it: a whole pack handed to the socket at once (its
// parts back to back) and 4 MiB more, minutes on a slow link while the lease ran out (TTL 60 s; measured at 100 kB/s:
// the renewal left 2 min after the lease was taken). Requests other than PUTs now pass the PUTs' bytes not yet handed
// to the socket, a parted PUT goes a part at a time, and what waits toward the node follows the link's rate.
t.test('a lease renewal passes the PUT bytes queued before it on a slow link', async (t) => {
  const dir = tmpDir(t, 'ws-slow-renew');
  const rate = 4_000_000;
  const node = await startNode(t, dir, { bandwidth: rate });
  let arrived = 0;
  const checks = node.server.checks;
  const checkPut = checks.checkPut.bind(checks);
  checks.checkPut = async (p) => {
    arrived = performance.now();
    return checkPut(p);
  };
  const rs = remote(t, node.url);
  const lease = await rs.leases.acquire('d', 'writer', 60_000);
  const size = 16 * MiB;
  const data = randomData(size, 41);
  const t0 = performance.now();
  // Refused once it has arrived (no rnode key): the node reads all of it at its rate first.
  const put = rs.put('x/pack', data).catch(() => undefined);
  await new Promise((r) => setTimeout(r, 500));
  await rs.leases.renew(lease, 60_000);
  const renewed = performance.now();
  await put;
  t.comment(
    `renewed after ${((renewed - t0) / 1000).toFixed(2)} s; the ${size / MiB} MiB object arrived after ${((arrived - t0) / 1000).toFixed(2)} s`,
  );
  t.ok(arrived > 0, 'the object reached the node');
  t.ok(renewed < arrived, 'the renewal was answered before the object queued ahead of it had arrived');
});

// A stop on a slow link waited for every pack already read to cross it: the source fit in the write budget, so nothing
// listened for the signal once it was read, and the packs queued in the transport were sent anyway; the run then
// committed and exited 0 (33 s at 1 MB/s, minutes slower). Now the packs still queued are dropped and the run stops.
t.test('a stop on a slow link drops the packs still queued for it and stops the run', async (t) => {
  const dir = tmpDir(t, 'ws-slow-stop');
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, randomData(24 * MiB, 51));
  const { url } = await startNode(t, dir, { bandwidth: 1_000_000 });
  const rs = remote(t, url);
  const stop = new AbortController();
  const run = snap(rs, img, 'd', { packSize: 4 * MiB, signal: stop.signal, lease: false }).then(
    () => 'committed',
    (e: { code?: string }) => e.code,
  );
  // Once the first pack is on its way: the source (24 MiB) is read within the write budget, its packs wait for the link.
  while (rs.counters.bytesSent < 2 * MiB) await new Promise((r) => setTimeout(r, 20));
  stop.abort();
  t.equal(await run, 'RNODE_CANCELLED', 'the run stopped');
  t.ok(rs.counters.bytesSent < 12 * MiB, `the packs still queued were not sent (${rs.counters.bytesSent} bytes sent of 24 MiB)`);
});
