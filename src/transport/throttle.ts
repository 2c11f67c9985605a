// The bandwidth throttle, one token bucket for every limit: a sender's --bandwidth on a RemoteStore, a node's
// serve --bandwidth, and the agent's per-job and per-node limits on source reads (src/agent/throttle.ts).
import { setTimeout as sleep } from 'node:timers/promises';

export class TokenBucket {
  /** The moment (ms, monotonic) the bucket is paid up to. */
  private paidUntil = performance.now();

  /** @param rate bytes per second; @param burstMs how much unused time may be banked after an idle spell. */
  constructor(readonly rate: number, private readonly burstMs = 100) {
    if (!(rate > 0)) throw new RangeError('bandwidth must be positive');
  }

  /**
   * Books n bytes and returns how many ms the caller must wait before they pass. Callers are served in the
   * order they book, whatever the sizes, so the average holds even with frames larger than the burst.
   */
  reserve(n: number): number {
    const now = performance.now();
    this.paidUntil = Math.max(this.paidUntil, now - this.burstMs) + (n / this.rate) * 1000;
    return this.paidUntil - now;
  }

  /** Resolves when n bytes may pass. */
  async take(n: number): Promise<void> {
    const wait = this.reserve(n);
    if (wait > 1) await sleep(wait);
  }
}
