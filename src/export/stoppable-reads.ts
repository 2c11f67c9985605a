// The store as an export reads it. A read still waiting when the export stops (a GET going through its retries on a
// store that stopped answering: minutes) held the stop for as long: the sessions waited for their requests, a
// writable export's overlay flush waited behind a write that was reading its block from the store, and SIGTERM was
// acknowledged and then not acted on. Once stopped, every read still waiting, and every later one, fails at once;
// the client connections are closed by then, so no answer is lost. Writes (none today) pass through unchanged.
import { ErrorCodes, RnodeError } from '../errors.js';
import type { ByteRange, ObjectInfo, ObjectStore, PutOptions, StoreCapabilities } from '../store/types.js';

export class StoppableReads implements ObjectStore {
  readonly location: string;
  readonly capabilities: StoreCapabilities;
  private readonly stopped: Promise<never>;
  private stopWith!: (err: Error) => void;

  constructor(private readonly inner: ObjectStore) {
    this.location = inner.location;
    this.capabilities = inner.capabilities;
    this.stopped = new Promise<never>((_, reject) => (this.stopWith = reject));
    this.stopped.catch(() => undefined); // rejects only once stopped, and is then only raced against
  }

  /** Fails every read in flight and every later one. */
  stop(): void {
    this.stopWith(new RnodeError(ErrorCodes.CANCELLED, `the export of ${this.location} is stopping; this read was not answered`));
  }

  private race<T>(p: Promise<T>): Promise<T> {
    p.catch(() => undefined); // a read left behind by the stop may still fail later: nobody is waiting for it
    return Promise.race([p, this.stopped]);
  }

  get(key: string, range?: ByteRange, into?: Uint8Array): Promise<Buffer> {
    return this.race(this.inner.get(key, range, into));
  }

  head(key: string): Promise<ObjectInfo> {
    return this.race(this.inner.head(key));
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    const it = this.inner.list(prefix)[Symbol.asyncIterator]();
    try {
      for (;;) {
        const next = await this.race(it.next());
        if (next.done) return;
        yield next.value;
      }
    } finally {
      void it.return?.()?.catch(() => undefined);
    }
  }

  put(key: string, data: Uint8Array, opts?: PutOptions): Promise<ObjectInfo> {
    return this.inner.put(key, data, opts);
  }

  delete(key: string): Promise<void> {
    return this.inner.delete(key);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
