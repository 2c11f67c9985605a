// A store whose puts go through a function of the test's: to hold a writer at an exact step (before or after one of
// its puts) while other work runs against the real store.
import type { ObjectStore } from '../../src/store/types.js';

/** The store, with every put(key, ...) made as around(key, put), where put() makes the real one. */
export function aroundPuts<S extends ObjectStore>(store: S, around: (key: string, put: () => Promise<unknown>) => Promise<unknown>): S {
  return new Proxy(store, {
    get(target, prop) {
      const v = Reflect.get(target, prop, target);
      if (typeof v !== 'function') return v;
      if (prop !== 'put') return v.bind(target);
      return (key: string, ...rest: unknown[]) => around(key, () => v.call(target, key, ...rest));
    },
  });
}
