#!/usr/bin/env node
// The `rnode` executable. A failure while loading (no native addon for this platform) is one line and exit 1,
// like every other error, not a stack trace.
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
