// Objects above one frame (packs of up to 64 MiB) travel as parts of one PUT stream and are stored whole; the node
// charges the whole object to the session's credit at its first part, so a peer that declares huge objects, sends
// parts out of order, or never finishes one cannot make the node hold more than its window.
import t from 'tap';
import net from 'node:net';
import WebSocket from 'ws';
import { RnodeError } from '../../src/errors.js';
import { MemoryStore } from '../../src/store/memory/memory-store.js';
import { decodeFrame, encodeFrame, FrameType, MAX_OBJECT_BYTES, PART_BYTES, TransportErrorCodes } from '../../src/transport/index.js';
import { MiB, tmpDir } from '../helpers/images.js';
import { remote, startNode } from './helpers.js';

/** A JSON object of exactly `size` bytes: the node accepts one as a disk's encryption marker (checked as JSON). */
function bigJson(size: number, seed: number): Buffer {
  const head = `{"seed":${seed},"filler":"`;
  const b = Buffer.alloc(size, 'x');
  b.write(head, 0);
  b.write('"}', size - 2);
  return b;
}

t.test('an object of several parts is stored whole and byte-exact; the window bounds the node', async (t) => {
  const dir = tmpDir(t, 'ws-parts');
  const store = new MemoryStore();
  const window = 48 * MiB;
  const { url, server } = await startNode(t, dir, { store, windowBytes: window });
  const rs = remote(t, url);
  const sizes = [PART_BYTES + 1, 3 * PART_BYTES, 40 * MiB + 12345];
  const objects = sizes.map((n, i) => bigJson(n, i));
  // In parallel: the sender waits for credit between objects, never exceeding the window.
  await Promise.all(objects.map((o, i) => rs.put(`disks/d${i}/encryption.json`, o)));
  for (const [i, o] of objects.entries())
    t.ok((await store.get(`disks/d${i}/encryption.json`)).equals(o), `object ${i} (${o.length} bytes) stored whole`);
  t.ok(server.stats.peakSessionBytes <= window, `node held at most ${server.stats.peakSessionBytes} bytes (window ${window})`);
  t.ok(rs.counters.maxUnackedBytes <= window, 'the sender kept within its credit');
  t.ok(rs.counters.framesSent >= 2 + 3 + 6, 'large objects went as several frames');

  // Reads go back one frame each: a whole object above a frame is refused with a sentence (the session goes on),
  // and read in ranges it comes back whole.
  const bigKey = 'disks/d2/encryption.json';
  // Refused before the node reads it: read whole first, 16 such gets per session took a node to gigabytes.
  const read = store.get.bind(store);
  let bigReads = 0;
  store.get = (key, range, into) => {
    if (key === bigKey && (range?.length ?? Infinity) > PART_BYTES) bigReads++;
    return read(key, range, into);
  };
  await t.rejects(rs.get(bigKey), { message: /read it in ranges/ }, 'a get above one frame is refused');
  await t.rejects(rs.get(bigKey, { offset: 0, length: 40 * MiB }), { message: /read it in ranges/ }, 'and so is a range above one frame');
  t.equal(bigReads, 0, 'neither was read on the node');
  const pieces: Buffer[] = [];
  for (let at = 0; at < objects[2].length; at += PART_BYTES)
    pieces.push(await rs.get(bigKey, { offset: at, length: Math.min(PART_BYTES, objects[2].length - at) }));
  t.ok(Buffer.concat(pieces).equals(objects[2]), 'read in ranges, the object comes back whole on the same session');
  t.equal(rs.counters.connects, 1, 'one session throughout');

  // Bigger than the window: refused by the sender with a sentence that says what to change, nothing sent.
  const small = await startNode(t, tmpDir(t, 'ws-parts-small'), { store: new MemoryStore(), windowBytes: 16 * MiB });
  const rs2 = remote(t, small.url);
  await t.rejects(rs2.put('disks/x/encryption.json', bigJson(20 * MiB, 9)), {
    message: /serve --window.*or --chunk-size when one chunk is that large/,
  });
  t.equal(small.server.stats.protocolErrors, 0, 'the sender did not break the credit rule');
  await t.rejects(rs.put('disks/y/encryption.json', Buffer.alloc(MAX_OBJECT_BYTES + 1)), { message: /exceeds what the receiving node takes/ });
});

t.test("a PUT's fragments reach the socket in one write, not a write each", async (t) => {
  // The sender sends a payload in 16 KiB WebSocket fragments (views on the node, see RemoteStore). Written one by
  // one, each was a writev and a TCP segment of its own (about 30,000 for a 1 GiB disk): the socket stays corked
  // until the last fragment is queued, and node hands them to the kernel in one call.
  const { url } = await startNode(t, tmpDir(t, 'ws-cork'), { store: new MemoryStore() });
  const rs = remote(t, url);
  await rs.put('disks/w/encryption.json', bigJson(1024, 0)); // the session is up
  type Writev = (chunks: unknown[], cb: (err?: Error | null) => void) => void;
  const proto = net.Socket.prototype as unknown as { _writev: Writev };
  const writev = proto._writev;
  const batches: number[] = [];
  proto._writev = function (this: net.Socket, chunks, cb) {
    batches.push(chunks.length);
    return writev.call(this, chunks, cb);
  };
  t.teardown(() => {
    proto._writev = writev;
  });
  const object = bigJson(4 * MiB, 1);
  await rs.put('disks/x/encryption.json', object);
  proto._writev = writev;
  // The object goes in parts (as many as the link's pace gives: one WebSocket message each), each part in one write.
  const fragments = (4 * MiB) / (16 * 1024);
  t.ok(batches.length <= fragments / 16, `${batches.length} writes for ${fragments} fragments (the largest took ${Math.max(0, ...batches)} buffers)`);
  t.ok(Math.max(0, ...batches) >= (256 * 1024) / (16 * 1024), 'a write took at least the fragments of the smallest part');
});

/** A raw authenticated peer: hello, then the given frames; resolves with the node's frames and the close code. */
async function rawSession(url: string, frames: Buffer[]): Promise<{ frames: ReturnType<typeof decodeFrame>[]; closeCode: number }> {
  const ws = new WebSocket(url);
  const got: ReturnType<typeof decodeFrame>[] = [];
  ws.on('message', (b: Buffer) => {
    try {
      got.push(decodeFrame(b));
    } catch {
      /* ignore */
    }
  });
  await new Promise((r, j) => {
    ws.once('open', r);
    ws.once('error', j);
  });
  ws.send(encodeFrame({ type: FrameType.CONTROL, stream: 0, seq: 0, meta: { op: 'hello' } }));
  await new Promise((r) => ws.once('message', r));
  frames.forEach((f, i) => {
    f.writeUInt32LE(i + 1, 12);
    ws.send(f);
  });
  const closeCode = await new Promise<number>((r) => {
    ws.once('close', (c) => r(c));
    setTimeout(() => {
      ws.close(1000);
    }, 1500).unref();
  });
  return { frames: got, closeCode };
}

const part = (stream: number, key: string, total: number, at: number, payload: Buffer) =>
  encodeFrame({ type: FrameType.PUT, stream, seq: 0, meta: { key, total, at }, payload });

t.test('hostile parts are protocol errors; an abandoned object holds only its credit', async (t) => {
  const dir = tmpDir(t, 'ws-parts-hostile');
  const store = new MemoryStore();
  const window = 20 * MiB;
  const { url, server } = await startNode(t, dir, { store, windowBytes: window });
  const key = 'disks/h/encryption.json';
  const cases: Array<[string, Buffer[], RegExp]> = [
    ['an object above the largest', [part(1, key, MAX_OBJECT_BYTES + 1, 0, Buffer.alloc(10))], /exceeds the largest/],
    ['an object above the credit', [part(1, key, window + 1, 0, Buffer.alloc(10))], /exceeds the credit/],
    ['a first part not at 0', [part(1, key, 100, 10, Buffer.alloc(10))], /starts at 10/],
    ['a gap between parts', [part(1, key, 100, 0, Buffer.alloc(10)), part(1, key, 100, 20, Buffer.alloc(10))], /expected 10/],
    ['a part overrunning its object', [part(1, key, 100, 0, Buffer.alloc(90)), part(1, key, 100, 90, Buffer.alloc(20))], /overruns/],
    [
      'a part of another key',
      [part(1, key, 100, 0, Buffer.alloc(10)), part(1, 'disks/z/encryption.json', 100, 10, Buffer.alloc(10))],
      /does not belong/,
    ],
    [
      'at without total',
      [encodeFrame({ type: FrameType.PUT, stream: 1, seq: 0, meta: { key, at: 0 }, payload: Buffer.alloc(10) })],
      /both "total" and "at"/,
    ],
  ];
  for (const [what, frames, why] of cases) {
    const r = await rawSession(url, frames);
    const err = r.frames.find((f) => f.meta.op === 'error');
    t.equal(err?.meta.code, TransportErrorCodes.PROTOCOL, `${what}: protocol error`);
    t.match(String(err?.meta.message), why, what);
    t.equal(r.closeCode, 1002, `${what}: the session is closed`);
  }
  // A peer that starts a 19 MiB object and stops: the node reserved its credit, and allocated nothing beyond it.
  const r = await rawSession(url, [part(1, key, 19 * MiB, 0, Buffer.alloc(1024))]);
  t.equal(r.frames.filter((f) => f.meta.op === 'error').length, 0, 'an unfinished object is no error by itself');
  t.ok(server.stats.peakSessionBytes <= window, `peak ${server.stats.peakSessionBytes} <= window ${window}`);
  await t.rejects(store.head(key), RnodeError, 'nothing of it was stored');
});
