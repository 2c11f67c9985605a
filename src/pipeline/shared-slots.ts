// Chunk buffers shared with the codec workers, recycled from one run to the next. A run that allocated its own
// (32 MiB per replicate) leaked them: each stays alive until every worker isolate that saw it collects garbage.
import { sharedSlice, zeroBytes } from '../native/index.js';

/**
 * Idle bytes kept for later runs. Above it a returned buffer is dropped (left to the GC): three agent slots of
 * 1 MiB chunks keep ~100 MiB busy, so this covers a node's steady state without holding more than it uses.
 */
export const MAX_IDLE_SHARED_BYTES = 128 * 1024 * 1024;

let maxIdleBytes = MAX_IDLE_SHARED_BYTES;
const idle = new Map<number, Buffer[]>();
let idleBytes = 0;

/** A zero-filled, page-aligned SharedArrayBuffer view of size bytes: an idle one when there is one. */
export function takeShared(size: number): Buffer {
  const list = idle.get(size);
  const b = list?.pop();
  if (b) {
    idleBytes -= b.length;
    if (list!.length === 0) idle.delete(size);
    return b;
  }
  return sharedSlice(size);
}

/** Gives a buffer from takeShared() back once nothing uses it any more (it is wiped: no plaintext lingers). */
export function recycleShared(b: Buffer): void {
  // Other sizes' idle buffers make room first: the newest chunk size is the one runs use now.
  for (const [size, list] of idle) {
    if (idleBytes + b.length <= maxIdleBytes) break;
    if (size === b.length) continue;
    while (list.length && idleBytes + b.length > maxIdleBytes) idleBytes -= list.pop()!.length;
    if (!list.length) idle.delete(size);
  }
  if (idleBytes + b.length > maxIdleBytes) return;
  zeroBytes(b);
  let list = idle.get(b.length);
  if (!list) idle.set(b.length, (list = []));
  list.push(b);
  idleBytes += b.length;
}

/**
 * For a process that runs one job and exits (the rnode CLI): returned buffers are dropped, not wiped and kept for a
 * later run there will never be. The wipe touched every page of every slot: 30-120 ms at the end of a 16 MiB recover.
 */
export function keepNoIdleShared(): void {
  maxIdleBytes = 0;
  idle.clear();
  idleBytes = 0;
}
