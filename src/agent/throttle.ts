// Bandwidth limits on an agent run's source reads: the run's own limit (policy/job) and the node's (--bandwidth
// capacity), both TokenBuckets of src/throttle.ts. Waiting is abortable, so a cancelled job stops at once.
import { ErrorCodes, RnodeError } from '../errors.js';
import { delegatingSource, type BlockSource } from '../source/types.js';
import { abortableSleep as sleep, type TokenBucket } from '../throttle.js';

export function abortableSleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) return Promise.reject(cancelled());
  return sleep(ms, signal).catch((err: unknown) => { throw signal?.aborted ? cancelled() : err; });
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
      try {
        for (const b of buckets) await b.take(length, signal);
      } catch (err) {
        throw signal?.aborted ? cancelled() : err;
      }
      const n = await inner.read(offset, buf, length);
      paced.bytesRead += n;
      return n;
    },
  });
  return paced;
}
