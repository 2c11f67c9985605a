// A fixed set of chunk slots. acquire() waits when all are in use, which is how back-pressure from the
// sink reaches the reader: nothing reads ahead of what the pipeline can hold.

export class BufferPool<T> {
  private readonly free: T[] = [];
  private readonly waiters: Array<(b: T) => void> = [];

  constructor(readonly count: number, make: () => T) {
    for (let i = 0; i < count; i++) this.free.push(make());
  }

  acquire(): Promise<T> {
    const b = this.free.pop();
    if (b) return Promise.resolve(b);
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  release(b: T): void {
    const w = this.waiters.shift();
    if (w) w(b);
    else this.free.push(b);
  }

  get available(): number { return this.free.length; }

  /** Hands every idle item to recycle and forgets it (the run is over; items released later are just dropped). */
  close(recycle: (b: T) => void): void {
    for (const b of this.free.splice(0)) recycle(b);
  }
}
