// A store whose first call of one kind that matches is held until the test releases it: a race made certain (a prune
// that runs while a recover reads, a replicate that commits while a prune scans), not a matter of timing.
import type { ObjectStore } from '../../src/store/types.js';

/**
 * The store, with the first get, list or put of a key (or prefix) that matches held until release(); `held` resolves
 * when it is held, `settled` once that call has ended (after release).
 */
export function gated(store: ObjectStore, matches: (key: string) => boolean, method: 'get' | 'list' | 'put' = 'get') {
  let release!: () => void;
  const open = new Promise<void>((r) => (release = r));
  let reached!: () => void;
  const held = new Promise<void>((r) => (reached = r));
  let ended!: () => void;
  const settled = new Promise<void>((r) => (ended = r));
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
            try {
              yield* inner;
            } finally {
              ended();
            }
          })();
        };
      }
      if (prop === method && (method === 'get' || method === 'put')) {
        return async (key: string, ...rest: unknown[]) => {
          const call = () => (target[method] as (k: string, ...r: unknown[]) => Promise<unknown>).call(target, key, ...rest);
          if (!armed || !matches(key)) return call();
          armed = false;
          reached();
          await open;
          return call().finally(ended);
        };
      }
      const v = Reflect.get(target, prop, receiver) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  return { store: wrapped, held, release, settled };
}
