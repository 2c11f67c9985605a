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
  /** A lease or other coordination write: small and urgent, so it never waits behind the bandwidth limit. */
  control?: boolean;
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
  get(key: string, range?: ByteRange): Promise<Buffer>;
  head(key: string): Promise<ObjectInfo>;
  list(prefix: string): AsyncIterable<ObjectInfo>;
  delete(key: string): Promise<void>;
  close(): Promise<void>;
}

/** Keys are '/'-separated, relative, without '.', '..' or empty segments; backends may rely on it. */
export function assertValidKey(key: string): void {
  if (key.length === 0 || key.length > 1024 || key.startsWith('/') || key.endsWith('/') ||
      key.split('/').some((s) => s === '' || s === '.' || s === '..') || /[\0\\]/.test(key)) {
    throw new Error(`invalid object key ${JSON.stringify(key)}`);
  }
}
