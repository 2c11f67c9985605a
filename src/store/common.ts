// Helpers every backend shares: key checks, byte-order comparison, range clipping, and the
// constructors of the STORE_* errors so that each backend reports the same codes and sentences.

import { ErrorCodes, RnodeError, coded, oneLine } from '../errors.js';
import { badStoreUrl } from './schemes.js';
import { assertValidKey, type ByteRange } from './types.js';
import { timerDelay } from '../timer-delay.js';

function isValidKey(key: string): boolean {
  try {
    assertValidKey(key);
    return true;
  } catch {
    return false;
  }
}

/** Throws RnodeError (INTERNAL: a bad key is a bug in the caller) instead of assertValidKey's plain Error. */
export function checkKey(key: string): void {
  try {
    assertValidKey(key);
  } catch (err) {
    throw new RnodeError(ErrorCodes.INTERNAL, (err as Error).message, { cause: err, details: { key } });
  }
}

/**
 * Splits a list prefix into its directory part (whole segments, validated like a key) and the
 * partial last segment, e.g. 'disks/a/chunks/0001' -> ['disks/a/chunks', '0001'].
 */
export function splitPrefix(prefix: string): { dir: string; rest: string } {
  const slash = prefix.lastIndexOf('/');
  const dir = slash < 0 ? '' : prefix.slice(0, slash);
  const rest = slash < 0 ? prefix : prefix.slice(slash + 1);
  if (dir !== '') checkKey(dir);
  if (/[\0\\]/.test(rest)) checkKey(prefix);
  return { dir, rest };
}

/** Ascending byte order of the UTF-8 key (JS string order differs for astral characters). */
export function compareKeys(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

/** [start, end) of a range over an object of `size` bytes; empty when it starts past the end. */
export function clipRange(size: number, range?: ByteRange): { start: number; end: number } {
  if (!range) return { start: 0, end: size };
  if (
    !Number.isSafeInteger(range.offset) ||
    range.offset < 0 ||
    (range.length !== undefined && (!Number.isSafeInteger(range.length) || range.length < 0))
  ) {
    throw new RnodeError(ErrorCodes.INTERNAL, `invalid byte range ${JSON.stringify(range)}`);
  }
  const start = Math.min(range.offset, size);
  const end = range.length === undefined ? size : Math.min(size, range.offset + range.length);
  return { start, end: Math.max(start, end) };
}

/**
 * What a ranged get returns from the body a server sent for [start, end): a server that ignored the Range and
 * answered with the whole object (HTTP 200) has the range cut out here, and an empty range is empty even
 * where the request had to ask for a byte.
 */
export function rangedBody(body: Buffer, start: number, end: number, wholeObject: boolean): Buffer {
  if (wholeObject) return Buffer.from(body.subarray(start, end));
  return end === start ? Buffer.alloc(0) : body;
}

export function notFound(location: string, key: string, cause?: unknown): RnodeError {
  return new RnodeError(ErrorCodes.STORE_NOT_FOUND, `object ${key} not found in ${location}; check the store location and that the backup exists`, {
    cause,
    details: { key, location },
  });
}

export function preconditionFailed(location: string, key: string, what: string, cause?: unknown): RnodeError {
  return new RnodeError(
    ErrorCodes.STORE_PRECONDITION,
    `conditional write of ${key} in ${location} failed: ${what}; another writer changed it, re-read and retry`,
    { cause, details: { key, location } },
  );
}

/**
 * A put that found no space (ENOSPC) or no quota (EDQUOT) left: the store's state, not the command's, so STORE_IO
 * (exit 1), and the same command succeeds once space is freed. details.errno says which; isStoreFull tells it apart.
 */
export function storeFull(location: string, key: string, errno: 'ENOSPC' | 'EDQUOT', cause: unknown): RnodeError {
  return new RnodeError(
    ErrorCodes.STORE_IO,
    `store folder ${location} ${errno === 'EDQUOT' ? 'is over its disk quota' : 'has no space left'} (${errno}); ` +
      'free space (or prune its points), then run the same command again',
    { cause, details: { key, location, op: 'put', errno } },
  );
}

/** True for a storeFull error. */
export function isStoreFull(err: unknown): err is RnodeError {
  return err instanceof RnodeError && err.code === ErrorCodes.STORE_IO && (err.details.errno === 'ENOSPC' || err.details.errno === 'EDQUOT');
}

/** A store operation that failed; one that ran out of file descriptors is RESOURCE_LIMIT (raise the limit), as anywhere. */
export function ioError(location: string, op: string, key: string, cause: unknown, retryable = false): RnodeError {
  const limit = coded(cause);
  if (limit !== cause) return limit as RnodeError;
  const why = oneLine(cause instanceof Error ? cause.message : String(cause));
  return new RnodeError(ErrorCodes.STORE_IO, `${op} ${key} in ${location} failed: ${why}`, { cause, retryable, details: { key, location, op } });
}

/** Reads a whole async iterable; for tests and small listings only. */
export async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

/** What a cloud SDK error says, pulled out by each backend (status, service code, errno). */
export interface CloudFailure {
  status?: number;
  /** Service error code ('NoSuchKey', 'BlobNotFound', ...) or errno ('ECONNRESET'). */
  code?: string;
  /** The request got no answer within its timeout (each SDK says so in its own way). */
  timedOut?: boolean;
  /** That timeout, for the message. */
  timeoutMs?: number;
}

/** How long one request may wait for its answer (or an idle body) before it fails as retryable; ?requestTimeoutMs= sets it. */
export const DEFAULT_REQUEST_TIMEOUT_MS = 120_000;

/** The slowest transfer a request is given time for, on top of its timeout: 64 KiB/s (a shared, slow DR link). */
const MIN_BYTES_PER_MS = 64;

/**
 * How long one request that moves `bytes` may take in all: its timeout, plus the time the body needs at the slowest
 * link rnode is meant to work over. A fixed deadline would fail, and retry forever, a 64 MiB pack on a slow link.
 * At most the longest timer: a whole disk's upload (a gs:// restore output past ~137 GB) went over it, and a timer
 * that long fires at once.
 */
export function requestDeadlineMs(timeoutMs: number, bytes = 0): number {
  return timerDelay(timeoutMs + Math.ceil(bytes / MIN_BYTES_PER_MS));
}

/** A timer that fires `ms` after its last reset, until stopped. */
export function idleTimer(ms: number, fire: () => void): { reset(): void; stop(): void } {
  const timer = setTimeout(fire, ms);
  let stopped = false;
  return {
    // Called per chunk of a body: refresh() moves the one timer instead of making a new one each time.
    reset() {
      if (!stopped) timer.refresh();
    },
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}

/** The ?requestTimeoutMs= of a cloud URL, else the default. */
export function requestTimeoutMs(url: URL): number {
  return timerDelay(queryInt(url, 'requestTimeoutMs') ?? DEFAULT_REQUEST_TIMEOUT_MS);
}

const NETWORK_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'ETIMEDOUT',
  'EPIPE',
  'EAI_AGAIN',
  'ENETUNREACH',
  'EHOSTUNREACH',
  'ENOTFOUND',
  'TimeoutError',
  'AbortError',
  'RequestTimeout',
  'RequestTimeoutException',
  'ERR_STREAM_PREMATURE_CLOSE',
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
  'REQUEST_SEND_ERROR',
  // node-fetch (GCS): FetchError types of a request or body that timed out
  'request-timeout',
  'body-timeout',
]);
const THROTTLE_CODES = new Set([
  'SlowDown',
  'Throttling',
  'ThrottlingException',
  'TooManyRequests',
  'ServerBusy',
  'RequestLimitExceeded',
  'rateLimitExceeded',
]);
const AUTH_CODES = new Set([
  'AccessDenied',
  'InvalidAccessKeyId',
  'SignatureDoesNotMatch',
  'ExpiredToken',
  'AuthenticationFailed',
  'AuthorizationFailure',
  'AuthorizationPermissionMismatch',
  'CredentialsProviderError',
]);

/**
 * The one mapping from cloud failures to STORE_* codes (kopia's translateError): not-found and
 * precondition are answers; throttling, 5xx, resets and timeouts are retryable; the rest is not.
 */
export function cloudError(location: string, op: string, key: string, cause: unknown, f: CloudFailure): RnodeError {
  if (cause instanceof RnodeError) return cause;
  const why = oneLine(`${f.code ?? ''}${f.status ? ` (HTTP ${f.status})` : ''} ${cause instanceof Error ? cause.message : String(cause)}`);
  const details = { key, location, op, status: f.status, serviceCode: f.code };
  const mk = (code: string, msg: string, retryable = false) => new RnodeError(code, msg, { cause, retryable, details });
  if (f.status === 404) return notFound(location, key, cause);
  if (f.status === 412) return preconditionFailed(location, key, why, cause);
  if (f.status === 401 || f.status === 403 || (f.code && AUTH_CODES.has(f.code))) {
    // None found at all (S3's provider chain): say where they go, as Azure's message does for its variables.
    const fix =
      f.code === 'CredentialsProviderError'
        ? 'no credentials were found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) where rnode runs (docs/stores.md, "Credentials")'
        : 'check the credentials and their permissions';
    return mk(ErrorCodes.STORE_AUTH, `${op} ${key} in ${location} was denied: ${why}; ${fix}`);
  }
  if (f.timedOut) {
    // The SDK's own words (kept in the cause) say no more than this. Only stores take ?requestTimeoutMs=.
    const within = f.timeoutMs ? ` within ${f.timeoutMs} ms` : '';
    return mk(
      ErrorCodes.STORE_UNAVAILABLE,
      `${op} ${key} in ${location} got no answer${within}; check the endpoint and the network` +
        (f.timeoutMs ? ' (a slow link may need a larger ?requestTimeoutMs=)' : ''),
      true,
    );
  }
  if (f.status === 429 || f.status === 503 || (f.code && THROTTLE_CODES.has(f.code))) {
    return mk(ErrorCodes.STORE_THROTTLED, `${op} ${key} in ${location} was throttled: ${why}`, true);
  }
  if ((f.status !== undefined && f.status >= 500) || f.status === 408 || (f.code && NETWORK_CODES.has(f.code))) {
    return mk(
      ErrorCodes.STORE_UNAVAILABLE,
      `${op} ${key} in ${location} failed: ${why}; the service or network is unavailable: check the endpoint and the network`,
      true,
    );
  }
  return ioError(location, op, key, new Error(`${why}${ioHint(why)}`), false);
}

/** What to do about the failures a misconfigured endpoint gives, which no retry helps (what is left is STORE_IO). */
function ioHint(why: string): string {
  if (/EPROTO|wrong version number|ERR_SSL_|SSL routines/i.test(why)) {
    return '; the endpoint does not speak TLS as its scheme says: use http:// for a plain-HTTP server (an emulator), https:// for TLS';
  }
  if (/CERT|self[- ]signed|unable to (get|verify)|altname/i.test(why)) {
    return "; the server's TLS certificate is not trusted: check the endpoint's host name, or give its CA in NODE_EXTRA_CA_CERTS";
  }
  if (/Invalid URL|ERR_INVALID_URL|Only HTTP\(S\) protocols/i.test(why)) {
    return '; the endpoint is not a valid URL: write it as http(s)://host[:port]';
  }
  if (/time(d)? ?out/i.test(why)) return '; check the endpoint and the network';
  return '';
}

/** Bucket/container missing: a setup problem, never to be read as "this object is missing". */
export function containerMissing(location: string, what: string, cause: unknown): RnodeError {
  return new RnodeError(ErrorCodes.STORE_IO, `${what} of ${location} does not exist; create it or fix the store URL`, {
    cause,
    details: { location },
  });
}

/**
 * Normalizes the path part of a store URL into a key prefix: '' or 'a/b/'. `location` is the URL as given: the
 * WHATWG parser has already resolved '.' and '..' in the pathname (s3://b/a/../c is s3://b/c), so they are looked
 * for there, and refused: the store would silently be somewhere else than the URL says.
 */
export function urlPrefix(pathname: string, location: string): string {
  const raw = /^[a-z][a-z0-9+.-]*:\/\/[^/?#]*([^?#]*)/i.exec(location)?.[1] ?? '';
  if (raw.split('/').some((seg) => /^(\.|%2e){1,2}$/i.test(seg))) {
    throw badStoreUrl(location, "has a '.' or '..' segment in its path; write the prefix out in full");
  }
  let p: string;
  try {
    p = decodeURIComponent(pathname).replace(/^\/+|\/+$/g, '');
  } catch {
    throw badStoreUrl(location, 'has a malformed %-escape in its path; write % as %25');
  }
  // A prefix is a key's leading segments: a mistake in the URL, not a bug (checkKey's RNODE_INTERNAL).
  if (p !== '' && !isValidKey(p)) {
    throw badStoreUrl(location, `has the prefix ${JSON.stringify(p)}, which cannot be used: write it without empty segments (//), NUL or backslash`);
  }
  return p === '' ? '' : `${p}/`;
}

/**
 * The first value of a fallback chain (URL parameter, then variables) that is set. An empty one (AWS_REGION=, ?region=)
 * counts as unset, as docs/stores.md says: with `??` it hid the next one, and the SDK failed on the empty value.
 */
export function firstSet(...values: (string | null | undefined)[]): string | undefined {
  for (const v of values) if (v) return v;
  return undefined;
}

/** `?name=on|off|true|false|1|0|yes|no` query flags; any other value is refused (?conditional=of read as on). */
export function queryFlag(url: URL, name: string, dflt: boolean): boolean {
  const v = url.searchParams.get(name);
  if (v === null) return dflt;
  if (/^(on|true|1|yes)$/i.test(v)) return true;
  if (/^(off|false|0|no)$/i.test(v)) return false;
  throw new RnodeError(ErrorCodes.BAD_STORE_URL, `store URL parameter ${name}=${v} must be on or off (also true/false, 1/0, yes/no)`, {
    details: { parameter: name },
  });
}

export function queryInt(url: URL, name: string): number | undefined {
  const v = url.searchParams.get(name);
  if (v === null) return undefined;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n <= 0) {
    throw new RnodeError(ErrorCodes.BAD_STORE_URL, `store URL parameter ${name}=${v} must be a positive integer`);
  }
  return n;
}
