// Index objects map chunk ids to where their blobs are (pack, offset, length). A writer puts one per checkpoint,
// covering the packs it closed since the last one; readers and writers load every index object of a domain into a
// ChunkIndex. Index object: envelope INDEX (context = domain + index id), body:
//   u32 LE count | count entries of 80 bytes: pack id (16) | the pack trailer's 64-byte BlobEntry
// The ChunkIndex in memory is compact: ids sorted in one Buffer, locations in typed arrays (74 bytes per entry),
// plus a Map for entries added during a run. An id may have several locations (after a repack, or two writers that
// stored one chunk at once): readers try the next on CHUNK_MISSING.
import { CHUNK_ID_BYTES } from '../crypto/keys.js';
import { ErrorCodes, RnodeError, isRnodeError } from '../errors.js';
import type { ObjectStore } from '../store/types.js';
import type { Domain } from './domain.js';
import { EnvelopeKind, envelopeContext, openEnvelope, sealEnvelope } from './envelope.js';
import { classify, OBJECT_ID_BYTES, r2, type ObjectId } from './names.js';
import { BLOB_ENTRY_BYTES, blobEntryAt, checkBlobEntry, writeBlobEntry, type BlobEntry } from './pack.js';

export const INDEX_ENTRY_BYTES = OBJECT_ID_BYTES + BLOB_ENTRY_BYTES;

/** One chunk's place: its pack and its entry there; indexId names the index object it was read from. */
export interface ChunkLocation {
  packId: ObjectId;
  entry: BlobEntry;
  indexId?: ObjectId;
}

export function encodeIndex(domain: Domain, indexId: ObjectId, locations: readonly ChunkLocation[]): Buffer {
  return sealEnvelope(EnvelopeKind.INDEX, envelopeContext.index(domain.name, indexId), indexBody(locations), domain.key);
}

/** An index object's body: u32 count, then pack id | BlobEntry per location. */
function indexBody(locations: readonly ChunkLocation[]): Buffer {
  const body = Buffer.alloc(4 + locations.length * INDEX_ENTRY_BYTES);
  body.writeUInt32LE(locations.length, 0);
  locations.forEach((l, i) => {
    const o = 4 + i * INDEX_ENTRY_BYTES;
    body.write(l.packId, o, OBJECT_ID_BYTES, 'hex');
    writeBlobEntry(l.entry, body, o + OBJECT_ID_BYTES);
  });
  return body;
}

export function decodeIndex(b: Buffer, domain: Domain, indexId: ObjectId): ChunkLocation[] {
  const body = openIndex(b, domain, indexId); // every entry checked there
  const out: ChunkLocation[] = new Array(body.readUInt32LE(0));
  for (let i = 0; i < out.length; i++) {
    const o = 4 + i * INDEX_ENTRY_BYTES;
    out[i] = { packId: body.toString('hex', o, o + OBJECT_ID_BYTES), entry: blobEntryAt(body, o + OBJECT_ID_BYTES), indexId };
  }
  return out;
}

function badIndex(domain: Domain, indexId: ObjectId): (why: string) => RnodeError {
  const what = r2.index(domain.name, indexId);
  return (why) => new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `index ${what} is corrupt (${why}); run "rnode check"`, { details: { key: what } });
}

/** Opens an index object and checks every entry; returns its body (u32 count, then the entries). */
export function openIndex(b: Buffer, domain: Domain, indexId: ObjectId): Buffer {
  const body = openEnvelope(b, EnvelopeKind.INDEX, envelopeContext.index(domain.name, indexId), r2.index(domain.name, indexId), domain.key);
  const bad = badIndex(domain, indexId);
  if (body.length < 4) throw bad('truncated');
  const count = body.readUInt32LE(0);
  if (body.length !== 4 + count * INDEX_ENTRY_BYTES) throw bad('length does not match its entry count');
  for (let i = 0; i < count; i++) {
    const flags = checkBlobEntry(body, 4 + i * INDEX_ENTRY_BYTES + OBJECT_ID_BYTES, (why) => bad(`entry ${i}: ${why}`));
    if (((flags & 1) !== 0) !== (domain.key !== undefined)) throw bad(`entry ${i} is sealed ${domain.key ? 'not ' : ''}as its domain is`);
  }
  return body;
}

/** Every index object id of a domain. */
export async function listIndexIds(store: ObjectStore, domain: string): Promise<ObjectId[]> {
  const ids: ObjectId[] = [];
  for await (const o of store.list(r2.indexPrefix(domain))) {
    const h = classify(o.key);
    if (h?.kind === 'index' && h.domain === domain) ids.push(h.id);
  }
  return ids;
}

/** Index bodies (u32 count, then entries) with the source of their entries: 1 + the index of their index id, or 0. */
export interface IndexPart {
  body: Buffer;
  source: number;
}

/** The loaded entries of a ChunkIndex in id order, one typed array per field. */
interface Columns {
  count: number;
  ids: Buffer;
  packs: Buffer;
  offset: Uint32Array;
  length: Uint32Array;
  plain: Uint32Array;
  codecFlags: Uint16Array;
  xxh: BigUint64Array;
  source: Uint32Array;
}

/** Byte copies of a few dozen bytes: a loop, because Buffer#copy costs microseconds a call (3 s for a million ids). */
function copyInto(src: Uint8Array, from: number, dst: Uint8Array, to: number, n: number): void {
  for (let k = 0; k < n; k++) dst[to + k] = src[from + k];
}

/** Entries handled between two looks at the clock while the columns are sorted in slices. */
const SLICE_ENTRIES = 16_384;
/**
 * How long one slice of a load may hold the event loop: an agent's heartbeats, a serve node's acks and the other jobs
 * of the process wait on it (a million entries sorted at once held it 1.3-1.9 s, and the Management Server gave the
 * agent's jobs to another node).
 */
const SLICE_MS = 10;

/** Runs the sort to its end at once: for a ChunkIndex made of locations already in memory. */
function columnsOf(parts: readonly IndexPart[]): Columns {
  const steps = sortColumns(parts);
  for (;;) {
    const r = steps.next();
    if (r.done) return r.value;
  }
}

/** Runs the sort in slices of at most SLICE_MS, with the event loop let in between. */
async function columnsInSlices(parts: readonly IndexPart[]): Promise<Columns> {
  const steps = sortColumns(parts);
  let sliceStart = performance.now();
  for (;;) {
    const r = steps.next();
    if (r.done) return r.value;
    if (performance.now() - sliceStart >= SLICE_MS) {
      await new Promise<void>((resolve) => setImmediate(resolve));
      sliceStart = performance.now();
    }
  }
}

/**
 * Sorts the entries of checked index bodies by id into columns, with no object per entry. The order is found first:
 * a radix sort on the ids' first four bytes, then whole ids within the rare runs that share them. Yields after every
 * SLICE_ENTRIES entries of each pass, so that a caller can let the event loop in.
 */
function* sortColumns(parts: readonly IndexPart[]): Generator<void, Columns, void> {
  let n = 0;
  for (const p of parts) n += p.body.readUInt32LE(0);
  const part = new Uint32Array(n);
  const at = new Uint32Array(n);
  const prefix = new Uint32Array(n);
  let i = 0;
  for (let k = 0; k < parts.length; k++) {
    const b = parts[k].body; // an index object: at most a few 10,000 entries
    for (let o = 4; o < b.length; o += INDEX_ENTRY_BYTES, i++) {
      part[i] = k;
      at[i] = o;
      const d = o + OBJECT_ID_BYTES;
      prefix[i] = ((b[d] << 24) | (b[d + 1] << 16) | (b[d + 2] << 8) | b[d + 3]) >>> 0;
    }
    yield;
  }
  const order = yield* keyOrder(prefix);
  const idAt = (x: number) => at[x] + OBJECT_ID_BYTES;
  for (let s = 0, sinceYield = 0; s < n;) {
    let e = s + 1;
    while (e < n && prefix[order[e]] === prefix[order[s]]) e++;
    if (e - s > 1) {
      order
        .subarray(s, e)
        .sort((x, y) => parts[part[x]].body.compare(parts[part[y]].body, idAt(y), idAt(y) + CHUNK_ID_BYTES, idAt(x), idAt(x) + CHUNK_ID_BYTES));
    }
    sinceYield += e - s;
    s = e;
    if (sinceYield >= SLICE_ENTRIES) {
      sinceYield = 0;
      yield;
    }
  }
  const c: Columns = {
    count: n,
    ids: Buffer.alloc(n * CHUNK_ID_BYTES),
    packs: Buffer.alloc(n * OBJECT_ID_BYTES),
    offset: new Uint32Array(n),
    length: new Uint32Array(n),
    plain: new Uint32Array(n),
    codecFlags: new Uint16Array(n),
    xxh: new BigUint64Array(n),
    source: new Uint32Array(n),
  };
  for (let s = 0; s < n; s += SLICE_ENTRIES) {
    for (let j = s; j < Math.min(n, s + SLICE_ENTRIES); j++) {
      const x = order[j];
      const { body: b, source } = parts[part[x]];
      const o = at[x];
      const e = o + OBJECT_ID_BYTES;
      copyInto(b, o, c.packs, j * OBJECT_ID_BYTES, OBJECT_ID_BYTES);
      copyInto(b, e, c.ids, j * CHUNK_ID_BYTES, CHUNK_ID_BYTES);
      c.offset[j] = b.readUInt32LE(e + 32);
      c.length[j] = b.readUInt32LE(e + 36);
      c.plain[j] = b.readUInt32LE(e + 40);
      c.codecFlags[j] = b[e + 44] | (b[e + 45] << 8);
      c.xxh[j] = b.readBigUInt64LE(e + 48);
      c.source[j] = source;
    }
    yield;
  }
  return c;
}

/**
 * Below this many keys a native sort beats the radix sort, whose passes over 65,536 buckets cost the same at any
 * size: 7 ms against 0.4 ms for 1,000 keys at a job's start (its loops still interpreted); the two are even at 100,000.
 */
const FEW_KEYS = 32_768;
/** A position fits below this in a double beside a 32-bit key (2^32 * 2^21 = 2^53). */
const POSITIONS = 2 ** 21;

/**
 * The positions of keys in ascending order, stable: two passes of a 16-bit LSD radix sort (linear), or for few
 * keys a native sort of each key with its position packed into one double (a few ms: no slices).
 */
function* keyOrder(keys: Uint32Array): Generator<void, Uint32Array, void> {
  const n = keys.length;
  if (n < FEW_KEYS) {
    const packed = new Float64Array(n);
    for (let i = 0; i < n; i++) packed[i] = keys[i] * POSITIONS + i;
    packed.sort();
    const order = new Uint32Array(n);
    for (let i = 0; i < n; i++) order[i] = packed[i] % POSITIONS;
    return order;
  }
  let order = new Uint32Array(n);
  let next = new Uint32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  for (const shift of [0, 16]) {
    const start = new Uint32Array(65537);
    for (let s = 0; s < n; s += SLICE_ENTRIES) {
      for (let i = s; i < Math.min(n, s + SLICE_ENTRIES); i++) start[((keys[i] >>> shift) & 0xffff) + 1]++;
      yield;
    }
    for (let k = 0; k < 65536; k++) start[k + 1] += start[k];
    for (let s = 0; s < n; s += SLICE_ENTRIES) {
      for (let i = s; i < Math.min(n, s + SLICE_ENTRIES); i++) {
        const x = order[i];
        next[start[(keys[x] >>> shift) & 0xffff]++] = x;
      }
      yield;
    }
    [order, next] = [next, order];
  }
  return order;
}

/** Locations as index parts, grouped by the index id they came from. */
function partsOf(locations: readonly ChunkLocation[], indexIds: readonly ObjectId[]): IndexPart[] {
  const sourceOf = new Map(indexIds.map((id, i) => [id, i + 1]));
  const groups = new Map<number, ChunkLocation[]>();
  for (const l of locations) {
    const source = (l.indexId && sourceOf.get(l.indexId)) || 0;
    const g = groups.get(source);
    if (g) g.push(l);
    else groups.set(source, [l]);
  }
  return [...groups].map(([source, ls]) => ({ body: indexBody(ls), source }));
}

/** Writers' loads by store location, domain and the index objects listed (ChunkIndex.loadShared). */
const pendingLoads = new Map<string, Promise<ChunkIndex>>();
const sharedLoads = new Map<string, { ids: ObjectId[]; columns: WeakRef<Columns> }>();
const sharedLoadsGone = new FinalizationRegistry<string>((key) => {
  if (sharedLoads.get(key)?.columns.deref() === undefined) sharedLoads.delete(key);
});

/** In-memory map chunk id -> locations of a whole domain (see the module comment). */
export class ChunkIndex {
  readonly #c: Columns;
  readonly indexIds: ObjectId[];
  readonly #added = new Map<string, ChunkLocation[]>();
  /** Index objects load() left out because they failed their checksum (skipDamaged): their errors. */
  readonly damaged: RnodeError[] = [];

  constructor(locations: readonly ChunkLocation[] = [], indexIds: ObjectId[] = [], columns?: Columns) {
    this.indexIds = indexIds;
    this.#c = columns ?? columnsOf(partsOf(locations, indexIds));
  }

  /**
   * Reads every index object of the domain (a few in flight at once). Their bodies are checked and kept as they come
   * (80 bytes an entry), then sorted into the columns with no object per entry: a domain of a million chunks loads in
   * about a second, without a transient heap of hundreds of MiB, in slices of at most SLICE_MS with the event loop let
   * in between.
   * skipDamaged: an index object that fails its checksum (MANIFEST_CORRUPT: an unencrypted domain) is left out, and
   * listed in damaged, instead of failing the load. For readers: one damaged index then costs the chunks only it
   * locates, not every point of every disk of the repository. One that fails authentication (METADATA_FORGED: an
   * encrypted domain, where damage and tampering look alike) still fails the load: a forged or replayed index is
   * named on every read, never passed over. Replicate and prune keep the default: they must see every reference.
   */
  static async load(store: ObjectStore, domain: Domain, concurrency = 8, opts: { skipDamaged?: boolean } = {}): Promise<ChunkIndex> {
    return ChunkIndex.#loadListed(store, domain, await listIndexIds(store, domain.name), concurrency, opts);
  }

  /**
   * load() for a writer (replicate), sharing the loaded entries with the other writers of this process that listed
   * the same index objects: an agent's job slots starting together each loaded their own copy (four on a store of a
   * million chunks: ~740 MB). Each gets its own ChunkIndex, so what one adds stays its own; the entries are never
   * changed once loaded, and go when the last index over them does.
   */
  static async loadShared(store: ObjectStore, domain: Domain): Promise<ChunkIndex> {
    const listed = await listIndexIds(store, domain.name);
    const key = [store.location, domain.name, ...[...listed].sort()].join('\n');
    const have = sharedLoads.get(key);
    const columns = have?.columns.deref();
    // The loader's ids, in its order: the entries name their index object by position in them.
    if (have && columns) return new ChunkIndex([], have.ids, columns);
    let loading = pendingLoads.get(key);
    if (!loading) {
      loading = ChunkIndex.#loadListed(store, domain, listed);
      pendingLoads.set(key, loading);
      loading.then(
        (index) => {
          sharedLoads.set(key, { ids: index.indexIds, columns: new WeakRef(index.#c) });
          sharedLoadsGone.register(index.#c, key);
        },
        () => undefined,
      );
      void loading.finally(() => pendingLoads.delete(key)).catch(() => undefined);
    }
    const loaded = await loading;
    return new ChunkIndex([], loaded.indexIds, loaded.#c);
  }

  static async #loadListed(
    store: ObjectStore,
    domain: Domain,
    ids: ObjectId[],
    concurrency = 8,
    opts: { skipDamaged?: boolean } = {},
  ): Promise<ChunkIndex> {
    const parts: IndexPart[] = [];
    let next = 0;
    const worker = async () => {
      while (next < ids.length) {
        const source = ++next; // 1 + the index of its id in ids
        const id = ids[source - 1];
        let bytes: Buffer;
        try {
          bytes = await store.get(r2.index(domain.name, id));
        } catch (err) {
          // Deleted by an index compaction between list and get: its entries are in the index that replaced it.
          if (err instanceof RnodeError && err.code === ErrorCodes.STORE_NOT_FOUND) continue;
          throw err;
        }
        try {
          parts.push({ body: openIndex(bytes, domain, id), source });
        } catch (err) {
          if (!opts.skipDamaged || !isRnodeError(err, ErrorCodes.MANIFEST_CORRUPT)) throw err;
          damaged.push(err);
        }
      }
    };
    const damaged: RnodeError[] = [];
    await Promise.all(Array.from({ length: Math.min(concurrency, ids.length) }, worker));
    const index = await ChunkIndex.fromParts(ids, parts);
    index.damaged.push(...damaged);
    return index;
  }

  /** A ChunkIndex of opened index bodies (openIndex), sorted in slices; a part's source names its id in indexIds. */
  static async fromParts(indexIds: ObjectId[], parts: readonly IndexPart[]): Promise<ChunkIndex> {
    return new ChunkIndex([], indexIds, await columnsInSlices(parts));
  }

  /** Entries loaded from the store (not counting those added since). */
  get size(): number {
    return this.#c.count;
  }

  #at(i: number): ChunkLocation {
    const c = this.#c;
    const cf = c.codecFlags[i];
    const src = c.source[i];
    return {
      packId: c.packs.toString('hex', i * OBJECT_ID_BYTES, (i + 1) * OBJECT_ID_BYTES),
      entry: {
        id: Buffer.from(c.ids.subarray(i * CHUNK_ID_BYTES, (i + 1) * CHUNK_ID_BYTES)),
        offset: c.offset[i],
        length: c.length[i],
        plainLength: c.plain[i],
        codec: cf & 0xff,
        flags: cf >> 8,
        payloadXxh64: c.xxh[i],
      },
      ...(src ? { indexId: this.indexIds[src - 1] } : {}),
    };
  }

  /** The first loaded entry whose id is not below id. */
  #first(id: Uint8Array): number {
    const ids = this.#c.ids;
    let lo = 0;
    let hi = this.size;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (compareIdAt(ids, mid * CHUNK_ID_BYTES, id) < 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  #isAt(i: number, id: Uint8Array): boolean {
    return i < this.size && compareIdAt(this.#c.ids, i * CHUNK_ID_BYTES, id) === 0;
  }

  /** Every known location of a chunk id (the full 32 bytes decide; nothing shorter is ever compared). */
  lookup(id: Uint8Array): ChunkLocation[] {
    if (id.length !== CHUNK_ID_BYTES) throw new RnodeError(ErrorCodes.INTERNAL, `a chunk id is ${CHUNK_ID_BYTES} bytes, not ${id.length}`);
    // A restore's lookups find the added map empty: no hex key per chunk then.
    const out: ChunkLocation[] = this.#added.size ? [...(this.#added.get(Buffer.from(id).toString('hex')) ?? [])] : [];
    for (let i = this.#first(id); this.#isAt(i, id); i++) out.push(this.#at(i));
    return out;
  }

  has(id: Uint8Array): boolean {
    return (this.#added.size > 0 && this.#added.has(Buffer.from(id).toString('hex'))) || this.#isAt(this.#first(id), id);
  }

  /** Records a location written during this run (found by later lookups at once). */
  add(l: ChunkLocation): void {
    const k = l.entry.id.toString('hex');
    const list = this.#added.get(k);
    if (list) list.push(l);
    else this.#added.set(k, [l]);
  }

  /** Every chunk id, loaded and added (an id loaded with several locations comes once per location). */
  *ids(): IterableIterator<Buffer> {
    for (let i = 0; i < this.size; i++) yield this.#c.ids.subarray(i * CHUNK_ID_BYTES, (i + 1) * CHUNK_ID_BYTES);
    for (const list of this.#added.values()) yield list[0].entry.id;
  }

  /** Every location, loaded and added (prune, check, stats). */
  *locations(): IterableIterator<ChunkLocation> {
    for (let i = 0; i < this.size; i++) yield this.#at(i);
    for (const list of this.#added.values()) yield* list;
  }
}

/**
 * The id at `at` in `ids` against `id`, bytewise (negative: below). A plain loop: ids differ within their first bytes,
 * and Buffer#compare's range checks cost more than the comparison (a 1.5 GiB incremental asks once per chunk).
 */
function compareIdAt(ids: Uint8Array, at: number, id: Uint8Array): number {
  for (let k = 0; k < CHUNK_ID_BYTES; k++) {
    const d = ids[at + k] - id[k];
    if (d !== 0) return d;
  }
  return 0;
}
