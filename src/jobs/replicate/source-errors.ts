// The two ways reading the source fails a replicate run, worded the same whether the chunk was read through
// source.read() on the main thread or by a codec worker through the source's lent fd.
import { ErrorCodes, RnodeError } from '../../errors.js';

/** The source was shorter than the disk the run began with: it was truncated or replaced meanwhile. */
export function sourceEnded(location: string, at: number, diskSize: number): RnodeError {
  return new RnodeError(
    ErrorCodes.SOURCE_CHANGED,
    `source ${location} ended at ${at}, expected ${diskSize} bytes; was it truncated while replicating?`,
  );
}

/**
 * A pread off the main thread failed (EIO, a device gone): the source's failure, as it is through read(). `where`:
 * a codec worker, or the thread pool of a change-hash run.
 */
export function workerReadFailed(location: string, err: unknown, where = 'a codec worker'): RnodeError {
  if (err instanceof RnodeError) return err; // not the read's: the worker could not run (codec-workers.ts)
  return new RnodeError(
    ErrorCodes.SOURCE_IO,
    `reading source ${location} on ${where} failed: ${(err as Error)?.message ?? String(err)}; check the device and retry`,
    { cause: err },
  );
}
