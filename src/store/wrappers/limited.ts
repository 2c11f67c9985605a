// Bounds the number of calls in flight to one backend (SDK sockets, server throttling, memory).
// list is not limited: an open listing would hold a slot for as long as its consumer iterates.

import pLimit, { type LimitFunction } from 'p-limit';
import type { ByteRange, ObjectInfo, ObjectStore, PutOptions, StoreCapabilities } from '../types.js';

export class LimitedStore implements ObjectStore {
  readonly location: string;
  readonly capabilities: StoreCapabilities;
  private readonly limit: LimitFunction;

  constructor(
    private readonly inner: ObjectStore,
    concurrency: number,
  ) {
    this.location = inner.location;
    this.capabilities = inner.capabilities;
    this.limit = pLimit(concurrency);
  }

  put(key: string, data: Uint8Array, opts?: PutOptions): Promise<ObjectInfo> {
    return this.limit(() => this.inner.put(key, data, opts));
  }

  get(key: string, range?: ByteRange, into?: Uint8Array): Promise<Buffer> {
    return this.limit(() => this.inner.get(key, range, into));
  }

  head(key: string): Promise<ObjectInfo> {
    return this.limit(() => this.inner.head(key));
  }

  delete(key: string): Promise<void> {
    return this.limit(() => this.inner.delete(key));
  }

  list(prefix: string): AsyncIterable<ObjectInfo> {
    return this.inner.list(prefix);
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  /** Calls running and waiting, for metrics and tests. */
  get pending(): { active: number; queued: number } {
    return { active: this.limit.activeCount, queued: this.limit.pendingCount };
  }
}
