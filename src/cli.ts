#!/usr/bin/env -S node --max-semi-space-size=2
// The `rnode` executable. A failure while loading (no native addon for this platform) is one line and exit 1,
// like every other error, not a stack trace.
// The flag above: V8's young generation grows to 3 x 16 MiB under a replicate's allocation rate and keeps it; an
// agent with three busy slots held 52 MiB of heap for 20 MiB of live objects. 2 MiB semispaces: 24 MiB, with no
// measurable change in replicate or recover speed. Only a process start can set it (tests read it from here).
import { isRnodeError } from './errors.js';

// Chunk reads, durable writes and renames share the libuv pool, and each of the 16 puts in flight holds a thread
// through its fdatasync: with 8 threads, reads from page cache queued behind them (~5 ms for 1 MiB). Threads
// blocked on the device cost no CPU. Set before anything starts the pool.
process.env.UV_THREADPOOL_SIZE ??= '32';
try {
  const { main } = await import('./cli/main.js');
  process.exitCode = await main(process.argv.slice(2));
} catch (err) {
  if (!isRnodeError(err)) throw err;
  console.error(`rnode: ${err.code}: ${err.message}`);
  process.exitCode = 1;
}
