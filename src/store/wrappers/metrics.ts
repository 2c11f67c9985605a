// Counts calls, bytes, errors by code and latency per operation of the store it wraps.
// Placed under the retry wrapper, it sees every attempt: retried throttling shows up in `errors`.

import { isRnodeError } from '../../errors.js';
import type { ByteRange, ObjectInfo, ObjectStore, PutOptions, StoreCapabilities } from '../types.js';

export type StoreOp = 'put' | 'get' | 'head' | 'list' | 'delete';

export interface OpMetrics {
  calls: number;
  errors: number;
  /** Bytes written (put) or read (get); objects yielded for list. */
  bytes: number;
  totalMs: number;
  maxMs: number;
}

export interface StoreMetrics {
  ops: Record<StoreOp, OpMetrics>;
  /** Error count per RnodeError code ('OTHER' for anything else). */
  errorsByCode: Record<string, number>;
}

function emptyOp(): OpMetrics {
  return { calls: 0, errors: 0, bytes: 0, totalMs: 0, maxMs: 0 };
}

export class MetricsStore implements ObjectStore {
  readonly location: string;
  readonly capabilities: StoreCapabilities;
  private readonly ops: Record<StoreOp, OpMetrics> = {
    put: emptyOp(),
    get: emptyOp(),
    head: emptyOp(),
    list: emptyOp(),
    delete: emptyOp(),
  };
  private readonly errorsByCode: Record<string, number> = {};

  constructor(private readonly inner: ObjectStore) {
    this.location = inner.location;
    this.capabilities = inner.capabilities;
  }

  put(key: string, data: Uint8Array, opts?: PutOptions): Promise<ObjectInfo> {
    return this.measure(
      'put',
      () => this.inner.put(key, data, opts),
      () => data.length,
    );
  }

  get(key: string, range?: ByteRange, into?: Uint8Array): Promise<Buffer> {
    return this.measure(
      'get',
      () => this.inner.get(key, range, into),
      (b) => b.length,
    );
  }

  head(key: string): Promise<ObjectInfo> {
    return this.measure(
      'head',
      () => this.inner.head(key),
      () => 0,
    );
  }

  delete(key: string): Promise<void> {
    return this.measure(
      'delete',
      () => this.inner.delete(key),
      () => 0,
    );
  }

  /** Latency of a listing is the time until it is exhausted (or fails). */
  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    const m = this.ops.list;
    const t0 = performance.now();
    m.calls++;
    try {
      for await (const info of this.inner.list(prefix)) {
        m.bytes++;
        yield info;
      }
    } catch (err) {
      this.countError(m, err);
      throw err;
    } finally {
      this.time(m, t0);
    }
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  /** A deep copy: later calls do not change it. */
  metrics(): StoreMetrics {
    return structuredClone({ ops: this.ops, errorsByCode: this.errorsByCode });
  }

  private async measure<T>(op: StoreOp, fn: () => Promise<T>, bytes: (r: T) => number): Promise<T> {
    const m = this.ops[op];
    const t0 = performance.now();
    m.calls++;
    try {
      const r = await fn();
      m.bytes += bytes(r);
      return r;
    } catch (err) {
      this.countError(m, err);
      throw err;
    } finally {
      this.time(m, t0);
    }
  }

  private countError(m: OpMetrics, err: unknown): void {
    m.errors++;
    const code = isRnodeError(err) ? err.code : 'OTHER';
    this.errorsByCode[code] = (this.errorsByCode[code] ?? 0) + 1;
  }

  private time(m: OpMetrics, t0: number): void {
    const ms = performance.now() - t0;
    m.totalMs += ms;
    if (ms > m.maxMs) m.maxMs = ms;
  }
}
