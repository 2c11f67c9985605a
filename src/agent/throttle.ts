// Bandwidth limits as token buckets: a run's own limit (policy/job) and the node's (--bandwidth capacity) both
// pace the bytes read from the source. Waiting is abortable, so a cancelled job stops at once.
import { ErrorCodes, RnodeError } from '../errors.js';
import { delegatingSource, type BlockSource } from '../source/types.js';

export class TokenBucket {
  /** The moment (ms, monotonic) the bucket is paid up to. */
  private paidUntil = performance.now();
  /** @param rate bytes per second; @param burstMs how much unused time may be banked. */
  constructor(readonly rate: number, private readonly burstMs = 100) {}

  /** Resolves when n bytes may pass. */
  async take(n: number, signal?: AbortSignal): Promise<void> {
    const now = performance.now();
    this.paidUntil = Math.max(this.paidUntil, now - this.burstMs) + (n / this.rate) * 1000;
    const wait = this.paidUntil - now;
    if (wait > 1) await abortableSleep(wait, signal);
  }
}

export function abortableSleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(cancelled());
    const timer = setTimeout(() => { signal?.removeEventListener('abort', onAbort); resolve(); }, ms);
    const onAbort = () => { clearTimeout(timer); reject(cancelled()); };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

export function cancelled(): RnodeError {
  return new RnodeError(ErrorCodes.CANCELLED, 'the job was cancelled; nothing was committed');
}

/** A BlockSource whose reads pass every bucket first and stop when the signal aborts. */
export function pacedSource(inner: BlockSource, buckets: TokenBucket[], signal?: AbortSignal): BlockSource & { bytesRead: number } {
  const paced = delegatingSource(inner, {
    /** Bytes this wrapper read from the source (a resumed run reads less than the point's bytesRead). */
    bytesRead: 0,
    async read(offset: number, buf: Buffer, length: number) {
      if (signal?.aborted) throw cancelled();
      for (const b of buckets) await b.take(length, signal);
      const n = await inner.read(offset, buf, length);
      paced.bytesRead += n;
      return n;
    },
  });
  return paced;
}
