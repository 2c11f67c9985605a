// Checks that points are restorable without writing anything: manifests, chains, tables and every chunk
// they reference (digests included). Reports every problem it finds rather than stopping at the first.
import { ErrorCodes, RnodeError } from '../errors.js';
import { validateDiskId } from '../format/layout.js';
import type { PointManifest } from '../format/manifest.js';
import { isZeroEntry, type ChunkEntry } from '../format/table.js';
import type { ObjectStore } from '../store/types.js';
import { forEachBounded, readChunk } from './chunk-reader.js';
import { BufferPool } from '../pipeline/buffer-pool.js';
import { newReadSlot } from '../pipeline/chunk-codec.js';
import { listPointSeqs, loadChain, resolvePoint } from './points.js';
import { chainView, tableEntries } from './view.js';

export interface VerifyProblem {
  code: string;
  message: string;
  point?: number;
  index?: number;
  offset?: number;
}

export interface VerifyResult {
  disk: string;
  points: number[];
  chunksChecked: number;
  bytesChecked: number;
  problems: VerifyProblem[];
  ok: boolean;
  seconds: number;
}

const MAX_PROBLEMS = 1000;

export async function verify(opts: { store: ObjectStore; disk: string; point?: string; concurrency?: number;
    onProgress?: (p: { chunksChecked: number }) => void }): Promise<VerifyResult> {
  const started = performance.now();
  const { store } = opts;
  const disk = validateDiskId(opts.disk);
  const all = opts.point === 'all';
  const seqs = all ? await listPointSeqs(store, disk) : [await resolvePoint(store, disk, opts.point)];
  if (seqs.length === 0) {
    throw new RnodeError(ErrorCodes.DISK_NOT_FOUND, `disk ${disk} has no committed points in ${store.location}; check --disk and --store`);
  }
  const problems: VerifyProblem[] = [];
  const report = (err: unknown, point: number) => {
    if (!(err instanceof RnodeError)) throw err;
    if (problems.length < MAX_PROBLEMS) {
      problems.push({ code: err.code, message: err.message, point, ...(err.details.index !== undefined ? { index: err.details.index as number, offset: err.details.offset as number } : {}) });
    }
  };
  const concurrency = opts.concurrency ?? 8;
  let slots: BufferPool<ReturnType<typeof newReadSlot>> | undefined;
  let slotSize = 0;
  let chunksChecked = 0;
  let bytesChecked = 0;
  for (const seq of seqs) {
    let chain: PointManifest[];
    try {
      chain = await loadChain(store, disk, seq);
    } catch (err) {
      report(err, seq);
      continue;
    }
    const m = chain[0];
    // One point: everything it restores from. All points: each point's own table once, which together covers
    // every chunk any of them references (a rebased table carries the entries of pruned ancestors).
    const entries: AsyncIterable<ChunkEntry> = all ? tableEntries(store, m) : chainView(store, chain);
    const nonZero = async function* () {
      try {
        for await (const e of entries) if (!isZeroEntry(e)) yield e;
      } catch (err) {
        report(err, seq);
      }
    };
    if (!slots || slots.count === 0 || m.chunkSize !== slotSize) {
      slotSize = m.chunkSize;
      slots = new BufferPool(concurrency, () => newReadSlot(m.chunkSize));
    }
    const pool = slots;
    await forEachBounded(nonZero(), concurrency, async (e) => {
      const slot = await pool.acquire();
      try {
        await readChunk(store, disk, m.chunkSize, e, seq, slot);
        chunksChecked++;
        bytesChecked += e.plainLength;
        opts.onProgress?.({ chunksChecked });
      } catch (err) {
        report(err, seq);
      } finally {
        pool.release(slot);
      }
    });
  }
  return { disk, points: seqs, chunksChecked, bytesChecked, problems, ok: problems.length === 0, seconds: (performance.now() - started) / 1000 };
}
