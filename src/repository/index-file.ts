// Index objects map chunk ids to where their blobs are (pack, offset, length). A writer puts one per checkpoint,
// covering the packs it closed since the last one; readers and writers load every index object of a domain into a
// ChunkIndex. Index object: envelope INDEX (context = domain + index id), body:
//   u32 LE count | count entries of 80 bytes: pack id (16) | the pack trailer's 64-byte BlobEntry
// The ChunkIndex in memory is compact: ids sorted in one Buffer, locations in typed arrays (~100 bytes per entry),
// plus a Map for entries added during a run. An id may have several locations (after a repack, or two writers that
// stored one chunk at once): readers try the next on CHUNK_MISSING.
import { CHUNK_ID_BYTES } from '../crypto/keys.js';
import { ErrorCodes, RnodeError } from '../errors.js';
import type { ObjectStore } from '../store/types.js';
import type { Domain } from './domain.js';
import { EnvelopeKind, envelopeContext, openEnvelope, sealEnvelope } from './envelope.js';
import { classify, OBJECT_ID_BYTES, r2, type ObjectId } from './names.js';
import { BLOB_ENTRY_BYTES, readBlobEntry, writeBlobEntry, type BlobEntry } from './pack.js';

export const INDEX_ENTRY_BYTES = OBJECT_ID_BYTES + BLOB_ENTRY_BYTES;

/** One chunk's place: its pack and its entry there; indexId names the index object it was read from. */
export interface ChunkLocation {
  packId: ObjectId;
  entry: BlobEntry;
  indexId?: ObjectId;
}

export function encodeIndex(domain: Domain, indexId: ObjectId, locations: readonly ChunkLocation[]): Buffer {
  const body = Buffer.alloc(4 + locations.length * INDEX_ENTRY_BYTES);
  body.writeUInt32LE(locations.length, 0);
  locations.forEach((l, i) => {
    const o = 4 + i * INDEX_ENTRY_BYTES;
    Buffer.from(l.packId, 'hex').copy(body, o);
    writeBlobEntry(l.entry, body, o + OBJECT_ID_BYTES);
  });
  return sealEnvelope(EnvelopeKind.INDEX, envelopeContext.index(domain.name, indexId), body, domain.key);
}

export function decodeIndex(b: Buffer, domain: Domain, indexId: ObjectId): ChunkLocation[] {
  const what = r2.index(domain.name, indexId);
  const body = openEnvelope(b, EnvelopeKind.INDEX, envelopeContext.index(domain.name, indexId), what, domain.key);
  const bad = (why: string) => new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `index ${what} is corrupt (${why}); run "rnode check"`, { details: { key: what } });
  if (body.length < 4) throw bad('truncated');
  const count = body.readUInt32LE(0);
  if (body.length !== 4 + count * INDEX_ENTRY_BYTES) throw bad('length does not match its entry count');
  const out: ChunkLocation[] = new Array(count);
  for (let i = 0; i < count; i++) {
    const o = 4 + i * INDEX_ENTRY_BYTES;
    const entry = readBlobEntry(body, o + OBJECT_ID_BYTES, (why) => bad(`entry ${i}: ${why}`));
    if (((entry.flags & 1) !== 0) !== (domain.key !== undefined)) throw bad(`entry ${i} is sealed ${domain.key ? 'not ' : ''}as its domain is`);
    out[i] = { packId: body.subarray(o, o + OBJECT_ID_BYTES).toString('hex'), entry, indexId };
  }
  return out;
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

/** In-memory map chunk id -> locations of a whole domain (see the module comment). */
export class ChunkIndex {
  #ids: Buffer;
  #packs: Buffer;
  #offset: Uint32Array;
  #length: Uint32Array;
  #plain: Uint32Array;
  #codecFlags: Uint16Array;
  #xxh: BigUint64Array;
  #source: Uint32Array;
  readonly indexIds: ObjectId[];
  readonly #added = new Map<string, ChunkLocation[]>();

  constructor(locations: readonly ChunkLocation[] = [], indexIds: ObjectId[] = []) {
    const n = locations.length;
    const order = Array.from({ length: n }, (_, i) => i);
    order.sort((a, b) => Buffer.compare(locations[a].entry.id, locations[b].entry.id));
    this.#ids = Buffer.alloc(n * CHUNK_ID_BYTES);
    this.#packs = Buffer.alloc(n * OBJECT_ID_BYTES);
    this.#offset = new Uint32Array(n);
    this.#length = new Uint32Array(n);
    this.#plain = new Uint32Array(n);
    this.#codecFlags = new Uint16Array(n);
    this.#xxh = new BigUint64Array(n);
    this.#source = new Uint32Array(n);
    this.indexIds = indexIds;
    const sourceOf = new Map(indexIds.map((id, i) => [id, i + 1]));
    order.forEach((from, i) => {
      const l = locations[from];
      l.entry.id.copy(this.#ids, i * CHUNK_ID_BYTES);
      Buffer.from(l.packId, 'hex').copy(this.#packs, i * OBJECT_ID_BYTES);
      this.#offset[i] = l.entry.offset;
      this.#length[i] = l.entry.length;
      this.#plain[i] = l.entry.plainLength;
      this.#codecFlags[i] = l.entry.codec | (l.entry.flags << 8);
      this.#xxh[i] = l.entry.payloadXxh64;
      this.#source[i] = (l.indexId && sourceOf.get(l.indexId)) || 0;
    });
  }

  /** Reads every index object of the domain (a few in flight at once). */
  static async load(store: ObjectStore, domain: Domain, concurrency = 8): Promise<ChunkIndex> {
    const ids = await listIndexIds(store, domain.name);
    const all: ChunkLocation[] = [];
    let next = 0;
    const worker = async () => {
      while (next < ids.length) {
        const id = ids[next++];
        let bytes: Buffer;
        try {
          bytes = await store.get(r2.index(domain.name, id));
        } catch (err) {
          // Deleted by an index compaction between list and get: its entries are in the index that replaced it.
          if (err instanceof RnodeError && err.code === ErrorCodes.STORE_NOT_FOUND) continue;
          throw err;
        }
        for (const l of decodeIndex(bytes, domain, id)) all.push(l);
      }
    };
    await Promise.all(Array.from({ length: Math.min(concurrency, ids.length) }, worker));
    return new ChunkIndex(all, ids);
  }

  /** Entries loaded from the store (not counting those added since). */
  get size(): number { return this.#offset.length; }

  #at(i: number): ChunkLocation {
    const cf = this.#codecFlags[i];
    const src = this.#source[i];
    return {
      packId: this.#packs.subarray(i * OBJECT_ID_BYTES, (i + 1) * OBJECT_ID_BYTES).toString('hex'),
      entry: {
        id: Buffer.from(this.#ids.subarray(i * CHUNK_ID_BYTES, (i + 1) * CHUNK_ID_BYTES)),
        offset: this.#offset[i], length: this.#length[i], plainLength: this.#plain[i], codec: cf & 0xff, flags: cf >> 8,
        payloadXxh64: this.#xxh[i],
      },
      ...(src ? { indexId: this.indexIds[src - 1] } : {}),
    };
  }

  #first(id: Uint8Array): number {
    let lo = 0;
    let hi = this.size;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (Buffer.compare(this.#ids.subarray(mid * CHUNK_ID_BYTES, (mid + 1) * CHUNK_ID_BYTES), id) < 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Every known location of a chunk id (the full 32 bytes decide; nothing shorter is ever compared). */
  lookup(id: Uint8Array): ChunkLocation[] {
    if (id.length !== CHUNK_ID_BYTES) throw new RnodeError(ErrorCodes.INTERNAL, `a chunk id is ${CHUNK_ID_BYTES} bytes, not ${id.length}`);
    const out: ChunkLocation[] = [...(this.#added.get(Buffer.from(id).toString('hex')) ?? [])];
    for (let i = this.#first(id); i < this.size && this.#ids.subarray(i * CHUNK_ID_BYTES, (i + 1) * CHUNK_ID_BYTES).equals(id); i++) out.push(this.#at(i));
    return out;
  }

  has(id: Uint8Array): boolean {
    return this.#added.has(Buffer.from(id).toString('hex')) || (this.#first(id) < this.size && this.#ids.subarray(this.#first(id) * CHUNK_ID_BYTES, (this.#first(id) + 1) * CHUNK_ID_BYTES).equals(id));
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
    for (let i = 0; i < this.size; i++) yield this.#ids.subarray(i * CHUNK_ID_BYTES, (i + 1) * CHUNK_ID_BYTES);
    for (const list of this.#added.values()) yield list[0].entry.id;
  }

  /** Every location, loaded and added (prune, check, stats). */
  *locations(): IterableIterator<ChunkLocation> {
    for (let i = 0; i < this.size; i++) yield this.#at(i);
    for (const list of this.#added.values()) yield* list;
  }
}
