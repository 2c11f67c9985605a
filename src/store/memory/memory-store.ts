// ObjectStore held in process memory, with the same semantics as the real backends (conditions
// enforced, byte-ordered listings, copies in and out): the reference backend for tests.

import { checkKey, clipRange, compareKeys, notFound, preconditionFailed, splitPrefix } from '../common.js';
import type { ByteRange, ObjectInfo, ObjectStore, PutOptions, StoreCapabilities } from '../types.js';

interface Entry {
  data: Buffer;
  etag: string;
}

export class MemoryStore implements ObjectStore {
  readonly capabilities: StoreCapabilities = { conditionalPut: true };
  private readonly objects = new Map<string, Entry>();
  private version = 0;

  constructor(readonly location: string = 'mem://') {}

  async put(key: string, data: Uint8Array, opts: PutOptions = {}): Promise<ObjectInfo> {
    checkKey(key);
    // Check and write in one synchronous step: that is what makes the conditions atomic here.
    const cur = this.objects.get(key);
    if (opts.ifNoneMatch && cur) throw preconditionFailed(this.location, key, 'the key already exists');
    if (opts.ifMatch !== undefined && cur?.etag !== opts.ifMatch) {
      throw preconditionFailed(this.location, key, cur ? `etag is ${cur.etag}, not ${opts.ifMatch}` : 'the key does not exist');
    }
    const entry = { data: Buffer.from(data), etag: `m${++this.version}` }; // copy: callers reuse buffers
    this.objects.set(key, entry);
    return { key, size: entry.data.length, etag: entry.etag };
  }

  async get(key: string, range?: ByteRange): Promise<Buffer> {
    const e = this.entry(key);
    const { start, end } = clipRange(e.data.length, range);
    return Buffer.from(e.data.subarray(start, end));
  }

  async head(key: string): Promise<ObjectInfo> {
    const e = this.entry(key);
    return { key, size: e.data.length, etag: e.etag };
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    splitPrefix(prefix);
    // Snapshot first so puts/deletes during iteration do not disturb it.
    const keys = [...this.objects.keys()].filter((k) => k.startsWith(prefix)).sort(compareKeys);
    for (const key of keys) {
      const e = this.objects.get(key);
      if (e) yield { key, size: e.data.length, etag: e.etag };
    }
  }

  async delete(key: string): Promise<void> {
    checkKey(key);
    this.objects.delete(key);
  }

  /** Keeps the data: a named mem:// store reopened in the same process sees it again. */
  async close(): Promise<void> {}

  private entry(key: string): Entry {
    checkKey(key);
    const e = this.objects.get(key);
    if (!e) throw notFound(this.location, key);
    return e;
  }
}
