// The node's assembly buffers: reused from one parted object to the next, shared memory (the codec workers read
// packs in place), and no more kept idle than the bound.
import t from 'tap';
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
