// Random access to a point's chunk entries: which entry holds chunk i, found along the chain of deltas by the
// segments' index ranges (from the manifests) and a bounded cache of decoded table segments, never the whole table.
// Retention may rebase a kept point under a running export (a standalone table of a new generation, the old tables
// deleted): a segment found missing reloads the point's chain from the store, once per change, and lookups go on
// along the new one.
import { ErrorCodes, RnodeError, isRnodeError } from '../errors.js';
import type { PointManifest, SegmentRef } from '../format/manifest.js';
import { isZeroEntry, type ChunkEntry } from '../format/table.js';
import type { ObjectStore } from '../store/types.js';
import type { EncryptionKey } from '../crypto/keys.js';
import { decodePointSegment, isMissingTable, sameTables } from '../repository/view.js';
import { Lru } from './lru.js';

/** Decoded segments kept (each up to 4096 entries, a few hundred KiB as objects). */
const DEFAULT_SEGMENTS = 64;

/** The point's chain as the store holds it now (loadChain, with the key checked), for after a rebase. */
export type ChainLoader = () => Promise<PointManifest[]>;

export class ChunkIndex {
  private readonly segments: Lru<string, ChunkEntry[]>;
  private readonly loading = new Map<string, Promise<ChunkEntry[]>>();
  /** The chain lookups walk: replaced whole (never edited) when a reload finds the point rebased. */
  private chain: PointManifest[];
  /** The reload of the current chain in progress or done: every lookup that found a segment missing shares it. */
  private reloading?: { from: PointManifest[]; done: Promise<void> };
  readonly chunkSize: number;
  readonly diskSize: number;
  readonly chunks: number;

  /** chain: the point and its ancestors, newest first (loadChain's order). reload: without it, a missing segment fails. */
  constructor(
    private readonly store: ObjectStore,
    chain: PointManifest[],
    maxSegments = DEFAULT_SEGMENTS,
    private readonly key?: EncryptionKey,
    private readonly reload?: ChainLoader,
  ) {
    this.chain = chain;
    this.chunkSize = chain[0].chunkSize;
    this.diskSize = chain[0].diskSize;
    this.chunks = Math.ceil(this.diskSize / this.chunkSize);
    this.segments = new Lru(maxSegments, () => 1);
  }

  get point(): number {
    return this.chain[0].point;
  }

  /** The entry for chunk i in this point, or undefined when the chunk is zero (absent or a ZERO record). */
  async lookup(i: number): Promise<ChunkEntry | undefined> {
    const chain = this.chain;
    try {
      return await this.lookupIn(chain, i);
    } catch (err) {
      if (!isMissingTable(err) || !this.reload) throw err;
      await this.reloaded(chain);
      // The store holds the same tables: the segment is really gone.
      if (this.chain === chain) throw err;
      // One retry, along the chain as the store holds it now: a segment missing from that one too is an error.
      return await this.lookupIn(this.chain, i);
    }
  }

  /**
   * A chunk found in no pack: when the point itself is gone (prune deleted it and swept its packs after this export had
   * read its tables), that is what happened; the chunk's error sent operators looking for damage. Else err as it is.
   */
  async explainMissing(err: unknown): Promise<unknown> {
    if (!isRnodeError(err, ErrorCodes.CHUNK_MISSING) || !this.reload) return err;
    try {
      await this.reload();
    } catch (e) {
      if (isRnodeError(e, ErrorCodes.POINT_NOT_FOUND)) return deletedWhileExported(this.chain[0], e);
    }
    return err;
  }

  /** One chain walked for one chunk: an entry never comes from a mix of an old table and a new one. */
  private async lookupIn(chain: PointManifest[], i: number): Promise<ChunkEntry | undefined> {
    for (const m of chain) {
      const ref = findSegment(m.table.segments, i);
      if (!ref) continue;
      const entries = await this.segment(m, ref);
      const e = findEntry(entries, i);
      if (e) return isZeroEntry(e) ? undefined : e;
    }
    return undefined;
  }

  /**
   * The point's chain loaded again after a lookup along `from` found a segment missing, once per chain: every lookup
   * that finds one missing in the same chain waits for the same reload. It replaces the chain when the store holds
   * the same point with other tables (a rebase); the same tables leave it as it is. A point deleted, replaced or
   * rewritten fails every later lookup of that chain with what happened.
   */
  private reloaded(from: PointManifest[]): Promise<void> {
    if (this.chain !== from) return Promise.resolve(); // replaced since that lookup started
    if (this.reloading?.from === from) return this.reloading.done;
    const done: Promise<void> = this.loadAgain(from).catch((err: unknown) => {
      // A store that failed to answer, or a new table already gone again (another rebase): the next lookup tries again.
      const again = !isRnodeError(err) || err.retryable || isMissingTable(err);
      if (again && this.reloading?.done === done) this.reloading = undefined;
      throw err;
    });
    this.reloading = { from, done };
    return done;
  }

  private async loadAgain(from: PointManifest[]): Promise<void> {
    const head = from[0];
    let chain: PointManifest[];
    try {
      chain = await this.reload!();
    } catch (err) {
      throw isRnodeError(err, ErrorCodes.POINT_NOT_FOUND) ? deletedWhileExported(head, err) : err;
    }
    const now = chain[0];
    if (now.point !== head.point || now.createdAt !== head.createdAt || now.diskSize !== head.diskSize || now.chunkSize !== head.chunkSize) {
      throw new RnodeError(
        ErrorCodes.MANIFEST_CORRUPT,
        `point ${head.point} of disk ${head.disk} was replaced by another point of that number while it was exported; export it again`,
      );
    }
    if (sameTables(chain, from)) return;
    await this.checkAgrees(from, chain);
    this.chain = chain;
  }

  /**
   * A rebase keeps the point's content, so the new tables must say what the old ones said of every chunk whose old
   * entry is still decoded here (what this export served lately): else the two would be mixed, and the point is
   * not what the export has been serving.
   */
  private async checkAgrees(from: PointManifest[], to: PointManifest[]): Promise<void> {
    const known = new Map<number, ChunkEntry | null>();
    for (const m of from) {
      for (const ref of m.table.segments) {
        for (const e of this.segments.get(ref.key) ?? []) {
          if (known.has(e.index)) continue;
          const old = this.loadedIn(from, e.index);
          if (old !== undefined) known.set(e.index, old);
        }
      }
    }
    for (const [i, old] of known) {
      const now = (await this.lookupIn(to, i)) ?? null;
      if (!sameContent(old, now)) {
        const head = from[0];
        throw new RnodeError(
          ErrorCodes.MANIFEST_CORRUPT,
          `point ${head.point} of disk ${head.disk} was rewritten while it was exported and its chunk ${i} changed; the store is damaged or was changed by hand, export the point again`,
        );
      }
    }
  }

  /**
   * lookup() from the decoded segments alone, for the read path's common case (no promise per chunk): the entry,
   * null when the chunk is zero, or undefined when a segment must be loaded first (call lookup()).
   */
  lookupLoaded(i: number): ChunkEntry | null | undefined {
    return this.loadedIn(this.chain, i);
  }

  private loadedIn(chain: PointManifest[], i: number): ChunkEntry | null | undefined {
    for (const m of chain) {
      const ref = findSegment(m.table.segments, i);
      if (!ref) continue;
      const entries = this.segments.get(ref.key);
      if (!entries) return undefined;
      const e = findEntry(entries, i);
      if (e) return isZeroEntry(e) ? null : e;
    }
    return null;
  }

  private segment(m: PointManifest, ref: SegmentRef): Promise<ChunkEntry[]> {
    const hit = this.segments.get(ref.key);
    if (hit) return Promise.resolve(hit);
    let p = this.loading.get(ref.key);
    if (!p) {
      p = this.loadSegment(m, ref).finally(() => this.loading.delete(ref.key));
      this.loading.set(ref.key, p);
    }
    return p;
  }

  private async loadSegment(m: PointManifest, ref: SegmentRef): Promise<ChunkEntry[]> {
    let bytes: Buffer;
    try {
      bytes = await this.store.get(ref.key);
    } catch (err) {
      if (isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) {
        throw new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `chunk table ${ref.key} of point ${m.point} is missing; export another point`, {
          details: { key: ref.key, missing: true },
        });
      }
      throw err;
    }
    // Authenticated segments are checked against their manifest's MAC (and the key) as recover checks them.
    const entries = decodePointSegment(bytes, m, m.table.segments.indexOf(ref), this.key);
    // The same checks a sequential restore makes (view.ts), per segment: count, range, order, inside the disk.
    if (
      entries.length !== ref.records ||
      (entries.length > 0 && (entries[0].index !== ref.first || entries[entries.length - 1].index !== ref.last))
    ) {
      throw new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `chunk table ${ref.key} does not match its manifest; export another point`);
    }
    if (entries.length > 0 && entries[entries.length - 1].index >= this.chunks) {
      throw new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `chunk table ${ref.key} of point ${m.point} names a chunk beyond the disk`);
    }
    this.segments.set(ref.key, entries);
    return entries;
  }
}

function sameContent(a: ChunkEntry | null, b: ChunkEntry | null): boolean {
  if (!a || !b) return a === b;
  if (a.plainLength !== b.plainLength) return false;
  return a.id && b.id ? a.id.equals(b.id) : a.xxh64 === b.xxh64 && a.strong.equals(b.strong);
}

function findSegment(segments: SegmentRef[], i: number): SegmentRef | undefined {
  let lo = 0;
  let hi = segments.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const s = segments[mid];
    if (s.records === 0 || s.last < i) lo = mid + 1;
    else if (s.first > i) hi = mid - 1;
    else return s;
  }
  // Empty segments (first = last = -1) break the ordering the search relies on; fall back to a scan then.
  return segments.some((s) => s.records === 0) ? segments.find((s) => s.records > 0 && s.first <= i && i <= s.last) : undefined;
}

function findEntry(entries: ChunkEntry[], i: number): ChunkEntry | undefined {
  let lo = 0;
  let hi = entries.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const x = entries[mid].index;
    if (x < i) lo = mid + 1;
    else if (x > i) hi = mid - 1;
    else return entries[mid];
  }
  return undefined;
}

function deletedWhileExported(head: PointManifest, cause: unknown): RnodeError {
  return new RnodeError(
    ErrorCodes.POINT_NOT_FOUND,
    `point ${head.point} of disk ${head.disk} was deleted while it was exported (its chunk tables are gone); export a point that exists`,
    { cause },
  );
}
