// Prune and repack after 30 points: what each --max-unused threshold costs in bytes rewritten and what it saves in
// unused bytes, on one disk with a keep-7 retention and a prune after every point (grace 0, so each run takes the
// next step: seen, marked, deleted). The row "never" (0) is the baseline: no bytes rewritten, the most left unused.
// The chosen default (src/jobs/prune-v2.ts DEFAULT_MAX_UNUSED) is justified in README from these figures.
import crypto from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { openStore, pruneStore, stats } from 'replication-node';
import type { Section, SectionContext } from '../lib/context.js';
import { replicateSeries } from '../lib/point-series.js';
import type { Row } from '../lib/report.js';

const POINTS = 30;
const KEEP = 7;
const CHUNK = 64 * 1024;
const PACK = 1024 * 1024;
const THRESHOLDS = [0, 0.1, 0.25, 0.5, 0.75];

export interface RepackRun {
  maxUnused: number;
  bytesRewritten: number;
  bytesDeleted: number;
  /** Unused pack bytes after each prune, averaged over the points: what the threshold leaves stored for nothing. */
  meanUnused: number;
  finalUnused: number;
  finalStored: number;
  pruneSeconds: number;
}

/** Writes `points` points of a changing image into a fresh store, pruning after each, at one threshold. */
export async function repackRun(dir: string, diskBytes: number, maxUnused: number, points = POINTS): Promise<RepackRun> {
  const img = path.join(dir, 'disk.img');
  const storeDir = path.join(dir, `store-${maxUnused}`);
  await fsp.rm(storeDir, { recursive: true, force: true });
  const chunks = diskBytes / CHUNK;
  // The same sequence of changes for every threshold: a seeded generator.
  let seed = 12345;
  const rnd = () => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
  await fsp.writeFile(img, crypto.randomBytes(diskBytes));
  const out: RepackRun = { maxUnused, bytesRewritten: 0, bytesDeleted: 0, meanUnused: 0, finalUnused: 0, finalStored: 0, pruneSeconds: 0 };
  const store = await openStore(storeDir);
  try {
    await replicateSeries(store, img, {
      points,
      disk: 'bench',
      chunkSize: CHUNK,
      packSize: PACK,
      before: async (p) => {
        if (p === 1) return;
        // About 5% of the disk changes per point: half in one contiguous run, half scattered.
        const fh = await fsp.open(img, 'r+');
        const n = Math.round(chunks * 0.05);
        const start = Math.floor(rnd() * (chunks - n / 2));
        for (let i = 0; i < n; i++) {
          const c = i < n / 2 ? start + i : Math.floor(rnd() * chunks);
          await fh.write(crypto.randomBytes(CHUNK), 0, CHUNK, c * CHUNK);
        }
        await fh.close();
      },
      after: async () => {
        const t0 = performance.now();
        const r = await pruneStore({ store, disk: 'bench', keep: KEEP, graceMs: 0, maxUnused });
        out.pruneSeconds += (performance.now() - t0) / 1000;
        for (const d of r.domains) {
          out.bytesRewritten += d.bytesRewritten;
          out.bytesDeleted += d.bytesDeleted;
        }
        const s = await stats({ store });
        out.meanUnused += s.unusedBytes / points;
        out.finalUnused = s.unusedBytes;
        out.finalStored = s.storedBytes;
      },
    });
  } finally {
    await store.close();
  }
  return out;
}

export const repack: Section = {
  name: 'repack',
  title: `prune and repack after ${POINTS} points (keep ${KEEP}, ~5% of the disk changed per point): bytes rewritten vs unused bytes left, per --max-unused`,
  spaceNeeded: () => 64 * 1024 * 1024 * 4,

  async run(ctx: SectionContext): Promise<Row[]> {
    const disk = 64 * 1024 * 1024;
    ctx.say(`a ${disk / 2 ** 20} MiB random disk, 64 KiB chunks, 1 MiB packs; prune after every point with grace 0; "never" (0) is the baseline`);
    const runs: RepackRun[] = [];
    for (const t of THRESHOLDS) {
      ctx.log(`--max-unused ${t * 100}%: ${POINTS} points`);
      runs.push(await repackRun(ctx.dir, disk, t));
    }
    const never = runs[0];
    return runs.flatMap((r) => {
      const name = r.maxUnused === 0 ? 'never (0)' : `${r.maxUnused * 100}%`;
      const saved = never.meanUnused - r.meanUnused;
      return [
        {
          name: `max-unused ${name}: bytes rewritten by repack`,
          value: r.bytesRewritten,
          unit: 'B',
          note:
            `mean unused ${(r.meanUnused / 2 ** 20).toFixed(1)} MiB (never: ${(never.meanUnused / 2 ** 20).toFixed(1)} MiB); ` +
            `${saved > 0 ? (r.bytesRewritten / saved).toFixed(2) : '-'} bytes rewritten per byte of mean unused saved; prune ${r.pruneSeconds.toFixed(1)} s in all`,
          data: { ...r },
        },
      ];
    });
  },
};
