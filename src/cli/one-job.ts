// What the `rnode` process sets up before a command loads. A chunk command runs that one job and exits, so its codec
// worker threads start first thing (a replicate's once its plan says it needs them), and the chunk buffers it returns
// are dropped rather than kept for a later job. V8's flags are set once those workers have started (src/v8-tuning.ts
// says why not earlier), at once for a replicate and for a command that runs until stopped or long, and not at all for
// a quick one (a listing, --version).
import type { CodecWorkers } from '../pipeline/codec-workers.js';
import { tuneV8 } from '../v8-tuning.js';

/** The commands that run one chunk job (encoding or decoding chunks on the codec workers) and exit. */
const ONE_CHUNK_JOB = new Set(['replicate', 'recover', 'verify']);
/**
 * The other commands whose V8 settings matter: they run until stopped, or long (a repack, a check reading every byte,
 * the demo's jobs). Set first thing: codec workers they start later are new isolates either way.
 */
const TUNED_AT_ONCE = new Set(['agent', 'serve', 'export', 'prune', 'check', 'demo']);

/**
 * Called by the executable (src/cli.ts) with its arguments, before it loads the command. A codec worker thread takes
 * a node start of its own (~150 ms on a busy 2-core machine): started by the job, the workers held back a 16 MiB
 * recover's first chunk by 0.2-0.5 s; started here, they start while the command, the job and the store's indexes
 * load; and the job's main thread is one of the codec lanes, so it has one worker fewer to start and can start on its
 * first chunk before any worker is up. No workers for any other command, and nothing at all for a --help. Resolves
 * to the workers it started.
 */
export async function prepareForCommand(argv: string[]): Promise<CodecWorkers | undefined> {
  if (argv.includes('--help') || argv.includes('-h')) return undefined;
  if (TUNED_AT_ONCE.has(argv[0])) tuneV8();
  if (!ONE_CHUNK_JOB.has(argv[0])) return undefined;
  const [{ codecWorkers }, { keepNoIdleShared }] = await Promise.all([import('../pipeline/codec-workers.js'), import('../pipeline/shared-slots.js')]);
  keepNoIdleShared();
  // One of the lanes is this thread: the job is all this process does (src/pipeline/inline-lane.ts). A replicate's
  // worker threads wait for its plan: an incremental compared by change hashes encodes too few chunks to need them
  // (an unchanged 1.5 GiB incremental: 0.90x the wall time and 0.86x the CPU; a full replicate 0.97x, within noise;
  // 8-10 alternating pairs against the build before). Its V8 flags are set at once: its workers start late or never,
  // and waiting for them left the whole job untuned (1.09x the CPU).
  const deferWorkers = argv[0] === 'replicate';
  const workers = codecWorkers({ inline: true, deferWorkers });
  if (deferWorkers) tuneV8();
  else void workers.ready().then(tuneV8, () => undefined);
  return workers;
}
