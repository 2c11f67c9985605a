// A least-recently-used map bounded by a total weight (bytes for chunks, a count for table segments).
// Map iteration order is insertion order, so re-inserting on a hit makes the first key the coldest.

export class Lru<K, V> {
  private readonly map = new Map<K, V>();
  private total = 0;

  /** onEvict hears every value that leaves by eviction or replacement (not by clear()). */
  constructor(
    private readonly capacity: number,
    private readonly weigh: (v: V) => number,
    private readonly onEvict?: (v: V, k: K) => void,
  ) {}

  get(k: K): V | undefined {
    const v = this.map.get(k);
    if (v !== undefined) {
      this.map.delete(k);
      this.map.set(k, v);
    }
    return v;
  }

  has(k: K): boolean {
    return this.map.has(k);
  }

  /** Removes k now, as an eviction would (onEvict hears its value). */
  evict(k: K): void {
    const v = this.map.get(k);
    if (v === undefined) return;
    this.map.delete(k);
    this.total -= this.weigh(v);
    this.onEvict?.(v, k);
  }

  /** Inserts v unless it alone exceeds the capacity; evicts the coldest entries to make room. */
  set(k: K, v: V): void {
    const w = this.weigh(v);
    if (w > this.capacity) return;
    const old = this.map.get(k);
    if (old !== undefined) {
      this.total -= this.weigh(old);
      this.map.delete(k);
      if (old !== v) this.onEvict?.(old, k);
    }
    this.map.set(k, v);
    this.total += w;
    for (const [key, val] of this.map) {
      if (this.total <= this.capacity) break;
      this.map.delete(key);
      this.total -= this.weigh(val);
      this.onEvict?.(val, key);
    }
  }

  get weight(): number {
    return this.total;
  }
  get size(): number {
    return this.map.size;
  }
  clear(): void {
    this.map.clear();
    this.total = 0;
  }
}
