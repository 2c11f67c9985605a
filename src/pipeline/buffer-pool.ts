// A fixed set of chunk buffers. acquire() waits when all are in use, which is how back-pressure from the
// sink reaches the reader: nothing reads ahead of what the pipeline can hold.
import { allocAligned } from '../native/index.js';

export class BufferPool {
  private readonly free: Buffer[] = [];
  private readonly waiters: Array<(b: Buffer) => void> = [];

  constructor(readonly bufferSize: number, readonly count: number, alignment = 4096) {
    for (let i = 0; i < count; i++) this.free.push(allocAligned(bufferSize, alignment));
  }

  acquire(): Promise<Buffer> {
    const b = this.free.pop();
    if (b) return Promise.resolve(b);
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  release(b: Buffer): void {
    const w = this.waiters.shift();
    if (w) w(b);
    else this.free.push(b);
  }

  get available(): number { return this.free.length; }
}
