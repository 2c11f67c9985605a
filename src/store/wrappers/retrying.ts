// Retries calls that failed with a retryable RnodeError, with exponential backoff and full jitter.
// Not-found and precondition failures are answers, not faults: they are never retried.

import { ErrorCodes, isRnodeError } from '../../errors.js';
import { compareKeys } from '../common.js';
import type { ByteRange, ObjectInfo, ObjectStore, PutOptions, StoreCapabilities } from '../types.js';

export interface RetryOptions {
  /** Total attempts including the first (default 5). */
  attempts?: number;
  /** Backoff cap of the first retry in ms (default 200); doubles on each retry up to maxDelayMs. */
  baseDelayMs?: number;
  /** Upper bound of one backoff in ms (default 10 000). */
  maxDelayMs?: number;
  /** For tests: the jitter source (default Math.random) and the sleep. */
  random?: () => number;
  sleep?: (ms: number) => Promise<void>;
  /** Called before each backoff, e.g. to log. */
  onRetry?: (info: { op: string; key: string; attempt: number; delayMs: number; error: unknown }) => void;
  /**
   * The job's stop signal: once it aborts, a failed call is not tried again and a backoff ends at once (a cancelled
   * job on a store that does not answer waited out every attempt: five request timeouts, ten minutes).
   */
  signal?: AbortSignal;
}

const NEVER_RETRY: ReadonlySet<string> = new Set([ErrorCodes.STORE_NOT_FOUND, ErrorCodes.STORE_PRECONDITION]);

export function isRetryable(err: unknown): boolean {
  return isRnodeError(err) && err.retryable && !NEVER_RETRY.has(err.code);
}

/**
 * Caveat for conditional puts: if an attempt timed out after the backend applied it, the retry sees
 * the key already written and fails with STORE_PRECONDITION although this writer won. Callers that
 * care compare the stored content with what they wrote.
 */
export class RetryingStore implements ObjectStore {
  readonly location: string;
  readonly capabilities: StoreCapabilities;
  private readonly attempts: number;
  private readonly baseDelayMs: number;
  private readonly maxDelayMs: number;
  private readonly random: () => number;
  private readonly sleep: (ms: number) => Promise<void>;

  constructor(
    private readonly inner: ObjectStore,
    private readonly opts: RetryOptions = {},
  ) {
    this.location = inner.location;
    this.capabilities = inner.capabilities;
    this.attempts = Math.max(1, opts.attempts ?? 5);
    this.baseDelayMs = opts.baseDelayMs ?? 200;
    this.maxDelayMs = opts.maxDelayMs ?? 10_000;
    this.random = opts.random ?? Math.random;
    this.sleep = opts.sleep ?? ((ms) => new Promise((r) => setTimeout(r, ms)));
  }

  put(key: string, data: Uint8Array, opts?: PutOptions): Promise<ObjectInfo> {
    return this.retry('put', key, () => this.inner.put(key, data, opts));
  }

  get(key: string, range?: ByteRange, into?: Uint8Array): Promise<Buffer> {
    return this.retry('get', key, () => this.inner.get(key, range, into));
  }

  head(key: string): Promise<ObjectInfo> {
    return this.retry('head', key, () => this.inner.head(key));
  }

  delete(key: string): Promise<void> {
    return this.retry('delete', key, () => this.inner.delete(key));
  }

  /** A listing that fails midway restarts and skips the keys already yielded (lists are key-ordered). */
  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    let last: string | undefined;
    for (let attempt = 1; ; attempt++) {
      try {
        for await (const info of this.inner.list(prefix)) {
          if (last !== undefined && compareKeys(info.key, last) <= 0) continue;
          last = info.key;
          yield info;
        }
        return;
      } catch (err) {
        if (!isRetryable(err) || attempt >= this.attempts || this.opts.signal?.aborted) throw err;
        await this.backoff('list', prefix, attempt, err);
      }
    }
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  private async retry<T>(op: string, key: string, fn: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await fn();
      } catch (err) {
        if (!isRetryable(err) || attempt >= this.attempts || this.opts.signal?.aborted) throw err;
        await this.backoff(op, key, attempt, err);
      }
    }
  }

  /** Full jitter (uniform in [0, cap]) spreads retries of many clients throttled at the same moment. */
  private async backoff(op: string, key: string, attempt: number, error: unknown): Promise<void> {
    const cap = Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** (attempt - 1));
    const delayMs = Math.round(this.random() * cap);
    this.opts.onRetry?.({ op, key, attempt, delayMs, error });
    const signal = this.opts.signal;
    if (!signal) return this.sleep(delayMs);
    let onAbort = () => undefined as void;
    const stopped = new Promise<void>((r) => {
      onAbort = r;
      signal.addEventListener('abort', onAbort, { once: true });
    });
    try {
      await Promise.race([this.sleep(delayMs), stopped]);
    } finally {
      signal.removeEventListener('abort', onAbort);
    }
    if (signal.aborted) throw error;
  }
}
