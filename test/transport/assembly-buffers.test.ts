// The node's assembly buffers: reused from one parted object to the next, shared memory (the codec workers read
// packs in place), page-aligned (the fs store writes them with O_DIRECT), and no more kept idle than the bound.
import t from 'tap';
import { addressAligned } from '../../src/native/index.js';
import { AssemblyBuffers } from '../../src/transport/assembly-buffers.js';

const MiB = 1024 * 1024;

t.test('a given-back buffer is reused for the next object that fits, in shared memory', async (t) => {
  const pool = new AssemblyBuffers(16 * MiB);
  const a = pool.take(8 * MiB + 100);
  t.equal(a.length, 8 * MiB + 100, 'exactly the bytes asked for');
  t.ok(a.buffer instanceof SharedArrayBuffer, 'shared memory');
  pool.give(a);
  const b = pool.take(8 * MiB + 5000);
  t.equal(b.buffer, a.buffer, 'the same memory again');
  t.equal(b.length, 8 * MiB + 5000);
  const c = pool.take(8 * MiB);
  t.not(c.buffer, a.buffer, 'a buffer in use is never handed out twice');
  const d = pool.take(20 * MiB);
  t.equal(d.length, 20 * MiB, 'larger than anything idle: a new one');
});

t.test('no more than maxIdleBytes are kept between objects', async (t) => {
  const pool = new AssemblyBuffers(10 * MiB);
  const a = pool.take(9 * MiB);
  const b = pool.take(9 * MiB);
  pool.give(a);
  pool.give(b); // over the bound: dropped
  t.equal(pool.take(9 * MiB).buffer, a.buffer, 'the first one was kept');
  t.not(pool.take(9 * MiB).buffer, b.buffer, 'the second one was not');
});

// Unaligned, the fs store's write of a received pack went through the page cache: 0.9 s of a node's CPU for 258 MB.
t.test('buffers start on a page boundary, new or reused, large or small', async (t) => {
  const pool = new AssemblyBuffers(64 * MiB);
  const taken = [8 * MiB - 3000, 1 * MiB + 17, 70 * 1024, 5000].map((n) => pool.take(n));
  for (const b of taken) t.ok(addressAligned(b, 4096), `${b.length} bytes: page-aligned`);
  for (const b of taken) pool.give(b);
  const again = pool.take(8 * MiB - 100);
  t.equal(again.buffer, taken[0].buffer, 'the pack-sized one is reused');
  t.ok(addressAligned(again, 4096), 'still aligned');
  t.equal(pool.take(60 * 1024).buffer, taken[2].buffer, 'a small object gets the smallest idle buffer that fits, not the pack-sized one');
});
