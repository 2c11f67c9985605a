// Repair (check --read-data --repair). Damaged packs: every intact blob of a pack holding a damaged one is copied
// into new packs and indexed, then the damaged pack is deleted. The damaged chunk is then in no pack: a replicate
// that reads its data stores it anew (dedup no longer finds the bad copy), and every point that uses it restores
// again, the old ones too (points name chunks by id, not by where they are). Without repair, dedup kept reusing the
// bad copy: a new point of the same data was as broken as the old one.
// Lost or damaged index objects: the intact blobs no index object names any more are indexed again from their packs'
// trailers, then the damaged index objects are deleted. Without that, a damaged index object stopped every replicate
// of the repository, and a lost one made prune take the packs of those blobs for unused ones.
import { ErrorCodes, isRnodeError } from '../errors.js';
import { xxh64 } from '../format/checksum.js';
import type { ObjectStore } from '../store/types.js';
import type { Domain } from '../repository/domain.js';
import { ChunkIndex, encodeIndex, type ChunkLocation } from '../repository/index-file.js';
import { Lease, type LeaseOptions } from '../repository/lease.js';
import { r2, type ObjectId } from '../repository/names.js';
import { decodePack, newObjectId, type BlobEntry } from '../repository/pack.js';
import { forgetChunkIndexes } from '../repository/index-cache.js';
import { BlobCopier } from './blob-copier.js';
import { compactIndexes, listPacks, pruneLeaseName } from './prune-v2.js';

export interface RepairResult {
  domain: string;
  packsRepaired: number;
  blobsCopied: number;
  bytesRewritten: number;
  /** Chunk ids (hex) of the damaged blobs left out: their data must be replicated again. */
  dropped: string[];
  packsWritten: number;
  indexesWritten: number;
  indexesDeleted: number;
  /** Intact blobs that no index object named, indexed again. */
  blobsIndexed: number;
  /** Damaged index objects deleted (after their packs' intact blobs were indexed again). */
  damagedIndexesDeleted: number;
}

export interface RepairOptions {
  store: ObjectStore;
  domain: Domain;
  /** Damaged blobs by pack, as check --read-data found them (offsets in the pack). */
  damaged: ReadonlyMap<ObjectId, ReadonlySet<number>>;
  /** Blobs of intact pack trailers that no readable index object names, as check found them. */
  unindexed?: readonly ChunkLocation[];
  /** Index objects check could not read (damaged), deleted once the blobs are indexed again. */
  damagedIndexes?: readonly ObjectId[];
  lease?: LeaseOptions;
}

/** Entries per index object written by repair (what a replicate's checkpoint writes at most is far less). */
const REINDEX_ENTRIES = 65536;

/** Holds the domain's prune lease: no sweep runs beside it, and a writer's reused packs are checked at its commit. */
export async function repairDomain(opts: RepairOptions): Promise<RepairResult> {
  const { store, domain } = opts;
  return Lease.holding(store, pruneLeaseName(domain.name), { ...opts.lease, waitMs: opts.lease?.waitMs ?? 0 }, async () => {
    const r: RepairResult = {
      domain: domain.name,
      packsRepaired: 0,
      blobsCopied: 0,
      bytesRewritten: 0,
      dropped: [],
      packsWritten: 0,
      indexesWritten: 0,
      indexesDeleted: 0,
      blobsIndexed: 0,
      damagedIndexesDeleted: 0,
    };
    // Intact unindexed blobs first (a damaged one is left out like any damaged blob), then the damaged index objects go.
    const again = (opts.unindexed ?? []).filter((l) => !opts.damaged.get(l.packId)?.has(l.entry.offset));
    for (let i = 0; i < again.length; i += REINDEX_ENTRIES) {
      const id = newObjectId();
      const part = again.slice(i, i + REINDEX_ENTRIES);
      await store.put(r2.index(domain.name, id), encodeIndex(domain, id, part));
      r.indexesWritten++;
      r.blobsIndexed += part.length;
    }
    for (const id of opts.damagedIndexes ?? []) {
      await store.delete(r2.index(domain.name, id));
      r.damagedIndexesDeleted++;
    }
    const index = await ChunkIndex.load(store, domain);
    const copier = new BlobCopier(store, domain, () => r.packsWritten++);
    const repaired: ObjectId[] = [];
    for (const [packId, bad] of opts.damaged) {
      let pack: Buffer;
      try {
        pack = await store.get(r2.pack(domain.name, packId));
      } catch (err) {
        if (isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) continue; // gone already (a prune deleted it)
        throw err;
      }
      // The pack's own trailer says what it holds; a damaged trailer leaves the index's entries of it.
      let entries: BlobEntry[];
      try {
        entries = decodePack(pack, domain.name, packId, domain.key);
      } catch {
        entries = [...index.locations()].flatMap((l) => (l.packId === packId ? [l.entry] : []));
      }
      for (const e of entries) {
        const blob = pack.subarray(e.offset, e.offset + e.length);
        // What check found damaged, and anything that does not match its checksum now, stays behind.
        if (bad.has(e.offset) || blob.length !== e.length || xxh64(blob) !== e.payloadXxh64) {
          r.dropped.push(e.id.toString('hex'));
          continue;
        }
        await copier.add(blob, e);
        r.blobsCopied++;
        r.bytesRewritten += e.length;
      }
      repaired.push(packId);
    }
    // The copies are indexed before the damaged packs go: a reader or a writer finds every intact chunk throughout.
    await copier.finish(index);
    r.indexesWritten += copier.indexesWritten;
    for (const packId of repaired) {
      await store.delete(r2.pack(domain.name, packId));
      r.packsRepaired++;
    }
    const existing = new Set<ObjectId>();
    for await (const p of listPacks(store, domain)) existing.add(p.id);
    await compactIndexes(store, domain, index, existing, r, 8);
    forgetChunkIndexes(store);
    return r;
  });
}
