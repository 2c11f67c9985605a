// Large buffers kept from one run for the next, by size. A long-lived process (the agent) that allocated fresh ones
// per run held each until garbage collection found it: its RSS followed GC timing, not its load.
import { zeroBytes } from './index.js';

export interface IdleBuffersOptions {
  /** Makes a new buffer of a size. */
  alloc: (size: number) => Buffer;
  /** Idle bytes kept at most: above it a returned buffer is dropped (left to the GC). */
  maxIdleBytes: number;
  /** Clears a returned buffer, so no data lingers in it (default: zero-fill). */
  wipe?: (b: Buffer) => void;
}

export class IdleBuffers {
  private readonly idle = new Map<number, Buffer[]>();
  private idleBytes = 0;
  private maxIdleBytes: number;
  /** The buffers this made: only they come back (wipe may rely on how alloc made them). */
  private readonly own = new WeakSet<Buffer>();

  constructor(private readonly o: IdleBuffersOptions) {
    this.maxIdleBytes = o.maxIdleBytes;
  }

  /** A buffer of size bytes: an idle one (wiped when it was returned) or a new one. */
  take(size: number): Buffer {
    const list = this.idle.get(size);
    const b = list?.pop();
    if (!b) {
      const made = this.o.alloc(size);
      this.own.add(made);
      return made;
    }
    this.idleBytes -= b.length;
    if (list!.length === 0) this.idle.delete(size);
    return b;
  }

  /** Gives back a buffer from take() once nothing uses it any more; any other buffer is ignored. */
  recycle(b: Buffer): void {
    if (!this.own.has(b)) return;
    // Other sizes' idle buffers make room first: the newest size is the one runs use now.
    for (const [size, list] of this.idle) {
      if (this.idleBytes + b.length <= this.maxIdleBytes) break;
      if (size === b.length) continue;
      while (list.length && this.idleBytes + b.length > this.maxIdleBytes) this.idleBytes -= list.pop()!.length;
      if (!list.length) this.idle.delete(size);
    }
    if (this.idleBytes + b.length > this.maxIdleBytes) return;
    (this.o.wipe ?? zeroBytes)(b);
    let list = this.idle.get(b.length);
    if (!list) this.idle.set(b.length, (list = []));
    list.push(b);
    this.idleBytes += b.length;
  }

  /**
   * For a process that runs one job and exits (the rnode CLI): returned buffers are dropped, not wiped and kept for a
   * later run there will never be (the wipe touches every page).
   */
  keepNone(): void {
    this.maxIdleBytes = 0;
    this.idle.clear();
    this.idleBytes = 0;
  }
}
