#!/usr/bin/env node
// The `rnode` executable. A failure while loading (no native addon for this platform) is one line and exit 1,
// like every other error, not a stack trace.
import { isRnodeError } from './errors.js';

// Chunks are read, compressed and written on the libuv pool: give it room before anything starts it.
process.env.UV_THREADPOOL_SIZE ??= '8';
try {
  const { main } = await import('./cli/main.js');
  process.exitCode = await main(process.argv.slice(2));
} catch (err) {
  if (!isRnodeError(err)) throw err;
  console.error(`rnode: ${err.code}: ${err.message}`);
  process.exitCode = 1;
}
