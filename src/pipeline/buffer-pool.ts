// A fixed set of chunk slots. acquire() waits when all are in use, which is how back-pressure from the
// sink reaches the reader: nothing reads ahead of what the pipeline can hold.

export class BufferPool<T> {
  private readonly free: T[] = [];
  private readonly waiters: Array<{ rank: number; resolve: (b: T) => void }> = [];
  /** Items made so far: they are made on first need, so a short run does not allocate (and wipe) every slot. */
  private made = 0;

  constructor(
    readonly count: number,
    private readonly make: () => T,
  ) {}

  /** Waiters are served lowest rank first, in the order they came within a rank (all rank 0: first come, first served). */
  acquire(rank = 0): Promise<T> {
    const b = this.free.pop();
    if (b) return Promise.resolve(b);
    if (this.made < this.count) {
      this.made++;
      return Promise.resolve(this.make());
    }
    return new Promise((resolve) => {
      let at = this.waiters.length;
      while (at > 0 && this.waiters[at - 1].rank > rank) at--;
      this.waiters.splice(at, 0, { rank, resolve });
    });
  }

  release(b: T): void {
    const w = this.waiters.shift();
    if (w) w.resolve(b);
    else this.free.push(b);
  }

  /** Items acquire() can hand out at once (made and idle, or not made yet). */
  get available(): number {
    return this.free.length + this.count - this.made;
  }

  /** Hands every idle item to recycle and forgets it (the run is over; items released later are just dropped). */
  close(recycle: (b: T) => void): void {
    for (const b of this.free.splice(0)) recycle(b);
  }
}
