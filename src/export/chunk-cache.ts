// Verified chunk plaintexts for the export, fetched on first read through the same reader `recover` uses, kept in
// a byte-bounded LRU; one fetch per chunk however many readers wait for it, and a bounded number to the store.
import type { EncryptionKey } from '../crypto/keys.js';
import { ErrorCodes, RnodeError, isRnodeError } from '../errors.js';
import { layout } from '../repository/names.js';
import { sharedSlice } from '../native/index.js';
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
  /** Plaintext buffers allocated; every other fetch decoded into a recycled one. */
  buffersAllocated: number;
}

interface Fetching {
  promise: Promise<Buffer>;
  waiters: number;
}

/**
 * Plaintext buffers are recycled: a chunk's plaintext decoded into fresh memory cost ~10x the decode (a page fault
 * per 4 KiB, and unmapping shared memory flushes every thread's TLB), measured on an nbdcopy of the export. A buffer
 * is reused only once it has left the LRU and no reader holds it: get() pins what it returns, release() unpins, and
 * a reader that never releases only keeps its buffer from being reused (the pins are weak).
 *
 * A chunk every byte of which has been served since it was fetched (served()) leaves the LRU at once: that is a
 * copy streaming through the disk, which will not read it again, and keeping it would grow the cache to its bound
 * with fresh memory. Retiring it keeps a streaming copy on a few dozen recycled buffers: an nbdcopy of a 512 MiB
 * point cost the export 2.3 s of CPU instead of 3.6 s (workers 0.4 s instead of 0.9 s each), and the
 * copy took 5.8 s instead of 7-10 s (load average 9 on 2 cores).
 */
export class ChunkCache {
  private readonly lru: Lru<string, Buffer>;
  private readonly inflight = new Map<string, Fetching>();
  private readonly pins = new WeakMap<Buffer, number>();
  private readonly evictedPinned = new WeakSet<Buffer>();
  /**
   * Plaintext buffers no chunk holds, for the next fetches: every one is kept (see recycle()), and one is allocated
   * only when none is free.
   */
  private readonly free: Buffer[] = [];
  /** The whole buffer behind a short last chunk's plaintext (a view of it), so that it is recycled too. */
  private readonly wholeOf = new WeakMap<Buffer, Buffer>();
  /** Bytes served of each cached chunk since it was fetched (see served()). */
  private readonly servedBytes = new Map<string, number>();
  private readonly slots: BufferPool<Buffer>;
  private readonly timeoutMs: number;
  private readonly keyHeld?: { release: () => void; done: Promise<void> };
  readonly stats: CacheStats = { hits: 0, misses: 0, fetches: 0, bytesFetched: 0, errors: 0, cachedBytes: 0, buffersAllocated: 0 };

  constructor(private readonly opts: ChunkCacheOptions) {
    this.lru = new Lru(
      opts.cacheBytes ?? DEFAULT_CACHE_BYTES,
      (b) => b.length,
      (b, k) => this.evicted(b, k),
    );
    const concurrency = opts.concurrency ?? 8;
    this.slots = new BufferPool(concurrency, () => sharedSlice(maxObjectBytes(opts.chunkSize)));
    this.timeoutMs = opts.fetchTimeoutMs ?? 120_000;
    if (opts.seal) this.keyHeld = holdWorkerKey(opts.seal.key);
  }

  /**
   * The verified plaintext of a chunk (shared with the cache: callers must not modify it), pinned: the caller calls
   * release() with it once nothing reads it any more (a reply is on the wire), so its memory can be reused.
   */
  get(e: ChunkEntry, point: number): Promise<Buffer> {
    const hit = this.peek(e);
    if (hit) return Promise.resolve(hit);
    const k = `${e.writer}/${e.index}`;
    const pending = this.inflight.get(k);
    if (pending) {
      this.stats.hits++;
      pending.waiters++;
      return pending.promise;
    }
    this.stats.misses++;
    return this.fetch(k, e, point, 1);
  }

  /** get() of a chunk that is cached, without a promise: its plaintext, pinned, or undefined when it is not cached. */
  peek(e: ChunkEntry): Buffer | undefined {
    const hit = this.lru.get(`${e.writer}/${e.index}`);
    if (hit) {
      this.stats.hits++;
      this.pin(hit, 1);
    }
    return hit;
  }

  /** Done reading a buffer get() returned. */
  release(b: Buffer): void {
    const n = (this.pins.get(b) ?? 0) - 1;
    if (n > 0) {
      this.pins.set(b, n);
      return;
    }
    this.pins.delete(b);
    if (this.evictedPinned.has(b)) {
      this.evictedPinned.delete(b);
      this.recycle(b);
    }
  }

  /** Starts fetching a chunk for read-ahead when a store slot is free; never queues behind demand reads. */
  prefetch(e: ChunkEntry, point: number): void {
    const k = `${e.writer}/${e.index}`;
    if (this.lru.has(k) || this.inflight.has(k) || this.slots.available < 2) return;
    this.fetch(k, e, point, 0).catch(() => undefined);
  }

  isCached(e: ChunkEntry): boolean {
    return this.lru.has(`${e.writer}/${e.index}`);
  }

  /**
   * A reader was given `bytes` of a chunk's plaintext. Once as many bytes as the chunk holds were served, it leaves
   * the cache (its buffer is reused once its readers released it). Overlapping reads count twice: that only retires
   * a chunk early, which costs a fetch if it is read again, never a wrong byte.
   */
  served(e: ChunkEntry, bytes: number): void {
    const k = `${e.writer}/${e.index}`;
    if (!this.lru.has(k)) return;
    const n = (this.servedBytes.get(k) ?? 0) + bytes;
    if (n < e.plainLength) {
      this.servedBytes.set(k, n);
      return;
    }
    this.lru.evict(k);
    this.stats.cachedBytes = this.lru.weight;
  }

  private fetch(k: string, e: ChunkEntry, point: number, waiters: number): Promise<Buffer> {
    const f: Fetching = { waiters, promise: undefined as unknown as Promise<Buffer> };
    f.promise = this.fetchOnce(e, point).then(
      (b) => {
        this.inflight.delete(k);
        // Pinned for every waiter before it enters the LRU, so no eviction in between can recycle it.
        this.pin(b, f.waiters);
        this.lru.set(k, b); // b is the newest: what this evicts is always older
        this.stats.cachedBytes = this.lru.weight;
        return b;
      },
      (err) => {
        this.inflight.delete(k);
        throw err;
      },
    );
    this.inflight.set(k, f);
    return f.promise;
  }

  private pin(b: Buffer, n: number): void {
    if (n > 0) this.pins.set(b, (this.pins.get(b) ?? 0) + n);
  }

  private evicted(b: Buffer, k: string): void {
    this.servedBytes.delete(k);
    if ((this.pins.get(b) ?? 0) > 0) this.evictedPinned.add(b);
    else this.recycle(b);
  }

  /**
   * Every buffer a chunk left goes back to the free list, none to the GC: a buffer is allocated only when none is
   * free, so the cache's buffers (cached, pinned by readers, being filled, or free) never outnumber what the cache,
   * its readers and its fetches hold at once. Kept up to a fixed 32 MiB before, a streaming copy after random reads
   * dropped most of them and allocated as many afresh: an export with the default 256 MiB cache held 0.8-1.3 GiB
   * until collections found them (shared memory, seen by the codec workers too), and more with arena slices.
   */
  private recycle(b: Buffer): void {
    const whole = this.wholeOf.get(b) ?? b;
    if (whole.length === this.opts.chunkSize) this.free.push(whole);
  }

  private allocate(): Buffer {
    this.stats.buffersAllocated++;
    return sharedSlice(this.opts.chunkSize);
  }

  private async fetchOnce(e: ChunkEntry, point: number): Promise<Buffer> {
    const { store, disk, chunkSize, seal } = this.opts;
    const object = await this.slots.acquire();
    // The object buffer is pooled (reused by the next fetch); the plaintext is decoded straight into a buffer of its
    // own that the cache then keeps, so no copy is made (a copy of shared memory costs more than the decode).
    const slot: ReadSlot = { object, plain: this.free.pop() ?? this.allocate() };
    let timer: NodeJS.Timeout | undefined;
    const read = readChunk(store, disk, chunkSize, e, point, slot, seal).finally(() => this.slots.release(object));
    try {
      const plain = await Promise.race([
        read,
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () =>
              reject(
                new RnodeError(
                  ErrorCodes.STORE_UNAVAILABLE,
                  `the store did not deliver chunk ${e.index} within ${this.timeoutMs} ms; check the store's health`,
                  { retryable: true },
                ),
              ),
            this.timeoutMs,
          );
        }),
      ]);
      this.stats.fetches++;
      this.stats.bytesFetched += e.storedLength;
      // A view of slot.plain (readChunk's contract); a short one is recycled as the whole buffer.
      if (plain !== slot.plain && plain.buffer === slot.plain.buffer && plain.byteOffset === slot.plain.byteOffset)
        this.wholeOf.set(plain, slot.plain);
      return plain;
    } catch (err) {
      read.catch(() => undefined);
      this.stats.errors++;
      // The object the reader named (a pack of repository v2); a legacy point's chunk object when it named none.
      const named = isRnodeError(err) && typeof err.details.key === 'string' ? err.details.key : undefined;
      const key = named ?? (e.id ? undefined : layout.chunk(disk, e.writer, e.index));
      this.opts.log?.('chunk-read-failed', {
        chunk: e.index,
        offset: e.index * chunkSize,
        ...(key !== undefined ? { key } : {}),
        point,
        code: isRnodeError(err) ? err.code : 'RNODE_INTERNAL',
        message: (err as Error).message,
      });
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  async close(): Promise<void> {
    await Promise.allSettled([...this.inflight.values()].map((f) => f.promise));
    this.lru.clear();
    this.servedBytes.clear();
    this.free.length = 0;
    this.keyHeld?.release();
    await this.keyHeld?.done;
  }
}

/** Keeps the key's subkeys on the codec workers until release() (an export decodes chunks for its whole life). */
function holdWorkerKey(key: EncryptionKey): { release: () => void; done: Promise<void> } {
  let release!: () => void;
  const until = new Promise<void>((r) => {
    release = r;
  });
  const done = withWorkerKey(key, () => until);
  return { release, done };
}
