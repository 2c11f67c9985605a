// The ChunkIndex of each domain of a store, loaded once per process and shared by every reader (restore, verify,
// the NBD export). A lookup that finds nothing looks again in the index as the store has it now (locateChunk).
import type { RnodeError } from '../errors.js';
import type { ObjectStore } from '../store/types.js';
import type { Domain } from './domain.js';
import { ChunkIndex, listIndexIds, type ChunkLocation } from './index-file.js';

const cache = new WeakMap<ObjectStore, Map<string, Promise<ChunkIndex>>>();

function domainsOf(store: ObjectStore): Map<string, Promise<ChunkIndex>> {
  let perStore = cache.get(store);
  if (!perStore) cache.set(store, (perStore = new Map()));
  return perStore;
}

/**
 * Loads the domain's index and makes it the one every reader shares. Given the index a reader already has, first lists
 * the index objects: when none was added or removed since, that index is still current and nothing is loaded.
 */
function load(store: ObjectStore, domain: Domain, previous?: ChunkIndex): Promise<ChunkIndex> {
  const perStore = domainsOf(store);
  const index = (async () => {
    // One that left an index object out as damaged reads it again: a bad read may not be lasting damage.
    if (previous && previous.damaged.length === 0 && sameIds(await listIndexIds(store, domain.name), previous.indexIds)) return previous;
    return ChunkIndex.load(store, domain, undefined, { skipDamaged: true });
  })();
  perStore.set(domain.name, index);
  index.catch(() => {
    if (perStore.get(domain.name) === index) perStore.delete(domain.name);
  });
  return index;
}

function sameIds(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  const set = new Set(b);
  return a.every((id) => set.has(id));
}

/**
 * Where a chunk's blob is, as far as the domain's index objects know (several places after a repack).
 * A chunk found nowhere, or (reload) whose places all failed, is looked up again in the index as the store has it now:
 * another writer or a prune may have written index objects since it was loaded. Lookups that miss at once share one
 * reload, and a reload that lists the same index objects loads nothing: a store missing a pack costs one listing per
 * chunk lost, not a load of the whole index (at a million chunks, ~1 s and ~200 MB each, once per restore slot).
 */
export async function locateChunk(store: ObjectStore, domain: Domain, id: Uint8Array, opts: { reload?: boolean } = {}): Promise<ChunkLocation[]> {
  const looked = domainsOf(store).get(domain.name) ?? load(store, domain);
  const index = await looked;
  if (!opts.reload) {
    const found = index.lookup(id);
    if (found.length) return found;
  }
  // An index that replaced the one looked in was begun after this lookup began, so after the point being read was
  // committed: it is fresh enough (test/repository/missing-pack.test.ts holds this).
  const now = domainsOf(store).get(domain.name);
  return (await (now && now !== looked ? now : load(store, domain, index))).lookup(id);
}

/**
 * The errors of the domain's index objects that were left out as damaged (see ChunkIndex.load): what a chunk found in
 * no index may have been lost with.
 */
export async function damagedIndexes(store: ObjectStore, domain: Domain): Promise<readonly RnodeError[]> {
  return (await (domainsOf(store).get(domain.name) ?? load(store, domain))).damaged;
}

/** Forgets the store's loaded indexes (after prune deleted or compacted some). */
export function forgetChunkIndexes(store: ObjectStore): void {
  cache.delete(store);
}
