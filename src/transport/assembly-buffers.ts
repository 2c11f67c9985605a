// Buffers the node assembles parted objects (packs) in, reused from one object to the next. A fresh 8 MiB buffer
// per pack is mapped and page-faulted anew on every copy into it: that copy alone took about a fifth of a node's
// receiving time (256 MiB mixed image, 2 cores). What the pool keeps idle is bounded; what is in use is bounded
// by the sessions' windows, as before. The memory is shared, so the codec workers check a pack's blobs in place.

const ROUND = 1024 * 1024;

export class AssemblyBuffers {
  private readonly free: Buffer[] = [];
  private idleBytes = 0;

  /** @param maxIdleBytes the most bytes kept for reuse between objects */
  constructor(private readonly maxIdleBytes: number) {}

  /** A buffer of exactly `bytes` bytes (a view of a pooled one when one is large enough). */
  take(bytes: number): Buffer {
    const i = this.free.findIndex((b) => b.length >= bytes);
    if (i >= 0) {
      const b = this.free.splice(i, 1)[0];
      this.idleBytes -= b.length;
      return b.subarray(0, bytes);
    }
    return Buffer.from(new SharedArrayBuffer(Math.ceil(bytes / ROUND) * ROUND)).subarray(0, bytes);
  }

  /** Gives a buffer from take() back once nothing reads it any more (its object stored or refused). */
  give(view: Buffer): void {
    const whole = Buffer.from(view.buffer, 0, view.buffer.byteLength);
    if (this.idleBytes + whole.length > this.maxIdleBytes) return;
    this.free.push(whole);
    this.idleBytes += whole.length;
  }
}
