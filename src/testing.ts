// replication-node/testing: the fakes and generators tests, benchmarks and examples use; not the node's API.
// Importing it registers the mem:// store scheme (an in-process MemoryStore per name: the same name, the same store).
import { MemoryStore } from './store/memory/memory-store.js';
import { registerStoreScheme } from './store/schemes.js';

export { MemoryStore };
export { FaultyStore, type Fault } from './store/wrappers/faulty.js';
export { generateSampleDisk, scatterWrites, fillMixed, Prng } from './sample/sample-disk.js';

const memoryStores = new Map<string, MemoryStore>();
registerStoreScheme('mem', async (url) => {
  const name = url.host + url.pathname;
  let store = memoryStores.get(name);
  if (!store) memoryStores.set(name, (store = new MemoryStore(`mem://${name}`)));
  return store;
});
