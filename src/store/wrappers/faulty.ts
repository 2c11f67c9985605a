// Test wrapper that injects scripted faults per method: errors, delays, hangs, seeded random failures.
// assertAllFired() fails a test whose scripted fault never fired, so a test cannot pass by missing it.

import { ErrorCodes, RnodeError } from '../../errors.js';
import type { ByteRange, ObjectInfo, ObjectStore, PutOptions, StoreCapabilities } from '../types.js';
import type { StoreOp } from './metrics.js';

export interface Fault {
  /** Fire on the Nth matching call of the method after addFault (1-based, default 1: the next one). */
  nth?: number;
  /** How many consecutive matching calls it fires on, from the first one (default 1; Infinity: all). */
  times?: number;
  /** Fire on each matching call with this probability (seeded PRNG; nth/times ignored). Not checked by assertAllFired. */
  probability?: number;
  /** Only calls on keys (list: prefixes) this accepts count and fire. */
  match?: (key: string) => boolean;
  /** Wait this long before going on (with the call or the error). */
  delayMs?: number;
  /**
   * Hang like a dead connection: after hangMs (default: until close()) fail with a retryable
   * STORE_UNAVAILABLE timeout, without calling the inner store.
   */
  hang?: boolean;
  hangMs?: number;
  /** The error to throw; a { code, retryable } gives an RnodeError. Omitted with delayMs: delay only. */
  error?: Error | { code: string; retryable?: boolean; message?: string };
  /** Run the real call first, then throw: the write happened but the caller is told it failed. */
  afterCall?: boolean;
}

interface ArmedFault extends Fault {
  method: StoreOp;
  label: string;
  seen: number;
  fired: number;
}

/** mulberry32: small, fast, good enough to make a test's random faults reproducible. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export class FaultyStore implements ObjectStore {
  readonly location: string;
  readonly capabilities: StoreCapabilities;
  /** Calls per method, faulted or not. */
  readonly calls: Record<StoreOp, number> = { put: 0, get: 0, head: 0, list: 0, delete: 0 };
  private readonly faults: ArmedFault[] = [];
  private readonly random: () => number;
  private readonly hangs = new Set<() => void>();

  constructor(
    private readonly inner: ObjectStore,
    opts: { seed?: number } = {},
  ) {
    this.location = inner.location;
    this.capabilities = inner.capabilities;
    this.random = prng(opts.seed ?? 1);
  }

  /** Scripts a fault; returns this for chaining. */
  addFault(method: StoreOp, fault: Fault): this {
    const label = `${method} fault #${this.faults.length + 1}${fault.nth ? ` (call ${fault.nth})` : ''}`;
    this.faults.push({ times: 1, ...fault, method, label, seen: 0, fired: 0 });
    return this;
  }

  /** Faults fired so far, over all methods (the soak prints it). */
  get firedCount(): number {
    return this.faults.reduce((n, f) => n + f.fired, 0);
  }

  /** Throws if a scripted (non-probabilistic) fault fired fewer times than it was scripted for. */
  assertAllFired(): void {
    const missed = this.faults.filter((f) => f.probability === undefined && (Number.isFinite(f.times) ? f.fired < f.times! : f.fired === 0));
    if (missed.length > 0) {
      throw new Error(`scripted faults did not fire: ${missed.map((f) => `${f.label} fired ${f.fired}/${f.times}`).join(', ')}`);
    }
  }

  put(key: string, data: Uint8Array, opts?: PutOptions): Promise<ObjectInfo> {
    return this.call('put', key, () => this.inner.put(key, data, opts));
  }

  get(key: string, range?: ByteRange, into?: Uint8Array): Promise<Buffer> {
    return this.call('get', key, () => this.inner.get(key, range, into));
  }

  head(key: string): Promise<ObjectInfo> {
    return this.call('head', key, () => this.inner.head(key));
  }

  delete(key: string): Promise<void> {
    return this.call('delete', key, () => this.inner.delete(key));
  }

  /** A list fault acts when the listing starts. */
  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    const it = await this.call('list', prefix, async () => this.inner.list(prefix));
    yield* it;
  }

  /** Releases hanging calls (they fail) and closes the inner store. */
  async close(): Promise<void> {
    for (const release of this.hangs) release();
    await this.inner.close();
  }

  private async call<T>(method: StoreOp, key: string, fn: () => Promise<T>): Promise<T> {
    this.calls[method]++;
    const fault = this.pick(method, key);
    if (!fault) return fn();
    if (fault.delayMs) await new Promise((r) => setTimeout(r, fault.delayMs));
    if (fault.hang) {
      await new Promise<void>((resolve) => {
        const timer = fault.hangMs === undefined ? undefined : setTimeout(done, fault.hangMs);
        const hangs = this.hangs;
        function done(): void {
          clearTimeout(timer);
          hangs.delete(done);
          resolve();
        }
        this.hangs.add(done);
      });
      throw new RnodeError(ErrorCodes.STORE_UNAVAILABLE, `${method} ${key} in ${this.location} timed out (injected)`, {
        retryable: true,
        details: { key, injected: true },
      });
    }
    if (!fault.error) return fn();
    if (fault.afterCall) await fn();
    throw this.makeError(fault, key);
  }

  /** The first armed fault that takes this call; every matching fault counts the call. */
  private pick(method: StoreOp, key: string): ArmedFault | undefined {
    let chosen: ArmedFault | undefined;
    for (const f of this.faults) {
      if (f.method !== method || (f.match && !f.match(key))) continue;
      f.seen++;
      if (chosen) continue;
      const fires = f.probability !== undefined ? this.random() < f.probability : f.seen >= (f.nth ?? 1) && f.fired < f.times!;
      if (fires) {
        f.fired++;
        chosen = f;
      }
    }
    return chosen;
  }

  private makeError(f: ArmedFault, key: string): Error {
    const e = f.error!;
    if (e instanceof Error) return e;
    return new RnodeError(e.code, e.message ?? `${f.label} on ${key} in ${this.location} (injected)`, {
      retryable: e.retryable ?? false,
      details: { key, injected: true },
    });
  }
}
