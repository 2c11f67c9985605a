// The one storage interface every backend implements (fs, memory, s3, azure, gcs, remote).
// Guarantees every backend must give, checked by test/store/conformance.ts:
//  - put is atomic: a reader sees the whole old object, the whole new object, or not-found; never a part.
//  - read-after-write: once put resolves, get/head/list see the new object (and delete likewise).
//  - put with ifNoneMatch fails with STORE_PRECONDITION when the key exists (where the backend enforces it;
//    `capabilities.conditionalPut` says whether it does).
//  - get with a range returns exactly bytes [offset, offset+length) clipped at the end of the object;
//    a range starting past the end returns an empty buffer.
//  - list yields every key under the prefix exactly once, in ascending byte order of the key.
//  - delete of a missing key succeeds (deletes are idempotent).
// Errors are RnodeError with STORE_* codes: STORE_NOT_FOUND for a missing key, STORE_PRECONDITION for a failed
// condition, retryable=true for throttling, 5xx, resets and timeouts.

export interface ObjectInfo {
  key: string;
  size: number;
  /** Opaque version tag (ETag, generation, mtime+size); changes on every put. */
  etag?: string;
}

export interface ByteRange {
  offset: number;
  /** Omitted: to the end of the object. */
  length?: number;
}

export interface PutOptions {
  /** Fail with STORE_PRECONDITION if the key already exists. */
  ifNoneMatch?: boolean;
  /** Fail with STORE_PRECONDITION unless the current object has this etag. */
  ifMatch?: string;
  /** A lease write, a checkpoint or another coordination write: small and urgent, so it never waits for bandwidth. */
  control?: boolean;
  /** Set by a writer that puts a legacy chunk object; stores that do not label what they carry ignore it. */
  chunk?: ChunkRecord;
  /**
   * Once aborted, the object is not made visible (the put fails with the signal's reason), where the store can still
   * tell: a fs store checks it last, before the rename. A receiving node's session whose writer lost its lease
   * (transport/server.ts).
   */
  signal?: AbortSignal;
  /**
   * The writer is stopping: once aborted, a put that has not started yet (queued for a ws link's credit or pace) fails
   * with RNODE_CANCELLED instead of being sent; one under way completes. A stop on a slow link waited for every queued
   * pack to cross it.
   */
  stop?: AbortSignal;
}

/**
 * What a legacy chunk object is, told by the writer that built it: a ws peer labels its chunk frames with it (the
 * node checks the labels against the chunk header), so the transport never parses chunk bytes.
 */
export interface ChunkRecord {
  /** Its codec is not none. */
  compressed: boolean;
  /** Its header says ENCRYPTED (chunk format version 2). */
  encrypted: boolean;
  /** The header's plaintext digest: xxh64, or the keyed digest of an encrypted chunk. */
  plainXxh64: bigint;
  /** Where the chunk starts on its disk (index × chunk size), for the node's messages; the node derives it when absent. */
  diskOffset?: number;
}

export interface StoreCapabilities {
  /** ifNoneMatch / ifMatch are enforced atomically by the backend. */
  conditionalPut: boolean;
}

export interface ObjectStore {
  /** Location for messages; never contains secrets. */
  readonly location: string;
  readonly capabilities: StoreCapabilities;
  put(key: string, data: Uint8Array, opts?: PutOptions): Promise<ObjectInfo>;
  /**
   * into: a buffer the caller would copy the bytes to anyway; a backend that can reads straight into it and returns
   * a view of it (the fs store does), others ignore it. Callers compare the result's memory with into's.
   */
  get(key: string, range?: ByteRange, into?: Uint8Array): Promise<Buffer>;
  head(key: string): Promise<ObjectInfo>;
  list(prefix: string): AsyncIterable<ObjectInfo>;
  delete(key: string): Promise<void>;
  close(): Promise<void>;
  /** Set by a store whose far end owns the disks' leases (a ws peer): writers go through it (src/repository/lease.ts). */
  readonly leases?: LeaseAuthority;
  /**
   * The same backend for coordination calls (lease reads and writes): past the concurrency limit and the bandwidth
   * wait, so a renewal never queues behind data puts. Set by wrapStore; a bare backend is its own lane.
   */
  readonly controlLane?: ObjectStore;
  /**
   * Set by a store that takes objects of at most this many bytes (a ws peer: the limit its node sent in the last
   * handshake, so read it once the store has been used). Writers make their packs fit it.
   */
  readonly maxPutBytes?: number;
}

/** A disk's one-writer lease as stored in disks/<disk>/lease.json. */
export interface LeaseRecord {
  format: 'rnode-lease';
  disk: string;
  holder: string;
  /** Fencing token: strictly greater for every new holder of this disk's lease. */
  token: number;
  acquiredAt: string;
  /** When the holder last extended it (absent in leases written before it existed: acquiredAt counts). */
  renewedAt?: string;
  expiresAt: string;
}

/**
 * Who writes a disk's lease record. Locally the writer itself, with conditional puts (StoreLeases in
 * src/repository/lease.ts); through a ws peer the receiving node (lease messages), which never lets a peer write a
 * lease object directly.
 */
export interface LeaseAuthority {
  /** Takes the lease, or throws LEASE_HELD (details: holder, expiresAt) while another live holder has it. */
  acquire(disk: string, holder: string, ttlMs: number, breakDead?: string): Promise<LeaseRecord>;
  /** Extends it, or throws LEASE_LOST when someone else holds it now. */
  renew(record: LeaseRecord, ttlMs: number): Promise<LeaseRecord>;
  /** Expires it (kept, not deleted, so the fencing token keeps growing). */
  release(record: LeaseRecord): Promise<void>;
  /**
   * Throws LEASE_LOST unless the stored lease is still this record's (holder and token). Without it (a node's peers
   * do not read lease records), a holder knows only what its own renewals told it.
   */
  confirm?(record: LeaseRecord): Promise<void>;
}

/** A key segment never starts with this: the fs store names its temp files so, and they can never be keys. */
export const RESERVED_SEGMENT_PREFIX = '.rnode-tmp.';

/**
 * Keys are '/'-separated, relative, without '.', '..' or empty segments, NUL or backslash, and no segment starts
 * with RESERVED_SEGMENT_PREFIX; backends may rely on it.
 */
export function assertValidKey(key: string): void {
  if (
    key.length === 0 ||
    key.length > 1024 ||
    key.startsWith('/') ||
    key.endsWith('/') ||
    key.split('/').some((s) => s === '' || s === '.' || s === '..' || s.startsWith(RESERVED_SEGMENT_PREFIX)) ||
    /[\0\\]/.test(key)
  ) {
    throw new Error(`invalid object key ${JSON.stringify(key)}`);
  }
}
