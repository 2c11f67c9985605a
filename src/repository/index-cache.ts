// The ChunkIndex of each domain of a store, loaded once per process and shared by every reader (restore, verify,
// the NBD export). A lookup that finds nothing reloads it once: another writer may have added index objects since.
import type { RnodeError } from '../errors.js';
import type { ObjectStore } from '../store/types.js';
import type { Domain } from './domain.js';
import { ChunkIndex, type ChunkLocation } from './index-file.js';

const cache = new WeakMap<ObjectStore, Map<string, { index: Promise<ChunkIndex>; loadedAt: number }>>();

function entry(store: ObjectStore, domain: Domain, fresh: boolean): Promise<ChunkIndex> {
  let perStore = cache.get(store);
  if (!perStore) cache.set(store, (perStore = new Map()));
  const have = perStore.get(domain.name);
  if (have && !fresh) return have.index;
  const index = ChunkIndex.load(store, domain, undefined, { skipDamaged: true });
  perStore.set(domain.name, { index, loadedAt: Date.now() });
  index.catch(() => {
    if (perStore.get(domain.name)?.index === index) perStore.delete(domain.name);
  });
  return index;
}

/** Where a chunk's blob is, as far as the domain's index objects know (several places after a repack). */
export async function locateChunk(store: ObjectStore, domain: Domain, id: Uint8Array): Promise<ChunkLocation[]> {
  const found = (await entry(store, domain, false)).lookup(id);
  if (found.length) return found;
  return (await entry(store, domain, true)).lookup(id);
}

/**
 * The errors of the domain's index objects that were left out as damaged (see ChunkIndex.load): what a chunk found in
 * no index may have been lost with.
 */
export async function damagedIndexes(store: ObjectStore, domain: Domain): Promise<readonly RnodeError[]> {
  return (await entry(store, domain, false)).damaged;
}

/** Forgets the store's loaded indexes (after prune deleted or compacted some). */
export function forgetChunkIndexes(store: ObjectStore): void {
  cache.delete(store);
}
