// Token-bucket bandwidth limit (bytes/s). take(n) waits until the bucket is out of debt, then spends n:
// a frame larger than the burst goes out whole and the wait afterwards pays for it, so the long-run rate
// holds exactly at the setting whatever the frame sizes.
export class TokenBucket {
  private tokens: number;
  private last = performance.now();
  private chain: Promise<void> = Promise.resolve();

  /** bytesPerSecond: the rate; burst: bytes that may go out at once after an idle spell (default 50 ms worth). */
  constructor(readonly bytesPerSecond: number, readonly burst = Math.max(64 * 1024, bytesPerSecond / 20)) {
    if (!(bytesPerSecond > 0)) throw new RangeError('bandwidth must be positive');
    this.tokens = 0;
  }

  /** Resolves when n bytes may be sent; callers are served in order. */
  take(n: number): Promise<void> {
    const p = this.chain.then(() => this.wait(n));
    this.chain = p.catch(() => undefined);
    return p;
  }

  private async wait(n: number): Promise<void> {
    this.refill();
    if (this.tokens < 0) {
      await new Promise((r) => setTimeout(r, Math.ceil((-this.tokens / this.bytesPerSecond) * 1000)));
      this.refill();
    }
    this.tokens -= n;
  }

  private refill(): void {
    const now = performance.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) / 1000) * this.bytesPerSecond);
    this.last = now;
  }
}
