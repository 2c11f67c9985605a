// A store whose calls of one method go through a function of the test's: to hold a writer at an exact step (before
// or after one of its puts) while other work runs against the real store, or to count what a reader asks for.
import type { ObjectStore } from '../../src/store/types.js';

/** The store, with every call of `method` made as around(args, call), where call() makes the real one. */
export function aroundCalls<S extends ObjectStore, M extends 'get' | 'put' | 'list'>(
  store: S,
  method: M,
  around: (args: Parameters<ObjectStore[M]>, call: () => ReturnType<ObjectStore[M]>) => ReturnType<ObjectStore[M]>,
): S {
  return new Proxy(store, {
    get(target, prop) {
      const v = Reflect.get(target, prop, target);
      if (typeof v !== 'function') return v;
      if (prop !== method) return v.bind(target);
      return (...args: Parameters<ObjectStore[M]>) => around(args, () => v.apply(target, args));
    },
  });
}

/** The store, with every put(key, ...) made as around(key, put), where put() makes the real one. */
export function aroundPuts<S extends ObjectStore>(store: S, around: (key: string, put: () => Promise<unknown>) => Promise<unknown>): S {
  return aroundCalls(store, 'put', ([key], put) => around(key, put) as ReturnType<ObjectStore['put']>);
}

/** The store, counting its gets of index objects and its listings of the index folder (as the counts change). */
export function countingIndexReads(store: ObjectStore): ObjectStore & { indexGets: number; indexLists: number } {
  const gets = aroundCalls(store, 'get', ([key], get) => {
    if (key.includes('/index/')) counted.indexGets++;
    return get();
  });
  const lists = aroundCalls(gets, 'list', ([prefix], list) => {
    if (prefix.includes('/index')) counted.indexLists++;
    return list();
  });
  const counted = Object.assign(lists, { indexGets: 0, indexLists: 0 });
  return counted;
}
