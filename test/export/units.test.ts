// Units of the export's data path: the byte-bounded LRU; the chunk cache fetching a chunk once for many concurrent
// readers and staying within its bound; read-ahead on sequential reads only; replies queued on the socket; the lazy
// chunk index agreeing with the sequential chain view on every chunk; option payload decoding that never reads past
// its end.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import t from 'tap';
import { ChunkCache } from '../../src/export/chunk-cache.js';
import { ChunkIndex } from '../../src/export/chunk-index.js';
import { PointImage, type ExportImage } from '../../src/export/image.js';
import { OverlayImage } from '../../src/export/overlay.js';
import { SocketIo } from '../../src/export/io.js';
import { Lru } from '../../src/export/lru.js';
import { decodeGoPayload, decodeMetaPayload } from '../../src/export/wire.js';
import { isZeroEntry } from '../../src/format/table.js';
import { codecWorkers } from '../../src/pipeline/codec-workers.js';
import { loadChain } from '../../src/repository/points.js';
import { chainView } from '../../src/repository/view.js';
import type { ObjectStore } from '../../src/store/index.js';
import { encodeGo, encodeMetaContextQuery } from '../../src/source/nbd/protocol.js';
import { fsStore, randomData, snap, tmpDir, writeAt, writeHoleImage } from '../helpers/images.js';
import { changeDisk, CHUNK, makeDisk, MiB, SIZE } from './helpers.js';

t.teardown(() => codecWorkers().close());

function counting(inner: ObjectStore): ObjectStore & { chunkGets: string[] } {
  const s = Object.assign(Object.create(inner) as ObjectStore, { chunkGets: [] as string[] });
  s.get = async (key, range) => {
    if (key.includes('/packs/')) s.chunkGets.push(key);
    return inner.get(key, range);
  };
  return s as ObjectStore & { chunkGets: string[] };
}

async function twoPointStore(t: Parameters<typeof tmpDir>[0]) {
  const dir = tmpDir(t, 'export-units');
  const store = fsStore(path.join(dir, 'store'));
  const image = path.join(dir, 'disk.img');
  makeDisk(image);
  await snap(store, image, 'vm', { chunkSize: CHUNK, lease: false });
  changeDisk(image);
  await snap(store, image, 'vm', { lease: false });
  return store;
}

/** Names a buffer's memory: cached chunks may be slices of one shared arena, so its ArrayBuffer alone does not. */
const arrayIds = new WeakMap<ArrayBufferLike, number>();
let arrays = 0;
function memoryOf(b: Buffer): string {
  if (!arrayIds.has(b.buffer)) arrayIds.set(b.buffer, arrays++);
  return `${arrayIds.get(b.buffer)}@${b.byteOffset}`;
}

t.test('Lru: bounded by weight, evicts the coldest, refuses what cannot fit', async (t) => {
  const l = new Lru<string, Buffer>(10, (b) => b.length);
  l.set('a', Buffer.alloc(4));
  l.set('b', Buffer.alloc(4));
  l.get('a');
  l.set('c', Buffer.alloc(4));
  t.ok(l.has('a') && l.has('c') && !l.has('b'), 'b was the coldest');
  t.equal(l.weight, 8);
  l.set('big', Buffer.alloc(11));
  t.notOk(l.has('big'), 'larger than the whole cache: not kept');
  t.equal(l.weight, 8);
});

t.test('the lazy index agrees with the chain view on every chunk of both points', async (t) => {
  const store = await twoPointStore(t);
  for (const seq of [1, 2]) {
    const chain = await loadChain(store, 'vm', seq);
    const want = new Map<number, string>();
    for await (const e of chainView(store, chain)) if (!isZeroEntry(e)) want.set(e.index, `${e.writer}/${e.xxh64}`);
    const index = new ChunkIndex(store, chain, 1); // one cached segment: every lookup path is exercised
    for (let i = 0; i < index.chunks; i++) {
      const e = await index.lookup(i);
      if (want.get(i) !== (e ? `${e.writer}/${e.xxh64}` : undefined)) {
        t.fail(`point ${seq} chunk ${i}`);
        return;
      }
    }
    t.pass(`point ${seq}: ${want.size} data chunks of ${index.chunks}, the rest zero`);
  }
});

t.test('one fetch per chunk for concurrent readers; the cache stays within its bound; read-ahead only when sequential', async (t) => {
  const base = await twoPointStore(t);
  const store = counting(base);
  const chain = await loadChain(store, 'vm', 2);
  const cache = new ChunkCache({ store, disk: 'vm', chunkSize: CHUNK, cacheBytes: 4 * CHUNK });
  t.teardown(() => cache.close());
  const index = new ChunkIndex(store, chain);
  const e = (await index.lookup(0))!;
  const got = await Promise.all(Array.from({ length: 20 }, () => cache.get(e, 2)));
  t.equal(store.chunkGets.length, 1, '20 concurrent readers, one store read');
  t.ok(
    got.every((b) => b === got[0]),
    'all share one verified buffer',
  );
  t.equal(cache.stats.misses, 1);
  t.equal(cache.stats.hits, 19);

  const img = new PointImage(index, cache);
  store.chunkGets.length = 0;
  await img.read(5 * CHUNK + 100, 100); // a lone read: no read-ahead
  await new Promise((r) => setTimeout(r, 50));
  t.equal(store.chunkGets.length, 1, 'a random read fetches only its chunk');
  store.chunkGets.length = 0;
  await img.read(6 * CHUNK, 100); // right after the previous one: sequential
  await new Promise((r) => setTimeout(r, 200));
  t.ok(store.chunkGets.length > 1, `a sequential read triggers read-ahead (${store.chunkGets.length} chunk reads)`);
  for (let i = 0; i < SIZE; i += CHUNK) await img.read(i, Math.min(CHUNK, SIZE - i));
  t.ok(cache.stats.cachedBytes <= 4 * CHUNK, `whole disk read, cache holds ${cache.stats.cachedBytes} bytes (bound ${4 * CHUNK})`);
});

// Plaintext buffers are recycled once evicted (a decode into fresh memory cost ~10x the decode on an nbdcopy of
// the export); one still held by a reader must never be reused under it, however many chunks pass through.
t.test('an evicted plaintext buffer is reused only after its readers released it', async (t) => {
  const store = await twoPointStore(t);
  const chain = await loadChain(store, 'vm', 2);
  const cache = new ChunkCache({ store, disk: 'vm', chunkSize: CHUNK, cacheBytes: 2 * CHUNK });
  t.teardown(() => cache.close());
  const img = new PointImage(new ChunkIndex(store, chain), cache);
  const held = await img.read(0, CHUNK);
  const heldBuffer = held[0].data!;
  const copy = Buffer.from(heldBuffer);
  const seen = new Set<string>();
  for (let i = CHUNK; i + CHUNK <= SIZE; i += CHUNK) {
    const pieces = await img.read(i, CHUNK);
    for (const p of pieces) if (p.data) seen.add(memoryOf(p.data));
    img.done(pieces);
  }
  t.ok(heldBuffer.equals(copy), 'a held chunk keeps its bytes while every other chunk passes through the cache');
  t.notOk(seen.has(memoryOf(heldBuffer)), 'its memory was not given to another chunk');
  const chunks = Math.ceil(SIZE / CHUNK) - 1;
  t.ok(seen.size < chunks, `released buffers were reused (${seen.size} buffers for ${chunks} chunks)`);
  img.done(held);
  const after = new Set<string>();
  for (let i = 0; i + CHUNK <= SIZE; i += CHUNK) {
    const pieces = await img.read(i, CHUNK);
    for (const p of pieces) if (p.data) after.add(memoryOf(p.data));
    t.ok(
      pieces.every((p) => !p.data || p.data.length === p.length),
      'pieces cover their ranges',
    );
    img.done(pieces);
  }
  t.ok(after.has(memoryOf(heldBuffer)), 'once released (and evicted), its memory serves other chunks');
});

// A streaming copy (nbdcopy) grew the cache to its bound with fresh memory, and decoding into fresh memory cost the
// export ~2x the CPU: a chunk served whole leaves the cache and its buffer serves the next chunks, while a chunk
// read only in part stays cached for the next read.
t.test('a chunk served whole leaves the cache and its buffer is reused; a chunk read in part stays cached', async (t) => {
  const store = await twoPointStore(t);
  const chain = await loadChain(store, 'vm', 2);
  const cache = new ChunkCache({ store, disk: 'vm', chunkSize: CHUNK, cacheBytes: 2 * SIZE });
  t.teardown(() => cache.close());
  const img = new PointImage(new ChunkIndex(store, chain), cache);
  const buffers = new Set<string>();
  let dataChunks = 0;
  // Two halves per chunk, as a copy with requests smaller than a chunk reads it.
  for (let i = 0; i + CHUNK <= SIZE; i += CHUNK) {
    for (const at of [i, i + CHUNK / 2]) {
      const pieces = await img.read(at, CHUNK / 2);
      for (const p of pieces) if (p.data) buffers.add(memoryOf(p.data));
      if (at === i && pieces.some((p) => p.data)) dataChunks++;
      img.done(pieces);
    }
  }
  // Read-ahead may hold a few chunks no one has read yet; nothing that was served whole stays.
  t.ok(cache.stats.cachedBytes <= 10 * CHUNK, `whole disk streamed through a cache that could hold it all: ${cache.stats.cachedBytes} bytes stay`);
  t.ok(buffers.size < dataChunks / 2, `${buffers.size} buffers served ${dataChunks} data chunks`);

  const part = await img.read(0, 4096);
  img.done(part);
  const misses = cache.stats.misses;
  const again = await img.read(4096, 4096);
  img.done(again);
  t.equal(cache.stats.misses, misses, 'a chunk read in part is still cached');
});

// Random reads that fill the cache, then a streaming copy that retires what it reads, again and again (an export in
// use): the cache's buffers must stay within what it holds at once. The free list used to keep at most 32 MiB, so each
// streaming pass dropped the rest to the GC and the next random reads allocated as many afresh (0.8-1.3 GiB of RSS
// for a 256 MiB cache).
t.test('random reads and streaming copies in turn reuse the cache buffers: none allocated beyond what it holds at once', async (t) => {
  const dir = tmpDir(t, 'export-cycles');
  const store = fsStore(path.join(dir, 'store'));
  const image = path.join(dir, 'disk.img');
  const size = 48 * MiB;
  fs.writeFileSync(image, randomData(size, 11));
  await snap(store, image, 'cyc', { chunkSize: CHUNK, lease: false });
  const chain = await loadChain(store, 'cyc', 1);
  const cacheBytes = 40 * MiB;
  const concurrency = 8;
  const cache = new ChunkCache({ store, disk: 'cyc', chunkSize: CHUNK, cacheBytes, concurrency });
  t.teardown(() => cache.close());
  const img = new PointImage(new ChunkIndex(store, chain), cache);
  const chunks = size / CHUNK;
  for (let cycle = 0; cycle < 3; cycle++) {
    // Random: 4 KiB of every chunk the cache can hold, last first (never sequential: no read-ahead), all kept.
    for (let i = cacheBytes / CHUNK - 1; i >= 0; i--) img.done(await img.read(i * CHUNK + 8192, 4096));
    // Streaming: every chunk read whole, in order.
    for (let i = 0; i < chunks; i++) img.done(await img.read(i * CHUNK, CHUNK));
  }
  const holds = cacheBytes / CHUNK + concurrency;
  t.ok(cache.stats.fetches > 3 * chunks, `${cache.stats.fetches} fetches in 3 cycles`);
  t.ok(
    cache.stats.buffersAllocated <= holds + 2,
    `${cache.stats.buffersAllocated} plaintext buffers allocated; the cache holds ${cacheBytes / CHUNK} chunks and fetches ${concurrency} at once`,
  );
});

// An nbdcopy of the export fetched 6% of its chunks twice and left some cached, unread: read-ahead on behalf of a
// reader that had moved on fetched again chunks already served whole (and retired), and ran past the end of one
// connection's range into the range another connection had already copied.
t.test('two readers streaming adjacent ranges fetch every chunk once and leave nothing cached', async (t) => {
  const store = counting(await twoPointStore(t));
  const chain = await loadChain(store, 'vm', 2);
  const cache = new ChunkCache({ store, disk: 'vm', chunkSize: CHUNK, cacheBytes: 2 * SIZE });
  const index = new ChunkIndex(store, chain);
  const img = new PointImage(index, cache);
  const chunks = Math.ceil(SIZE / CHUNK);
  let dataChunks = 0;
  for (let i = 0; i < chunks; i++) if (await index.lookup(i)) dataChunks++;
  store.chunkGets.length = 0;
  const readChunk = async (i: number) => {
    for (const at of [i * CHUNK, i * CHUNK + CHUNK / 2]) {
      const length = Math.min(CHUNK / 2, SIZE - at);
      if (length > 0) img.done(await img.read(at, length));
    }
  };
  // The second reader starts at the middle and stays ahead; the first then reaches where the second started.
  const half = Math.floor(chunks / 2);
  for (let k = 0; k < half; k++) {
    await readChunk(half + k);
    await readChunk(k);
  }
  for (let i = 2 * half; i < chunks; i++) await readChunk(i);
  await new Promise((r) => setTimeout(r, 100)); // read-ahead started by the last reads
  await cache.close();
  t.equal(cache.stats.fetches, dataChunks, `${dataChunks} data chunks, each fetched once`);
  t.equal(store.chunkGets.length, dataChunks, 'one store read per data chunk');
  t.equal(cache.stats.cachedBytes, 0, 'every chunk was served whole and left the cache');
  t.ok(cache.stats.buffersAllocated < dataChunks / 2, `${cache.stats.buffersAllocated} plaintext buffers for ${dataChunks} chunks`);
});

// A third of a mixed disk's 64 KiB blocks are zeros inside data chunks, and the export pushed every one of their
// bytes through the socket (and the client through its zero detection): they are holes now, the rest data.
t.test('zero 64 KiB blocks inside a data chunk are served as holes, the rest as data', async (t) => {
  const dir = tmpDir(t, 'export-holes');
  const store = fsStore(path.join(dir, 'store'));
  const image = path.join(dir, 'disk.img');
  const MIB = 1024 * 1024;
  writeHoleImage(image, 2 * MIB);
  writeAt(image, 0, randomData(64 * 1024, 3));
  writeAt(image, 192 * 1024, randomData(MIB - 192 * 1024, 4)); // [64 KiB, 192 KiB) stays zero
  writeAt(image, MIB + 100, Buffer.from([1])); // one byte: its whole 64 KiB block is data
  await snap(store, image, 'vm', { chunkSize: MIB, lease: false });
  const cache = new ChunkCache({ store, disk: 'vm', chunkSize: MIB });
  t.teardown(() => cache.close());
  const img = new PointImage(new ChunkIndex(store, await loadChain(store, 'vm', 1)), cache);
  const pieces = await img.read(0, 2 * MIB);
  t.same(
    pieces.map((p) => [p.offset, p.length, !!p.data]),
    [
      [0, 64 * 1024, true],
      [64 * 1024, 128 * 1024, false],
      [192 * 1024, MIB - 192 * 1024, true],
      [MIB, 64 * 1024, true],
      [MIB + 64 * 1024, MIB - 64 * 1024, false],
    ],
  );
  const want = fs.readFileSync(image);
  const got = Buffer.alloc(2 * MIB);
  for (const p of pieces) if (p.data) p.data.copy(got, p.offset);
  t.ok(got.equals(want), 'data pieces and zeros make up the disk');
  img.done(pieces);
  const inner = await img.read(80 * 1024, 8192);
  t.same(
    inner.map((p) => [p.offset, p.length, !!p.data]),
    [[80 * 1024, 8192, false]],
    'a read inside a zero block is one hole',
  );
  img.done(inner);
});

// Each reply waited for the socket's queue to empty before the next was written: the socket idled between replies
// and every part took its own write. Replies now queue up to a bound (4 MiB), and a client that does not read
// still holds no more than that.
t.test('replies queue on the socket up to a bound, arrive whole and in order, and wait once the bound is reached', async (t) => {
  const dir = tmpDir(t, 'export-io');
  const sockPath = path.join(dir, 's.sock');
  const accepted = new Promise<net.Socket>((resolve) => {
    const server = net.createServer(resolve).listen(sockPath);
    t.teardown(() => server.close());
  });
  const client = net.connect(sockPath);
  const io = new SocketIo(await accepted);
  t.teardown(() => {
    io.close();
    client.destroy();
  });
  client.pause(); // reads nothing yet: what the server may queue is what this bound leaves it

  const REPLY = 256 * 1024;
  const sent: boolean[] = [];
  const flushed: number[] = [];
  const writes = Array.from({ length: 64 }, (_, i) => {
    const head = Buffer.alloc(8);
    head.writeUInt32BE(i, 0);
    head.writeUInt32BE(REPLY, 4);
    return io
      .write([head, Buffer.alloc(REPLY, i)], () => flushed.push(i))
      .then(() => {
        sent[i] = true;
      });
  });
  await new Promise((r) => setTimeout(r, 300));
  const early = sent.filter(Boolean).length;
  t.ok(early > 1, `${early} replies counted as sent before the client read anything (more than one)`);
  t.ok(early * REPLY <= 4 * 1024 * 1024 + 2 * REPLY, `no more than about 4 MiB queued for a client that does not read (${early} replies)`);

  let got = Buffer.alloc(0);
  client.on('data', (d: Buffer) => {
    got = Buffer.concat([got, d]);
  });
  client.resume();
  await Promise.all(writes);
  while (got.length < 64 * (8 + REPLY)) await new Promise((r) => setTimeout(r, 20));
  let order = true;
  for (let i = 0; i < 64; i++) {
    const at = i * (8 + REPLY);
    if (got.readUInt32BE(at) !== i || got[at + 8] !== (i & 0xff) || got[at + 8 + REPLY - 1] !== (i & 0xff)) order = false;
  }
  t.ok(order, 'every reply arrived whole and in order');
  t.equal(flushed.length, 64, 'every reply heard that the socket was done with its buffers');
});

t.test('option payloads: counts and lengths are checked against the payload', async (t) => {
  t.same(decodeGoPayload(encodeGo('vm', [3, 1])), { name: 'vm', infos: [3, 1] });
  const go = encodeGo('vm', [3]);
  go.writeUInt32BE(1 << 30, 0);
  t.throws(() => decodeGoPayload(go), { name: 'OptionInvalid' }, 'name length beyond the payload');
  t.throws(() => decodeGoPayload(encodeGo('vm', []).subarray(0, 5)), { name: 'OptionInvalid' }, 'truncated');
  t.same(decodeMetaPayload(encodeMetaContextQuery('', ['base:allocation', 'qemu:'])), { name: '', queries: ['base:allocation', 'qemu:'] });
  t.throws(() => decodeMetaPayload(Buffer.concat([encodeMetaContextQuery('vm', []), Buffer.from([1])])), { name: 'OptionInvalid' }, 'trailing bytes');
});

// A writable export's overlay passed on the base image's pieces, which are pinned in the chunk cache until done(),
// but had no done() of its own: every chunk it ever served stayed pinned, its buffer was never reused, and each fetch
// allocated a new one (a writable export grew by ~230 MB per full read of a 48 MiB disk, read-only ones stayed flat).
t.test('an overlay hands the base pieces of its replies back: reading the disk again reuses the cache buffers', async (t) => {
  const store = await twoPointStore(t);
  const chain = await loadChain(store, 'vm', 2);
  const cache = new ChunkCache({ store, disk: 'vm', chunkSize: CHUNK, cacheBytes: 2 * CHUNK });
  const index = new ChunkIndex(store, chain);
  const base = new PointImage(index, cache);
  const overlay = await OverlayImage.open(path.join(tmpDir(t, 'export-units'), 'vm.overlay'), base, {
    disk: 'vm',
    point: 2,
    size: base.size,
    createdAt: '2026-01-01T00:00:00.000Z',
  });
  await overlay.write(0, Buffer.alloc(4096, 0x5a)); // the first block is the overlay's own, the rest the base's
  const chunks = Math.ceil(SIZE / CHUNK);
  let dataChunks = 0;
  for (let i = 0; i < chunks; i++) if (await index.lookup(i)) dataChunks++;
  for (let pass = 0; pass < 3; pass++) {
    for (let i = 0; i < chunks; i++) {
      const at = i * CHUNK;
      const pieces = await overlay.read(at, Math.min(CHUNK, SIZE - at));
      (overlay as ExportImage).done?.(pieces); // as the transmission does once the reply is sent
    }
  }
  await overlay.close();
  await cache.close();
  t.ok(
    cache.stats.fetches >= 2 * dataChunks,
    `the small cache fetched again on each pass (${cache.stats.fetches} fetches, ${dataChunks} data chunks)`,
  );
  t.ok(
    cache.stats.buffersAllocated < cache.stats.fetches / 4,
    `and reused its buffers: ${cache.stats.buffersAllocated} allocated for ${cache.stats.fetches} fetches`,
  );
});
