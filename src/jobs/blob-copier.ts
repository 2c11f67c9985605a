// Copies stored blobs, as they are (compressed, sealed), into new packs of their domain and indexes the copies: what
// prune's repack and check's repair write before they delete the packs the blobs came from.
import { discardPages } from '../native/index.js';
import type { ObjectStore } from '../store/types.js';
import { MIN_PACK_SIZE, type Domain } from '../repository/domain.js';
import { encodeIndex, type ChunkIndex, type ChunkLocation } from '../repository/index-file.js';
import { r2 } from '../repository/names.js';
import { PackBuilder, newObjectId, packSizeFor, type BlobEntry } from '../repository/pack.js';

/** Entries per index object written (80 B each: 5 MiB); prune's compaction writes the same size. */
export const INDEX_TARGET_ENTRIES = 65536;

export class BlobCopier {
  readonly written: ChunkLocation[] = [];
  indexesWritten = 0;
  #builder?: PackBuilder;
  readonly #packSize: number;

  constructor(
    private readonly store: ObjectStore,
    private readonly domain: Domain,
    /** Called after each pack is put. */
    private readonly onPack: () => void = () => undefined,
  ) {
    this.#packSize = packSizeFor(store, domain.config.packSize, MIN_PACK_SIZE);
  }

  async add(blob: Uint8Array, e: BlobEntry): Promise<void> {
    this.#builder ??= new PackBuilder(this.domain.name, this.#packSize, this.domain.key);
    if (this.#builder.wouldOverflow(blob.length, this.store.maxPutBytes)) {
      await this.flush();
      this.#builder = new PackBuilder(this.domain.name, this.#packSize, this.domain.key);
    }
    this.#builder.add(blob, { id: e.id, plainLength: e.plainLength, codec: e.codec, payloadXxh64: e.payloadXxh64 });
  }

  /** Puts the pack being filled, if it holds anything. */
  async flush(): Promise<void> {
    const b = this.#builder;
    if (!b || b.count === 0) return;
    this.#builder = undefined;
    await this.store.put(r2.pack(this.domain.name, b.id), b.finish());
    discardPages(b.buffer); // its pages now, the mapping when the GC finds it (a failed put's buffer is left alone)
    for (const e of b.entries) this.written.push({ packId: b.id, entry: e });
    this.onPack();
  }

  /** Puts the last pack, then the index objects of every copy: from here on readers and writers find the copies. */
  async finish(index: ChunkIndex): Promise<void> {
    await this.flush();
    for (let i = 0; i < this.written.length; i += INDEX_TARGET_ENTRIES) {
      const indexId = newObjectId();
      await this.store.put(r2.index(this.domain.name, indexId), encodeIndex(this.domain, indexId, this.written.slice(i, i + INDEX_TARGET_ENTRIES)));
      this.indexesWritten++;
    }
    for (const l of this.written) index.add(l);
  }
}
