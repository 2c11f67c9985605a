// Holds the bytes put into a store to a bandwidth, whatever the backend: fs, clouds and ws:// alike, for the CLI
// (replicate --bandwidth) and the agent (policy/job bandwidth, the node's --bandwidth) the same way. Puts marked
// `control` (lease writes, a run's checkpoints) pass at once, so a slow link never costs the lease, and a stopped run's
// last checkpoint does not wait behind the packs it drops.
import type { TokenBucket } from '../../throttle.js';
import type { ByteRange, ObjectInfo, ObjectStore, PutOptions, StoreCapabilities } from '../types.js';

export class ThrottledStore implements ObjectStore {
  readonly location: string;
  readonly capabilities: StoreCapabilities;

  /**
   * @param buckets every limit a put must pass, in order (a job's own, then one its node shares with other jobs).
   * @param signal ends a put's wait for bandwidth (a cancelled job stops at once, not after its queued bytes).
   */
  constructor(
    private readonly inner: ObjectStore,
    private readonly buckets: readonly TokenBucket[],
    private readonly signal?: AbortSignal,
  ) {
    this.location = inner.location;
    this.capabilities = inner.capabilities;
  }

  async put(key: string, data: Uint8Array, opts?: PutOptions): Promise<ObjectInfo> {
    if (!opts?.control) for (const bucket of this.buckets) await bucket.take(data.byteLength, this.signal);
    return this.inner.put(key, data, opts);
  }

  get(key: string, range?: ByteRange): Promise<Buffer> {
    return this.inner.get(key, range);
  }

  head(key: string): Promise<ObjectInfo> {
    return this.inner.head(key);
  }

  list(prefix: string): AsyncIterable<ObjectInfo> {
    return this.inner.list(prefix);
  }

  delete(key: string): Promise<void> {
    return this.inner.delete(key);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
