// Concurrency for work pulled from an async iterator (a listing, a chain view). Calls pushed by many callers go
// through p-limit (the store wrapper, src/store/wrappers/limited.ts); p-limit would queue every item of a listing,
// where this stops pulling while `limit` are in flight, so memory stays bounded by the limit, not the listing.
// Callers that each hold a slot across their own work (job slots, NBD requests) share Semaphore (src/semaphore.ts).

/**
 * Runs fn over items with at most `limit` in flight, stopping at the first failure; back-pressures the producer.
 * Once `signal` aborts it takes no new item, lets those in flight finish and throws the signal's reason.
 */
export async function forEachBounded<T>(items: AsyncIterable<T>, limit: number, fn: (item: T) => Promise<void>, signal?: AbortSignal): Promise<void> {
  const inflight = new Set<Promise<void>>();
  let failure: unknown;
  try {
    for await (const item of items) {
      if (failure) break;
      if (signal?.aborted) {
        failure = signal.reason;
        break;
      }
      const p: Promise<void> = fn(item)
        .catch((err) => {
          failure ??= err;
        })
        .finally(() => inflight.delete(p));
      inflight.add(p);
      if (inflight.size >= limit) await Promise.race(inflight);
    }
  } catch (err) {
    failure ??= err;
  }
  await Promise.all(inflight);
  if (failure) throw failure;
}
