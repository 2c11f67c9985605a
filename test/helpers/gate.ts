// A store whose first call of one kind that matches is held until the test releases it: a race made certain (a prune
// that runs while a recover reads, a replicate that commits while a prune scans), not a matter of timing.
import type { ObjectStore } from '../../src/store/types.js';

/** The store, with the first get (or list) of a key (or prefix) that matches held until release(); reached resolves when it is held. */
export function gated(store: ObjectStore, matches: (key: string) => boolean, method: 'get' | 'list' = 'get') {
  let release!: () => void;
  const open = new Promise<void>((r) => (release = r));
  let reached!: () => void;
  const held = new Promise<void>((r) => (reached = r));
  let armed = true;
  const wrapped = new Proxy(store, {
    get(target, prop, receiver) {
      if (prop === method && method === 'list') {
        return (prefix: string, o?: unknown) => {
          const inner = (target.list as (p: string, o?: unknown) => AsyncIterable<unknown>).call(target, prefix, o);
          if (!armed || !matches(prefix)) return inner;
          armed = false;
          return (async function* () {
            reached();
            await open;
            yield* inner;
          })();
        };
      }
      if (prop === 'get' && method === 'get') {
        return async (key: string, o?: unknown) => {
          if (armed && matches(key)) {
            armed = false;
            reached();
            await open;
          }
          return (target.get as (k: string, o?: unknown) => Promise<Buffer>).call(target, key, o);
        };
      }
      const v = Reflect.get(target, prop, receiver) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  return { store: wrapped, held, release };
}
