// The one place the store wrappers are assembled, outermost first: bandwidth -> retry -> concurrency limit ->
// metrics -> backend; lease calls take a lane of their own (retry -> metrics -> backend). Retry sits outside the
// limit so that a backoff sleep does not hold a slot, and the bandwidth wait outside both for the same reason.

import { TokenBucket } from '../throttle.js';
import type { ByteRange, ObjectInfo, ObjectStore, PutOptions } from './types.js';
import { LimitedStore } from './wrappers/limited.js';
import { MetricsStore, type StoreMetrics } from './wrappers/metrics.js';
import { RetryingStore, type RetryOptions } from './wrappers/retrying.js';
import { ThrottledStore } from './wrappers/throttled.js';

export interface WrapOptions {
  /** Retry policy; false: no retries (tests of the raw backend). */
  retry?: RetryOptions | false;
  /** Calls in flight to this backend (default 16); false: unlimited. */
  concurrency?: number | false;
  /**
   * The bandwidth limit: bytes/s put into the store (object data sent to the target), for every backend alike;
   * puts marked `control` (lease writes, a run's checkpoints) are exempt. Absent or 0: unlimited.
   */
  bandwidth?: number;
  /** A limit this store shares with others (an agent's node-wide --bandwidth), passed after its own. */
  sharedBandwidth?: TokenBucket;
  /** The job's stop signal: ends a put's wait for bandwidth, and retries (the control lane's lease calls keep theirs). */
  signal?: AbortSignal;
}

export const DEFAULT_CONCURRENCY = 16;

/** A wrapped store: the ObjectStore contract plus the metrics of every attempt made on the backend. */
export interface WrappedStore extends ObjectStore {
  metrics(): StoreMetrics;
  /** The backend under the wrappers (for its own extra methods and for tests). */
  readonly backend: ObjectStore;
}

export function wrapStore(backend: ObjectStore, opts: WrapOptions = {}): WrappedStore {
  const measured = new MetricsStore(backend);
  let outer: ObjectStore = measured;
  const concurrency = opts.concurrency ?? DEFAULT_CONCURRENCY;
  if (concurrency !== false) outer = new LimitedStore(outer, concurrency);
  if (opts.retry !== false) outer = new RetryingStore(outer, { ...opts.retry, ...(opts.signal ? { signal: opts.signal } : {}) });
  const buckets = [...(opts.bandwidth ? [new TokenBucket(opts.bandwidth)] : []), ...(opts.sharedBandwidth ? [opts.sharedBandwidth] : [])];
  if (buckets.length > 0) outer = new ThrottledStore(outer, buckets, opts.signal);
  const top = outer;
  // Leases skip the limit and the bucket; they keep retries and are counted like every other call.
  const control = opts.retry !== false ? new RetryingStore(measured, opts.retry ?? {}) : measured;
  return {
    location: backend.location,
    capabilities: backend.capabilities,
    backend,
    ...(backend.leases ? { leases: backend.leases } : {}),
    controlLane: control,
    get maxPutBytes(): number | undefined {
      return backend.maxPutBytes;
    },
    put: (key: string, data: Uint8Array, o?: PutOptions): Promise<ObjectInfo> => top.put(key, data, o),
    get: (key: string, range?: ByteRange, into?: Uint8Array): Promise<Buffer> => top.get(key, range, into),
    head: (key: string): Promise<ObjectInfo> => top.head(key),
    list: (prefix: string): AsyncIterable<ObjectInfo> => top.list(prefix),
    delete: (key: string): Promise<void> => top.delete(key),
    close: (): Promise<void> => top.close(),
    metrics: (): StoreMetrics => measured.metrics(),
  };
}
