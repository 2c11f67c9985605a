#!/usr/bin/env -S node --max-semi-space-size=2
// The `rnode` executable. A failure while loading (no native addon for this platform) is one line and exit 1,
// like every other error, not a stack trace.
// The flag above: V8's young generation grows to 3 x 16 MiB under a replicate's allocation rate and keeps it; an
// agent with three busy slots held 52 MiB of heap for 20 MiB of live objects. 2 MiB semispaces: 24 MiB, with no
// measurable change in replicate or recover speed. Only a process start can set it (tests read it from here).
import { isRnodeError } from './errors.js';

// The libuv pool keeps node's default 4 threads (UV_THREADPOOL_SIZE is read only at process start, before this
// module runs): with packs there are at most 3 durable writes in flight, and 32 threads measured no faster (512 MiB
// replicate 1.85 s vs 1.79 s, recover 1.59 s vs 1.54 s, 3 alternating pairs each).
try {
  const { main } = await import('./cli/main.js');
  process.exitCode = await main(process.argv.slice(2));
} catch (err) {
  if (!isRnodeError(err)) throw err;
  console.error(`rnode: ${err.code}: ${err.message}`);
  process.exitCode = 1;
}
