#!/usr/bin/env node
// The `rnode` executable.

// Chunks are read, compressed and written on the libuv pool: give it room before anything starts it.
process.env.UV_THREADPOOL_SIZE ??= '8';
const { main } = await import('./cli/main.js');
process.exitCode = await main(process.argv.slice(2));
