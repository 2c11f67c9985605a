// What the cloud outputs share: one retry rule for their requests, with SDK errors mapped by the store's mapping
// (src/store/common.ts cloudError), so a throttled or dropped request is retried and anything else fails at once;
// what reaches the caller is an OUTPUT_IO error (the store being read is fine), retryable as the mapping said.
import { ErrorCodes, RnodeError, isRnodeError } from '../errors.js';
import { cloudError, type CloudFailure } from '../store/common.js';

const ATTEMPTS = 5;

export async function retried<T>(
  location: string,
  op: string,
  key: string,
  failure: (err: unknown) => CloudFailure,
  fn: () => Promise<T>,
): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      const mapped = cloudError(location, op, key, err, failure(err));
      if (!mapped.retryable || attempt >= ATTEMPTS) throw outputError(mapped);
      await new Promise((r) => setTimeout(r, Math.min(8000, 250 * 2 ** (attempt - 1)) * (0.5 + Math.random() / 2)));
    }
  }
}

/**
 * A STORE_* error of an output's request as OUTPUT_IO: the code tells the operator which side failed (a store code read
 * as the backup's store being down). The store's code stays in details.storeCode, the retryable flag as it was.
 */
export function outputError(err: RnodeError): RnodeError {
  if (!err.code.startsWith('RNODE_STORE_')) return err;
  return new RnodeError(ErrorCodes.OUTPUT_IO, err.message, {
    cause: err.cause,
    retryable: err.retryable,
    details: { ...err.details, storeCode: err.code },
  });
}

/** True for an output error that was the store mapping's `code` (e.g. a missing bucket read as STORE_NOT_FOUND). */
export function wasStoreCode(err: unknown, code: string): boolean {
  return isRnodeError(err) && (err.code === code || err.details.storeCode === code);
}
