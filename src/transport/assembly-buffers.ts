// Buffers the node receives PUT objects into (whole packs and chunks, and objects sent in parts), reused from one
// object to the next. A fresh 8 MiB buffer per pack is mapped and page-faulted anew on every copy into it: that copy
// alone took about a fifth of a node's receiving time (256 MiB mixed image, 2 cores). They are page-aligned, so the
// fs store writes them with O_DIRECT instead of copying them into the page cache (unaligned, that buffered write was
// the largest single cost of a node: 0.9 s of CPU for 258 MB of packs). They are shared memory, so the codec workers
// check a pack's blobs in place. What the pool keeps idle is bounded; what is in use is bounded by the sessions'
// windows, as before.
import { sharedAligned } from '../native/index.js';

/** Sizes round up to 1/8 of their power of two (at least a page): reusable across packs of slightly different sizes. */
function roundedSize(bytes: number): number {
  const step = Math.max(4096, 2 ** Math.floor(Math.log2(Math.max(1, bytes))) / 8);
  return Math.ceil(bytes / step) * step;
}

export class AssemblyBuffers {
  private readonly free: Buffer[] = [];
  private idleBytes = 0;
  /** The whole aligned buffer behind each view handed out, by its memory. */
  private readonly wholeOf = new WeakMap<ArrayBufferLike, Buffer>();

  /** @param maxIdleBytes the most bytes kept for reuse between objects */
  constructor(private readonly maxIdleBytes: number) {}

  /** A page-aligned buffer of exactly `bytes` bytes (a view of the smallest pooled one that is large enough). */
  take(bytes: number): Buffer {
    let best = -1;
    for (let i = 0; i < this.free.length; i++) {
      if (this.free[i].length >= bytes && (best < 0 || this.free[i].length < this.free[best].length)) best = i;
    }
    if (best >= 0) {
      const b = this.free.splice(best, 1)[0];
      this.idleBytes -= b.length;
      return b.subarray(0, bytes);
    }
    const whole = sharedAligned(roundedSize(bytes));
    this.wholeOf.set(whole.buffer, whole);
    return whole.subarray(0, bytes);
  }

  /** Gives a buffer from take() back once nothing reads it any more (its object stored or refused). */
  give(view: Buffer): void {
    const whole = this.wholeOf.get(view.buffer);
    if (!whole || this.idleBytes + whole.length > this.maxIdleBytes) return;
    this.free.push(whole);
    this.idleBytes += whole.length;
  }
}
