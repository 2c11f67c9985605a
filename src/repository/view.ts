// Reading chunk tables: a point's own table, and its view of the disk (the newest entry for every chunk index along its
// chain of deltas, produced by a streaming k-way merge of the chain's tables: memory holds one segment per point,
// whatever the disk size), and a table segment of a point still being written.
import type { EncryptionKey } from '../crypto/keys.js';
import { ErrorCodes, RnodeError, isRnodeError } from '../errors.js';
import { MANIFEST_VERSION_AUTHENTICATED, type PointManifest } from '../format/manifest.js';
import { decodeSegment, isZeroEntry, type ChunkEntry } from '../format/table.js';
import type { ObjectStore } from '../store/types.js';
import { Domain } from './domain.js';
import { decodeTableV3, isV2Point } from './point-format.js';
import type { V2SegmentObject } from './points.js';

/** Streams one point's own table, entry by entry (tableSegments says what is checked). */
export async function* tableEntries(store: ObjectStore, m: PointManifest, key?: EncryptionKey): AsyncIterable<ChunkEntry> {
  for await (const entries of tableSegments(store, m, key)) yield* entries;
}

/**
 * Streams one point's own table, a segment's entries at a time, checking order across segments. An authenticated
 * point's segments must match the MACs its manifest lists, and with key (the disk's) their MACs are recomputed too.
 */
export async function* tableSegments(store: ObjectStore, m: PointManifest, key?: EncryptionKey): AsyncIterable<ChunkEntry[]> {
  let prev = -1;
  let total = 0;
  const domain = isV2Point(m) ? Domain.of(key) : undefined;
  if (domain && isV2Point(m) && domain.name !== m.r2.domain) {
    throw new RnodeError(
      ErrorCodes.KEY_MISMATCH,
      `point ${m.point} of disk ${m.disk} is in repository ${m.r2.domain}, not in the key's ${domain.name}; pass its key`,
    );
  }
  for (const [n, ref] of m.table.segments.entries()) {
    let bytes: Buffer;
    try {
      bytes = await store.get(ref.key);
    } catch (err) {
      if (err instanceof RnodeError && err.code === ErrorCodes.STORE_NOT_FOUND) {
        throw new RnodeError(
          ErrorCodes.MANIFEST_CORRUPT,
          `chunk table ${ref.key} of point ${m.point} of disk ${m.disk} is missing; restore from another point`,
          { details: { key: ref.key, missing: true } },
        );
      }
      throw err;
    }
    const entries = domain
      ? decodeTableV3(
          bytes,
          domain,
          { disk: m.disk, point: m.point, parent: m.parent, generation: m.table.generation, segment: n },
          ref.key,
          ref.digest,
        )
      : decodeSegment(bytes, ref.key, segmentExpectation(m, n, key));
    if (
      entries.length !== ref.records ||
      (entries.length > 0 && (entries[0].index !== ref.first || entries[entries.length - 1].index !== ref.last))
    ) {
      throw new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `chunk table ${ref.key} does not match its manifest; restore from another point`, {
        details: { key: ref.key },
      });
    }
    for (const e of entries) {
      if (e.index <= prev || e.index * m.chunkSize >= m.diskSize) {
        throw new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `chunk table of point ${m.point} has an out-of-order or out-of-range index ${e.index}`);
      }
      prev = e.index;
    }
    total += entries.length;
    if (entries.length) yield entries;
  }
  if (total !== m.table.records) {
    throw new RnodeError(
      ErrorCodes.MANIFEST_CORRUPT,
      `point ${m.point} of disk ${m.disk} lists ${m.table.records} chunk records but its tables hold ${total}`,
    );
  }
}

/** Decodes segment n of point m from its bytes, in m's format (legacy table, or v3 in an envelope). */
export function decodePointSegment(bytes: Buffer, m: PointManifest, n: number, key: EncryptionKey | undefined): ChunkEntry[] {
  const ref = m.table.segments[n];
  if (!isV2Point(m)) return decodeSegment(bytes, ref.key, segmentExpectation(m, n, key));
  return decodeTableV3(
    bytes,
    Domain.of(key),
    { disk: m.disk, point: m.point, parent: m.parent, generation: m.table.generation, segment: n },
    ref.key,
    ref.digest,
  );
}

/**
 * One table segment of a point being written to the disk, in the key's domain: no manifest pins it yet, its envelope
 * binds its place (disk, point, parent, generation, segment). undefined when it is gone (committed or abandoned since
 * it was listed).
 */
export async function pendingTableEntries(
  store: ObjectStore,
  disk: string,
  s: V2SegmentObject,
  parent: number | null,
  key?: EncryptionKey,
): Promise<ChunkEntry[] | undefined> {
  let bytes: Buffer;
  try {
    bytes = await store.get(s.key);
  } catch (err) {
    if (isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) return undefined;
    throw err;
  }
  return decodeTableV3(bytes, Domain.of(key), { disk, point: s.point, parent, generation: s.generation, segment: s.segment }, s.key);
}

/** True for a record that references a stored chunk (a v2 record with a chunk id): what prune keeps and check looks for. */
export const referencesChunk = (e: ChunkEntry): boolean => !isZeroEntry(e) && e.id !== undefined;

/** What decodeSegment must find in segment n of m (see there). */
export function segmentExpectation(m: PointManifest, n: number, key: EncryptionKey | undefined): Parameters<typeof decodeSegment>[2] {
  if (m.version !== MANIFEST_VERSION_AUTHENTICATED) return 'plain';
  const place = { disk: m.disk, point: m.point, parent: m.parent, generation: m.table.generation, segment: n };
  return { mac: m.table.segments[n].mac!, ...(key ? { auth: { key, place } } : {}) };
}

/**
 * Pull-based cursor over an async iterable of batches, stepping one item at a time: a step within the batch at hand
 * answers at once, without a trip through the event loop (a 1.5 GiB incremental steps its merges once per chunk).
 */
export class BatchCursor<T> {
  private readonly it: AsyncIterator<T[]>;
  private batch: T[] = [];
  private at = 0;
  current: T | undefined;
  constructor(src: AsyncIterable<T[]>) {
    this.it = src[Symbol.asyncIterator]();
  }
  /** Moves to the next item: undefined when it was in the batch at hand, else a promise that resolves once it is current. */
  next(): Promise<void> | undefined {
    if (++this.at < this.batch.length) {
      this.current = this.batch[this.at];
      return undefined;
    }
    return this.fill();
  }
  private async fill(): Promise<void> {
    for (;;) {
      const r = await this.it.next();
      if (r.done) {
        this.batch = [];
        this.at = 0;
        this.current = undefined;
        return;
      }
      if (r.value.length > 0) {
        this.batch = r.value;
        this.at = 0;
        this.current = r.value[0];
        return;
      }
    }
  }
  async close(): Promise<void> {
    await this.it.return?.();
  }
}

/** Entries per batch of a merged chain. */
const VIEW_BATCH = 1024;

/**
 * Effective entries of a chain (newest first, as loadChain returns it), ascending by index. An index absent
 * from the result is zero in that point; zero entries are yielded as such (callers may skip them).
 */
export async function* chainView(store: ObjectStore, chain: PointManifest[], key?: EncryptionKey): AsyncIterable<ChunkEntry> {
  for await (const batch of chainBatches(store, chain, key)) yield* batch;
}

/** chainView() in batches of ascending entries (a table's segment, or up to VIEW_BATCH merged ones). */
export async function* chainBatches(store: ObjectStore, chain: PointManifest[], key?: EncryptionKey): AsyncIterable<ChunkEntry[]> {
  if (chain.length === 1) {
    yield* tableSegments(store, chain[0], key);
    return;
  }
  const cursors = chain.map((m) => new BatchCursor(tableSegments(store, m, key)));
  let out: ChunkEntry[] = [];
  try {
    await Promise.all(cursors.map((c) => c.next() ?? Promise.resolve()));
    for (;;) {
      let min = Infinity;
      for (const c of cursors) if (c.current && c.current.index < min) min = c.current.index;
      if (min === Infinity) break;
      let winner: ChunkEntry | undefined;
      // Cursors are newest first: the first one holding `min` wins, the others are shadowed.
      for (const c of cursors) {
        if (c.current && c.current.index === min) {
          if (!winner) winner = c.current;
          const loading = c.next();
          if (loading) await loading;
        }
      }
      out.push(winner!);
      if (out.length >= VIEW_BATCH) {
        yield out;
        out = [];
      }
    }
    if (out.length) yield out;
  } finally {
    await Promise.all(cursors.map((c) => c.close()));
  }
}

/** The point's chain as the store holds it now (loadChain), for a view that outlives a retention's rebase. */
export type ChainReload = () => Promise<PointManifest[]>;

/** Reloads a view survives, at most (each a retention that rebased the point meanwhile). */
const MAX_RELOADS = 4;

/**
 * chainBatches() of a point that retention may rebase while it is read (a table of its own, its ancestors and their
 * tables deleted): a table found missing reloads the chain, and the view goes on along the new one after the last
 * index it gave. A rebase keeps what the point holds (the new table carries its ancestors' entries; only its zero
 * records are left out, which read as zeros all the same). A point deleted or replaced, or a table missing from the
 * chain as the store holds it now, fails as before.
 */
export async function* chainBatchesAcrossRebase(
  store: ObjectStore,
  chain: PointManifest[],
  key: EncryptionKey | undefined,
  reload: ChainReload,
): AsyncIterable<ChunkEntry[]> {
  let current = chain;
  let after = -1;
  for (let reloads = 0; ; reloads++) {
    try {
      for await (const batch of chainBatches(store, current, key)) {
        const fresh = batch[0].index > after ? batch : batch.filter((e) => e.index > after);
        if (fresh.length === 0) continue;
        after = fresh[fresh.length - 1].index;
        yield fresh;
      }
      return;
    } catch (err) {
      if (!isMissingTable(err) || reloads >= MAX_RELOADS) throw err;
      const now = await reload();
      const [was, is] = [current[0], now[0]];
      if (is.point !== was.point || is.createdAt !== was.createdAt || is.diskSize !== was.diskSize || is.chunkSize !== was.chunkSize) throw err;
      if (sameTables(now, current)) throw err; // the same tables: that one is really gone
      current = now;
    }
  }
}

/** Damage a point, table or index object read as (not a forgery, not the store failing): its remedies start afresh. */
export function isDamage(err: unknown): err is RnodeError {
  return isRnodeError(err, ErrorCodes.MANIFEST_CORRUPT) || isRnodeError(err, ErrorCodes.FORMAT_CORRUPT);
}

/** A chain's table found missing as it was read (a rebase since the chain was loaded, or damage). */
export function isMissingTable(err: unknown): err is RnodeError {
  return isRnodeError(err, ErrorCodes.MANIFEST_CORRUPT) && err.details.missing === true;
}

/** chainBatchesAcrossRebase() entry by entry. */
export async function* chainViewAcrossRebase(
  store: ObjectStore,
  chain: PointManifest[],
  key: EncryptionKey | undefined,
  reload: ChainReload,
): AsyncIterable<ChunkEntry> {
  for await (const batch of chainBatchesAcrossRebase(store, chain, key, reload)) yield* batch;
}

/** Whether two chains name the same table segments, point by point (a reload that found no rebase). */
export function sameTables(a: PointManifest[], b: PointManifest[]): boolean {
  const keys = (c: PointManifest[]) => c.map((m) => `${m.point}:${m.table.segments.map((s) => s.key).join(',')}`).join(';');
  return keys(a) === keys(b);
}
