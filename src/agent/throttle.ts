// Cancellation of an agent run's waits, and the count of what a run read from its source. The bandwidth limits
// (policy/job and the node's --bandwidth) pace the bytes put to the target (src/store/wrap.ts), not source reads.
import { ErrorCodes, RnodeError } from '../errors.js';
import { delegatingSource, type BlockSource } from '../source/types.js';
import { abortableSleep as sleep } from '../throttle.js';

export function abortableSleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) return Promise.reject(cancelled());
  return sleep(ms, signal).catch((err: unknown) => {
    throw signal?.aborted ? cancelled() : err;
  });
}

export function cancelled(): RnodeError {
  return new RnodeError(ErrorCodes.CANCELLED, 'the job was cancelled; nothing was committed');
}

/** A BlockSource that counts the bytes read through it and stops reading once the signal aborts. */
export function countedSource(inner: BlockSource, signal?: AbortSignal): BlockSource & { bytesRead: number } {
  const counted = delegatingSource(inner, {
    /** Bytes this wrapper read from the source (a resumed run reads less than the point's bytesRead). */
    bytesRead: 0,
    async read(offset: number, buf: Buffer, length: number) {
      if (signal?.aborted) throw cancelled();
      const n = await inner.read(offset, buf, length);
      counted.bytesRead += n;
      return n;
    },
    // Chunks the codec workers read through the fd are counted here; a cancelled run stops at the pipeline's own check
    // of the signal.
    lendFd: () => inner.lendFd?.(),
    readElsewhere(bytes: number) {
      counted.bytesRead += bytes;
      inner.readElsewhere?.(bytes);
    },
  });
  return counted;
}
