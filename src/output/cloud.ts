// What the cloud outputs share: one retry rule for their requests, with SDK errors mapped to the store's codes
// (src/store/common.ts cloudError), so a throttled or dropped request is retried and anything else fails at once.
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
      if (!mapped.retryable || attempt >= ATTEMPTS) throw mapped;
      await new Promise((r) => setTimeout(r, Math.min(8000, 250 * 2 ** (attempt - 1)) * (0.5 + Math.random() / 2)));
    }
  }
}
