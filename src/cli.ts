#!/usr/bin/env node
// The `rnode` executable. A failure while loading (no native addon for this platform) is one line and exit 1,
// like every other error, not a stack trace.
// No V8 flags on the line above: any flag there makes V8 refuse node's code cache for its built-in modules in every
// isolate of the process. The flags rnode wants are set at run time (src/v8-tuning.ts, from cli/one-job.ts).
import { isRnodeError } from './errors.js';

// The libuv pool keeps node's default 4 threads (UV_THREADPOOL_SIZE is read only at process start, before this
// module runs): with packs there are at most 3 durable writes in flight, and 32 threads measured no faster (512 MiB
// replicate 1.85 s vs 1.79 s, recover 1.59 s vs 1.54 s, 3 alternating pairs each).
const argv = process.argv.slice(2);
// A reader that went away (`rnode points ... | head -3`) is not the command's failure: the rest of its output is
// dropped and the command finishes (a replicate still commits), instead of dying on the pipe's EPIPE with a stack.
for (const s of [process.stdout, process.stderr]) {
  s.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE') throw err;
  });
}
// First, while the command loads: a chunk command's codec worker threads start (cli/one-job.ts). A failure there
// (no addon) is the command's own, reported below when it loads the same modules.
const workers = import('./cli/one-job.js').then((m) => m.prepareForCommand(argv)).catch(() => undefined);
try {
  const { main } = await import('./cli/main.js');
  process.exitCode = await main(argv);
} catch (err) {
  if (!isRnodeError(err)) throw err;
  // Loading failed before main could read the flags: --json still gets its one document.
  if (argv.includes('--json')) console.log(JSON.stringify({ error: { code: err.code, message: err.message } }));
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
