// The V8 settings the `rnode` process runs with, set at run time rather than on node's command line. Any V8 flag that
// differs from node's defaults when an isolate compiles node's built-in modules makes V8 refuse the code cache node
// ships for them (the cache is keyed on a hash of the flags): every isolate of the process (the main thread and each
// codec worker) then compiles them from source. Given in the executable's shebang, these flags cost a replicate of a
// 1 MiB disk 8% of its wall time (0.377 against 0.350 s, 20 alternating pairs) and an unchanged incremental of
// 1.5 GiB 4% (0.619 against 0.596 s). So src/cli/one-job.ts sets them once a chunk job's codec workers have started,
// or at once for a command that runs long, and for a replicate (whose workers start late, if at all).
import v8 from 'node:v8';

const YOUNG_GENERATION = '--semi-space-growth-factor=1';
let tuned = false;

/**
 * --interrupt-budget (16x V8's default): a function is optimized by TurboFan after 16 times as much of its bytecode
 * has run. Our JS only moves chunks between native code, and a job's three isolates optimized it over and over
 * (TurboFan was 8% of the CPU samples of a 1.5 GiB full replicate); a long-running node still optimizes its hot
 * paths, a few seconds later.
 * --semi-space-growth-factor=1: V8's young generation stays at the size it has (1-2 MiB per semispace) instead of
 * growing to 3 x 16 MiB under a replicate's allocation rate and keeping it: an agent with three busy slots held 52 MiB
 * of heap for 20 MiB of live objects. (--max-semi-space-size would do it too, but is read only at process start.)
 */
export function tuneV8(): void {
  if (tuned) return;
  tuned = true;
  v8.setFlagsFromString('--interrupt-budget=1048576');
  v8.setFlagsFromString(YOUNG_GENERATION);
}

/**
 * A new isolate (a worker thread) sets V8's young-generation growth factor back to 2 as it configures its heap (a
 * service's young generation then grew to 32 MiB after its first codec worker started): in a tuned process, a worker
 * that has started sets it again.
 */
export function retuneAfterNewIsolate(): void {
  if (tuned) v8.setFlagsFromString(YOUNG_GENERATION);
}
