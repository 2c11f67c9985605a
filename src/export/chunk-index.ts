// Random access to a point's chunk entries: which entry holds chunk i, found along the chain of deltas by the
// segments' index ranges (from the manifests) and a bounded cache of decoded table segments, never the whole table.
import { ErrorCodes, RnodeError, isRnodeError } from '../errors.js';
import type { PointManifest, SegmentRef } from '../format/manifest.js';
import { isZeroEntry, type ChunkEntry } from '../format/table.js';
import type { ObjectStore } from '../store/types.js';
import type { EncryptionKey } from '../crypto/keys.js';
import { decodePointSegment } from '../repository/view.js';
import { Lru } from './lru.js';

/** Decoded segments kept (each up to 4096 entries, a few hundred KiB as objects). */
const DEFAULT_SEGMENTS = 64;

export class ChunkIndex {
  private readonly segments: Lru<string, ChunkEntry[]>;
  private readonly loading = new Map<string, Promise<ChunkEntry[]>>();
  readonly chunkSize: number;
  readonly diskSize: number;
  readonly chunks: number;

  /** chain: the point and its ancestors, newest first (loadChain's order). */
  constructor(
    private readonly store: ObjectStore,
    private readonly chain: PointManifest[],
    maxSegments = DEFAULT_SEGMENTS,
    private readonly key?: EncryptionKey,
  ) {
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
    for (const m of this.chain) {
      const ref = findSegment(m.table.segments, i);
      if (!ref) continue;
      const entries = await this.segment(m, ref);
      const e = findEntry(entries, i);
      if (e) return isZeroEntry(e) ? undefined : e;
    }
    return undefined;
  }

  /**
   * lookup() from the decoded segments alone, for the read path's common case (no promise per chunk): the entry,
   * null when the chunk is zero, or undefined when a segment must be loaded first (call lookup()).
   */
  lookupLoaded(i: number): ChunkEntry | null | undefined {
    for (const m of this.chain) {
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
        throw new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `chunk table ${ref.key} of point ${m.point} is missing; export another point`);
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
