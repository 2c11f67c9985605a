// The setup of the store-size sections (dedup, prune, repack): points replicated one after another from an image
// file that the section changes between them, and the bytes the store holds afterwards. Library calls in-process.
import { openSource, replicate, type ObjectStore, type ReplicateResult } from 'replication-node';

export interface PointSeries {
  points: number;
  /** The disk point p (from 1) is taken of: one name for a chain of points, or one per clone. */
  disk: string | ((p: number) => string);
  chunkSize: number;
  packSize?: number;
  /** Changes the image before point p is taken (p = 1 included: the section says what the first point holds). */
  before?: (p: number) => Promise<void>;
  /** Runs after point p, before the next change (a prune after every point, stats). */
  after?: (p: number) => Promise<void>;
}

/** Replicates the image file into store `points` times, with the series' changes between; the results in order. */
export async function replicateSeries(store: ObjectStore, image: string, series: PointSeries): Promise<ReplicateResult[]> {
  const results: ReplicateResult[] = [];
  for (let p = 1; p <= series.points; p++) {
    await series.before?.(p);
    const disk = typeof series.disk === 'string' ? series.disk : series.disk(p);
    const source = await openSource(image);
    let r: ReplicateResult;
    try {
      r = await replicate({ store, source, disk, chunkSize: series.chunkSize, packSize: series.packSize });
    } finally {
      await source.close();
    }
    results.push(r);
    await series.after?.(p);
  }
  return results;
}

/** Bytes of every object in the store (all keys, manifests and indexes included). */
export async function storedBytes(store: ObjectStore): Promise<number> {
  let n = 0;
  for await (const o of store.list('')) n += o.size;
  return n;
}
