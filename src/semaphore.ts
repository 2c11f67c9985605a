// The one semaphore for callers that each hold a slot while they work: the agent's job slots (src/agent/jobs.ts)
// and the NBD requests in flight on one connection (src/source/nbd/connection.ts). Calls pushed through one
// function use p-limit (src/store/wrappers/limited.ts); items pulled from an async iterator use forEachBounded
// (src/pipeline/bounded.ts). A shared leaf, so every layer may use it.

interface Waiter {
  resolve: () => void;
  reject: (err: unknown) => void;
}

/** FIFO: a released slot passes straight to the oldest waiter, so a burst of new callers cannot take it first. */
export class Semaphore {
  private used = 0;
  private readonly waiters: Waiter[] = [];

  constructor(readonly size: number) {
    if (!(size >= 1)) throw new RangeError('a semaphore needs at least one slot');
  }

  get inUse(): number {
    return this.used;
  }

  get waiting(): number {
    return this.waiters.length;
  }

  /**
   * Resolves once the caller holds a slot; a free slot is taken before this returns its promise, so a burst of
   * callers cannot overshoot. Rejects with the signal's reason when it aborts first (the caller then holds nothing).
   */
  acquire(signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.used < this.size) {
      this.used++;
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        reject(signal?.reason);
      };
      const waiter: Waiter = {
        resolve: () => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        },
        reject: (err) => {
          signal?.removeEventListener('abort', onAbort);
          reject(err);
        },
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(waiter);
    });
  }

  release(): void {
    const next = this.waiters.shift();
    if (next) next.resolve();
    else this.used--;
  }

  /** Rejects every caller still waiting with err (their owner failed); slots already held stay held. */
  failWaiters(err: unknown): void {
    for (const waiter of this.waiters.splice(0)) waiter.reject(err);
  }
}
