// Chunk buffers shared with the codec workers, recycled from one run to the next. A run that allocated its own
// (32 MiB per replicate) leaked them: each stays alive until every worker isolate that saw it collects garbage.
import { sharedAligned } from '../native/index.js';
import { IdleBuffers } from '../native/idle-buffers.js';

/**
 * Idle bytes kept for later runs. Above it a returned buffer is dropped (left to the GC): three agent slots of
 * 1 MiB chunks keep ~100 MiB busy, so this covers a node's steady state without holding more than it uses.
 */
export const MAX_IDLE_SHARED_BYTES = 128 * 1024 * 1024;

const slots = new IdleBuffers({ alloc: sharedAligned, maxIdleBytes: MAX_IDLE_SHARED_BYTES });

/** A zero-filled, page-aligned SharedArrayBuffer view of size bytes: an idle one when there is one. */
export function takeShared(size: number): Buffer {
  return slots.take(size);
}

/** Gives a buffer from takeShared() back once nothing uses it any more (it is wiped: no plaintext lingers). */
export function recycleShared(b: Buffer): void {
  slots.recycle(b);
}

/**
 * For a process that runs one job and exits (the rnode CLI): returned buffers are dropped, not wiped and kept for a
 * later run there will never be. The wipe touched every page of every slot: 30-120 ms at the end of a 16 MiB recover.
 */
export function keepNoIdleShared(): void {
  slots.keepNone();
}
