// What the `rnode` process sets up before a chunk command loads: the process runs that one job and exits, so its codec
// worker threads start first thing, and the chunk buffers it returns are dropped rather than kept for a later job.
import type { CodecWorkers } from '../pipeline/codec-workers.js';

/** The commands that run one chunk job (encoding or decoding chunks on the codec workers) and exit. */
const ONE_CHUNK_JOB = new Set(['replicate', 'recover', 'verify']);

/**
 * Called by the executable (src/cli.ts) with its arguments, before it loads the command. A codec worker thread takes
 * a node start of its own (~150 ms on a busy 2-core machine): started by the job, the workers held back a 16 MiB
 * recover's first chunk by 0.2-0.5 s; started here, they start while the command, the job and the store's indexes
 * load. Nothing for any other command, nor for a --help. Resolves to the workers it started.
 */
export async function prepareForCommand(argv: string[]): Promise<CodecWorkers | undefined> {
  if (!ONE_CHUNK_JOB.has(argv[0]) || argv.includes('--help') || argv.includes('-h')) return undefined;
  const [{ codecWorkers }, { keepNoIdleShared }] = await Promise.all([import('../pipeline/codec-workers.js'), import('../pipeline/shared-slots.js')]);
  keepNoIdleShared();
  return codecWorkers();
}
