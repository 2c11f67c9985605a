// The memory of a replicate run: how many chunks it reads and encodes at once, how far the reader runs ahead, and
// its pack buffers, all from one budget (ReplicateOptions.bufferBytes; the agent splits one among its slots).
import { codecWorkers } from '../../pipeline/codec-workers.js';
import { MIN_PACK_SIZE } from '../../repository/domain.js';
import { packBufferBytes } from '../../repository/pack.js';

/** The default of ReplicateOptions.bufferBytes. */
const DEFAULT_BUFFER_BYTES = 64 * 1024 * 1024;

/**
 * Pack buffers of a run, at most: one being filled and two in puts. A pack is one large write, and two keep the
 * device busy; more only hold memory.
 */
const MAX_PACK_BUFFERS = 3;

function defaultConcurrency(chunkSize: number, bufferBytes = DEFAULT_BUFFER_BYTES): number {
  // Puts in flight, capped at ~64 MiB of object buffers. Durable puts wait for the device, so the device needs many
  // in its queue: the 1.5 GiB bench image replicated in ~4.0 s with 16 in flight against ~5.3 s with 8.
  return Math.max(2, Math.min(16, Math.floor(bufferBytes / chunkSize)));
}

/**
 * The pipeline's depths: encodeDepth plaintext buffers and as many object buffers (one chunk being encoded and one
 * queued per codec worker, two being read: every worker stays fed with little memory); writeDepth (concurrency, or
 * defaultConcurrency); and from both, how far the reader may run ahead of the oldest unfinished chunk (finished ones
 * wait for it to keep the table in order).
 */
export function pipelineDepths(
  chunkSize: number,
  concurrency?: number,
  bufferBytes?: number,
): { writeDepth: number; encodeDepth: number; reorderWindow: number } {
  const writeDepth = Math.max(2, concurrency ?? defaultConcurrency(chunkSize, bufferBytes));
  const encodeDepth = 2 * codecWorkers().size + 2;
  return { writeDepth, encodeDepth, reorderWindow: 2 * (encodeDepth + writeDepth) };
}

/**
 * A run's pack size and pack buffers, within bufferBytes: as many buffers as fit, from two (one being filled, one in
 * a put) to MAX_PACK_BUFFERS. A budget too small for two of the repository's packs makes this run's packs smaller (a
 * pack size the caller gave is kept, even past the budget).
 */
export function packPlan(packSize: number, given: boolean, bufferBytes = DEFAULT_BUFFER_BYTES): { packSize: number; buffers: number } {
  if (!given) {
    // A multiple of 64 KiB whose buffer (the pack, a blob past it, its trailer) is at most half the budget.
    const step = 64 * 1024;
    while (packSize > MIN_PACK_SIZE && 2 * packBufferBytes(packSize) > bufferBytes)
      packSize = Math.max(MIN_PACK_SIZE, (Math.ceil(packSize / step) - 1) * step);
  }
  return { packSize, buffers: Math.max(2, Math.min(MAX_PACK_BUFFERS, Math.floor(bufferBytes / packBufferBytes(packSize)))) };
}
