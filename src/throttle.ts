// The one bandwidth limiter: a token bucket every limit uses. It is applied in two places, one per direction: the
// bytes a job puts to its target (replicate --bandwidth and agent jobs alike, for every store kind, through
// src/store/wrappers/throttled.ts) and the bytes a receiving node reads from its peers (serve --bandwidth).
import { ErrorCodes, RnodeError } from './errors.js';

export class TokenBucket {
  /** The moment (ms, monotonic) the bucket is paid up to. */
  private paidUntil = performance.now();

  /** @param rate bytes per second; @param burstMs how much unused time may be banked after an idle spell. */
  constructor(
    readonly rate: number,
    private readonly burstMs = 100,
  ) {
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

  /** Resolves when n bytes may pass; rejects with the signal's reason when it aborts first. */
  async take(n: number, signal?: AbortSignal): Promise<void> {
    const wait = this.reserve(n);
    if (wait > 1) await abortableSleep(wait, signal);
  }
}

/** Sleeps ms; an abort rejects at once with the signal's reason (a CANCELLED RnodeError when it has none). */
export function abortableSleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const reason = () =>
      signal?.reason instanceof Error ? signal.reason : new RnodeError(ErrorCodes.CANCELLED, 'the run was cancelled while waiting for bandwidth');
    if (signal?.aborted) return reject(reason());
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(reason());
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
