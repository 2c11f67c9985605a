// Bandwidth limits (src/transport/throttle.ts): a run's own limit (policy/job) and the node's (--bandwidth capacity)
// both pace the bytes read from the source. Waiting is abortable, so a cancelled job stops at once.
import { ErrorCodes, RnodeError } from '../errors.js';
import { delegatingSource, type BlockSource } from '../source/types.js';
import type { TokenBucket } from '../transport/throttle.js';

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
      for (const b of buckets) {
        const wait = b.reserve(length);
        if (wait > 1) await abortableSleep(wait, signal);
      }
      const n = await inner.read(offset, buf, length);
      paced.bytesRead += n;
      return n;
    },
  });
  return paced;
}
