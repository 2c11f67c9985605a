// Verified chunk plaintexts for the export, fetched on first read through the same reader `recover` uses, kept in
// a byte-bounded LRU; one fetch per chunk however many readers wait for it, and a bounded number to the store.
import type { EncryptionKey } from '../crypto/keys.js';
import { ErrorCodes, RnodeError, isRnodeError } from '../errors.js';
import { layout } from '../format/layout.js';
import { sharedAligned } from '../native/index.js';
import type { ChunkEntry } from '../format/table.js';
import { BufferPool } from '../pipeline/buffer-pool.js';
import { withWorkerKey, type ChunkSeal, type ReadSlot } from '../pipeline/chunk-codec.js';
import { maxObjectBytes } from '../pipeline/codec-workers.js';
import { readChunk } from '../pipeline/chunk-reader.js';
import type { ObjectStore } from '../store/types.js';
import { Lru } from './lru.js';

export interface ChunkCacheOptions {
  store: ObjectStore;
  disk: string;
  chunkSize: number;
  /** The disk's key when its points are encrypted (checked against the chain before this is built). */
  seal?: ChunkSeal;
  /** Plaintext bytes kept (default 256 MiB). */
  cacheBytes?: number;
  /** Chunk fetches in flight to the store (default 8). */
  concurrency?: number;
  /** A fetch that has not finished by then (retries included) fails its readers with EIO (default 120 s). */
  fetchTimeoutMs?: number;
  log?: (event: string, fields: Record<string, unknown>) => void;
}

export const DEFAULT_CACHE_BYTES = 256 * 1024 * 1024;

export interface CacheStats {
  hits: number;
  misses: number;
  fetches: number;
  bytesFetched: number;
  errors: number;
  cachedBytes: number;
}

export class ChunkCache {
  private readonly lru: Lru<string, Buffer>;
  private readonly inflight = new Map<string, Promise<Buffer>>();
  private readonly slots: BufferPool<Buffer>;
  private readonly timeoutMs: number;
  private readonly keyHeld?: { release: () => void; done: Promise<void> };
  readonly stats: CacheStats = { hits: 0, misses: 0, fetches: 0, bytesFetched: 0, errors: 0, cachedBytes: 0 };

  constructor(private readonly opts: ChunkCacheOptions) {
    this.lru = new Lru(opts.cacheBytes ?? DEFAULT_CACHE_BYTES, (b) => b.length);
    const concurrency = opts.concurrency ?? 8;
    this.slots = new BufferPool(concurrency, () => sharedAligned(maxObjectBytes(opts.chunkSize)));
    this.timeoutMs = opts.fetchTimeoutMs ?? 120_000;
    if (opts.seal) this.keyHeld = holdWorkerKey(opts.seal.key);
  }

  /** The verified plaintext of a chunk (shared with the cache: callers must not modify it). */
  get(e: ChunkEntry, point: number): Promise<Buffer> {
    const k = `${e.writer}/${e.index}`;
    const hit = this.lru.get(k);
    if (hit) { this.stats.hits++; return Promise.resolve(hit); }
    const pending = this.inflight.get(k);
    if (pending) { this.stats.hits++; return pending; }
    this.stats.misses++;
    return this.fetch(k, e, point);
  }

  /** Starts fetching a chunk for read-ahead when a store slot is free; never queues behind demand reads. */
  prefetch(e: ChunkEntry, point: number): void {
    const k = `${e.writer}/${e.index}`;
    if (this.lru.has(k) || this.inflight.has(k) || this.slots.available < 2) return;
    this.fetch(k, e, point).catch(() => undefined);
  }

  isCached(e: ChunkEntry): boolean { return this.lru.has(`${e.writer}/${e.index}`); }

  private fetch(k: string, e: ChunkEntry, point: number): Promise<Buffer> {
    const p = this.fetchOnce(e, point).finally(() => this.inflight.delete(k));
    this.inflight.set(k, p);
    p.then((b) => { this.lru.set(k, b); this.stats.cachedBytes = this.lru.weight; }, () => undefined);
    return p;
  }

  private async fetchOnce(e: ChunkEntry, point: number): Promise<Buffer> {
    const { store, disk, chunkSize, seal } = this.opts;
    const object = await this.slots.acquire();
    // The object buffer is pooled (reused by the next fetch); the plaintext is decoded straight into a buffer of its
    // own that the cache then keeps, so no copy is made (a copy of shared memory costs more than the decode).
    const slot: ReadSlot = { object, plain: sharedAligned(chunkSize) };
    let timer: NodeJS.Timeout | undefined;
    const read = readChunk(store, disk, chunkSize, e, point, slot, seal)
      .finally(() => this.slots.release(object));
    try {
      const plain = await Promise.race([read, new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new RnodeError(ErrorCodes.STORE_UNAVAILABLE,
          `the store did not deliver chunk ${e.index} within ${this.timeoutMs} ms; check the store's health`, { retryable: true })), this.timeoutMs);
      })]);
      this.stats.fetches++;
      this.stats.bytesFetched += e.storedLength;
      return plain;
    } catch (err) {
      read.catch(() => undefined);
      this.stats.errors++;
      const key = layout.chunk(disk, e.writer, e.index);
      this.opts.log?.('chunk-read-failed', {
        chunk: e.index, offset: e.index * chunkSize, key, point,
        code: isRnodeError(err) ? err.code : 'RNODE_INTERNAL', message: (err as Error).message,
      });
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  async close(): Promise<void> {
    await Promise.allSettled([...this.inflight.values()]);
    this.lru.clear();
    this.keyHeld?.release();
    await this.keyHeld?.done;
  }
}

/** Keeps the key's subkeys on the codec workers until release() (an export decodes chunks for its whole life). */
function holdWorkerKey(key: EncryptionKey): { release: () => void; done: Promise<void> } {
  let release!: () => void;
  const until = new Promise<void>((r) => { release = r; });
  const done = withWorkerKey(key, () => until);
  return { release, done };
}
