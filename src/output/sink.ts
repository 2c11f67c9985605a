// What a restore writes into: a local file or block device, or a cloud object that a cloud imports as a disk.
// The restore pipeline (src/jobs/restore.ts) drives every sink through these calls; the sinks own the format.
import { isZero } from '../native/index.js';

/** A byte range of the disk. */
export interface Extent {
  offset: number;
  length: number;
}

export interface OpenOutputOptions {
  diskSize: number;
  /** Credentials and emulator hosts, read as the store URLs of the same scheme read them. */
  env: NodeJS.ProcessEnv;
  /** The store being read (its location, never secret): an output inside it is refused. */
  storeLocation?: string;
  /** The disk is encrypted at rest: a local image file is created readable by its owner only. */
  ownerOnly?: boolean;
}

export interface OutputSink {
  /** Where the output goes, for messages and results; never holds secrets. */
  readonly location: string;
  /**
   * True: write() and zero() must come in ascending offset order and together cover the whole disk exactly once
   * (streamed formats: S3 parts, a gzip'd tar). False: any order, and zero() only says "leave this range zero".
   */
  readonly ordered: boolean;
  /**
   * Called once before any data, for formats whose header lists the data ranges up front (the sparse tar):
   * extents() yields, ascending and each time anew, the ranges the coming write() calls will cover.
   */
  prepare?(extents: () => AsyncIterable<Extent>): Promise<void>;
  /** Verified plaintext at a disk offset. `data` is only valid until the promise resolves. Returns bytes sent. */
  write(offset: number, data: Buffer): Promise<number>;
  /** A range of the disk that reads as zeros (a zero chunk or a hole). Returns bytes sent. */
  zero(offset: number, length: number): Promise<number>;
  /** Every byte was given: make the output durable and visible. */
  finish(): Promise<void>;
  /**
   * The restore failed with `cause`: remove every partial trace (idempotent; never throws). A sink that cannot says
   * what is left in cause's message: the error the command ends with (with several writes in flight, not the one the
   * sink itself threw last).
   */
  abort(cause?: unknown): Promise<void>;
}

/**
 * The runs of `data` that are not all zeros, at `block` granularity (the last block may be short). Sparse sinks
 * write only these, so zeros inside a chunk cost nothing either.
 */
export function nonZeroRuns(data: Uint8Array, block: number): Extent[] {
  const runs: Extent[] = [];
  let start = -1;
  for (let o = 0; o < data.length; o += block) {
    const zero = isZero(data.subarray(o, Math.min(o + block, data.length)));
    if (!zero && start < 0) start = o;
    else if (zero && start >= 0) {
      runs.push({ offset: start, length: o - start });
      start = -1;
    }
  }
  if (start >= 0) runs.push({ offset: start, length: data.length - start });
  return runs;
}

export function roundUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

/** Runs fn over items with at most `limit` in flight; the first failure stops new work and is thrown. */
export async function eachLimited<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: unknown;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (failure === undefined && next < items.length) {
        try {
          await fn(items[next++]);
        } catch (err) {
          failure ??= err;
        }
      }
    }),
  );
  if (failure !== undefined) throw failure;
}
