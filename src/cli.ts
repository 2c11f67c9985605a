// The `rnode` command. The executable (scripts/rnode-bin.cjs, dist/bin/rnode.js) runs this module's bundle. A
// failure while loading (no native addon for this platform) is one line and exit 1, like every other error, not a
// stack trace.
import { ErrorCodes, isRnodeError } from './errors.js';

// The libuv pool keeps node's default 4 threads (UV_THREADPOOL_SIZE is read only at process start, before this
// module runs): with packs there are at most 3 durable writes in flight, and 32 threads measured no faster (512 MiB
// replicate 1.85 s vs 1.79 s, recover 1.59 s vs 1.54 s, 3 alternating pairs each).
const argv = process.argv.slice(2);
// A reader that went away (`rnode points ... | head -3`) is not the command's failure: the rest of its output is
// dropped and the command finishes (a replicate still commits), instead of dying on the pipe's EPIPE with a stack.
// Any other failure to write stdout (ENOSPC, EIO: `--json > /dev/full`) lost output the caller asked for: the command
// still runs to its end, and then one line says so with the command's own outcome (reportLostStdout).
let stdoutFailure: NodeJS.ErrnoException | undefined;
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code !== 'EPIPE') stdoutFailure ??= err;
});
// A stderr that cannot be written has nowhere to say so: the exit code still tells the outcome.
process.stderr.on('error', () => undefined);

/**
 * One line for output lost to a failed stdout, after the command: it says whether the command itself succeeded (a
 * replicate's point is committed), since the exit code cannot say both. A command that succeeded exits 1 (docs/cli.md):
 * a caller that reads the output must not take a missing or cut one for a result. A failed command keeps its code.
 */
function reportLostStdout(err: NodeJS.ErrnoException, exitCode: number): number {
  const outcome =
    exitCode === 0
      ? 'the command itself succeeded (what it stored or wrote elsewhere, such as a point, is complete) and exits 1 only for the lost output'
      : `the command itself failed (exit ${exitCode}; its error is on the line above)`;
  console.error(
    `rnode: ${ErrorCodes.OUTPUT_IO}: stdout could not be written (${err.code ?? err.message}), so the command's output ` +
      `is missing or cut; ${outcome}: send stdout where it can be written`,
  );
  return exitCode === 0 ? 1 : exitCode;
}

/** The command's whole run, from its arguments to the process's exit. */
async function run(): Promise<void> {
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
  const flushed = (s: NodeJS.WriteStream) => new Promise((resolve) => s.write('', resolve));
  await Promise.all([flushed(process.stdout), flushed(process.stderr)]);
  // After the flush: a write that failed has reported its error by then (`--version > /dev/full` reports it after main).
  if (stdoutFailure) {
    process.exitCode = reportLostStdout(stdoutFailure, Number(process.exitCode ?? 0));
    await flushed(process.stderr);
  }
  process.exit();
}

// Not a top-level await: the executable runs this module as one CommonJS bundle (scripts/bundle.mjs).
void run();
