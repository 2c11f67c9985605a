// Helpers every backend shares: key checks, byte-order comparison, range clipping, and the
// constructors of the STORE_* errors so that each backend reports the same codes and sentences.

import { ErrorCodes, RnodeError } from '../errors.js';
import { assertValidKey, type ByteRange } from './types.js';

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
  if (!Number.isSafeInteger(range.offset) || range.offset < 0 ||
      (range.length !== undefined && (!Number.isSafeInteger(range.length) || range.length < 0))) {
    throw new RnodeError(ErrorCodes.INTERNAL, `invalid byte range ${JSON.stringify(range)}`);
  }
  const start = Math.min(range.offset, size);
  const end = range.length === undefined ? size : Math.min(size, range.offset + range.length);
  return { start, end: Math.max(start, end) };
}

export function notFound(location: string, key: string, cause?: unknown): RnodeError {
  return new RnodeError(ErrorCodes.STORE_NOT_FOUND,
    `object ${key} not found in ${location}; check the store location and that the backup exists`,
    { cause, details: { key, location } });
}

export function preconditionFailed(location: string, key: string, what: string, cause?: unknown): RnodeError {
  return new RnodeError(ErrorCodes.STORE_PRECONDITION,
    `conditional write of ${key} in ${location} failed: ${what}; another writer changed it, re-read and retry`,
    { cause, details: { key, location } });
}

export function ioError(location: string, op: string, key: string, cause: unknown, retryable = false): RnodeError {
  const why = cause instanceof Error ? cause.message : String(cause);
  return new RnodeError(ErrorCodes.STORE_IO, `${op} ${key} in ${location} failed: ${why}`,
    { cause, retryable, details: { key, location, op } });
}

/** Reads a whole async iterable; for tests and small listings only. */
export async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}
