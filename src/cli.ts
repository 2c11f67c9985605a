#!/usr/bin/env -S node --max-semi-space-size=2 --interrupt-budget=1048576
// The `rnode` executable. A failure while loading (no native addon for this platform) is one line and exit 1,
// like every other error, not a stack trace.
// The flags above (only a process start can set them; tests and the bench read them from here):
// --max-semi-space-size: V8's young generation grows to 3 x 16 MiB under a replicate's allocation rate and keeps it;
// an agent with three busy slots held 52 MiB of heap for 20 MiB of live objects. 2 MiB semispaces: 24 MiB, with no
// measurable change in replicate or recover speed.
// --interrupt-budget (16x V8's default): a function is optimized by TurboFan after 16 times as much of its bytecode
// has run. Our JS only moves chunks between native code, and a job's three isolates (main and two codec workers)
// optimized it over and over: TurboFan was 8% of the CPU samples of a 1.5 GiB full replicate (perf). With it, 8
// alternating runs each: full replicate 1.59 s against 1.65 s (CPU 2.72 s against 2.89 s), an unchanged incremental
// 0.62 s against 0.69 s; a long-running node still optimizes its hot paths, a few seconds later.
import { isRnodeError } from './errors.js';

// The libuv pool keeps node's default 4 threads (UV_THREADPOOL_SIZE is read only at process start, before this
// module runs): with packs there are at most 3 durable writes in flight, and 32 threads measured no faster (512 MiB
// replicate 1.85 s vs 1.79 s, recover 1.59 s vs 1.54 s, 3 alternating pairs each).
const argv = process.argv.slice(2);
// First, while the command loads: a chunk command's codec worker threads start (cli/one-job.ts). A failure there
// (no addon) is the command's own, reported below when it loads the same modules.
const workers = import('./cli/one-job.js').then((m) => m.prepareForCommand(argv)).catch(() => undefined);
try {
  const { main } = await import('./cli/main.js');
  process.exitCode = await main(argv);
} catch (err) {
  if (!isRnodeError(err)) throw err;
  console.error(`rnode: ${err.code}: ${err.message}`);
  process.exitCode = 1;
}
// The command is over: its output synced, its result written. The idle codec workers are told to stop together
// (process.exit() alone stops and joins them one after the other, 20-80 ms each after a 1 GiB recover), and the
// process exits once stdout and stderr have taken every byte (a pipe may hold some back), without node's teardown
// of the main isolate (30-50 ms).
// Awaited, and close() lets a worker still starting finish its start first (CodecWorkers.close says why).
await (await workers)?.close().catch(() => undefined);
await Promise.all([process.stdout, process.stderr].map((s) => new Promise((resolve) => s.write('', resolve))));
process.exit();
