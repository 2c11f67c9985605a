// Holds the bytes put into a store to a bandwidth (replicate --bandwidth), whatever the backend: fs, clouds
// and ws:// alike. Puts marked `control` (lease writes) pass at once, so a slow link never costs the lease.
import type { TokenBucket } from '../../throttle.js';
import type { ByteRange, ObjectInfo, ObjectStore, PutOptions, StoreCapabilities } from '../types.js';

export class ThrottledStore implements ObjectStore {
  readonly location: string;
  readonly capabilities: StoreCapabilities;

  constructor(
    private readonly inner: ObjectStore,
    private readonly bucket: TokenBucket,
  ) {
    this.location = inner.location;
    this.capabilities = inner.capabilities;
  }

  async put(key: string, data: Uint8Array, opts?: PutOptions): Promise<ObjectInfo> {
    if (!opts?.control) await this.bucket.take(data.byteLength);
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
