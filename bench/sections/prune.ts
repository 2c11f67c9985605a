// Prune and repack of repository v2 (issue 14): 30 points of a 64 MiB mixed image into a local fs store, each point
// rewriting 3 chunks with new mixed data, then `prune --keep 7` with its sweep run to the end (the grace period
// stepped over on a test clock: seen, then marked, then deleted) and repack at the default --max-unused. Figures:
// prune's total time against one full replicate of the image in this run, and the bytes repack rewrote against the
// bytes stored before prune. Library calls in this process.
import fsp from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { openStore } from 'replication-node';
import { fillMixed, generateSampleDisk, Prng } from 'replication-node/testing';
import type { Section } from '../lib/context.js';
import { replicateSeries, storedBytes } from '../lib/point-series.js';
import { fmt, ratioOf, type Row } from '../lib/report.js';

const MiB = 1024 * 1024;
const IMAGE_SIZE = 64 * MiB;
const CHUNK = MiB;
const POINTS = 30;
const KEEP = 7;
const CHANGED_PER_POINT = 3;
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

export const prune: Section = {
  name: 'prune',
  title: `prune --keep ${KEEP} and repack after ${POINTS} points of a 64 MiB image (3 chunks changed per point), local fs store`,
  spaceNeeded: () => 4 * IMAGE_SIZE,

  async run(ctx) {
    const { pruneStore, DEFAULT_MAX_UNUSED } = (await import(
      pathToFileURL(path.join(root, 'dist/jobs/prune-v2.js')).href
    )) as typeof import('../../dist/jobs/prune-v2.js');
    const img = path.join(ctx.dir, 'disk.img');
    await generateSampleDisk(img, { size: IMAGE_SIZE, seed: 51, holeEvery: 0 });
    const store = await openStore(path.join(ctx.dir, 'store'));
    const prng = new Prng(52);
    try {
      const fh = await fsp.open(img, 'r+');
      const points = await replicateSeries(store, img, {
        points: POINTS,
        disk: 'bench',
        chunkSize: CHUNK,
        before: async (p) => {
          if (p === 1) return;
          const chunk = Buffer.alloc(CHUNK);
          for (let k = 0; k < CHANGED_PER_POINT; k++) {
            fillMixed(chunk, new Prng(p * 100 + k));
            await fh.write(chunk, 0, CHUNK, prng.int(IMAGE_SIZE / CHUNK) * CHUNK);
          }
          await fh.sync();
        },
      }).finally(() => fh.close());
      const fullSeconds = points[0].seconds;
      const before = await storedBytes(store);
      ctx.say(
        `${POINTS} points stored ${fmt(before / MiB, 'MiB')}; prune keeps ${KEEP}, --max-unused ${DEFAULT_MAX_UNUSED}; grace periods stepped over on a test clock`,
      );

      // Three runs a grace period apart: packs are seen unused, then marked, then deleted (README, prune's rules).
      let clock = Date.now();
      const now = () => clock;
      let seconds = 0;
      let rewritten = 0;
      let deleted = 0;
      let repacked = 0;
      for (let run = 0; run < 3; run++) {
        const r = await pruneStore({ store, ...(run === 0 ? { disk: 'bench', keep: KEEP } : {}), graceMs: 1000, now });
        seconds += r.seconds;
        for (const d of r.domains) {
          rewritten += d.bytesRewritten;
          deleted += d.bytesDeleted;
          repacked += d.packsRepacked;
        }
        clock += 2000;
      }
      const after = await storedBytes(store);
      ctx.log(
        `prune: ${fmt(seconds, 's')}, rewrote ${fmt(rewritten / MiB, 'MiB')}, stored ${fmt(before / MiB, 'MiB')} -> ${fmt(after / MiB, 'MiB')}`,
      );
      const rows: Row[] = [
        {
          name: `prune + repack time (keep ${KEEP} of ${POINTS})`,
          value: seconds,
          unit: 's',
          baseline: { name: 'one full replicate of the image', value: fullSeconds },
          ratio: ratioOf(seconds, fullSeconds),
          note: `three runs (seen, marked, deleted); ${repacked} packs repacked; ${fmt(deleted / MiB, 'MiB')} deleted; stored ${fmt(before / MiB, 'MiB')} -> ${fmt(after / MiB, 'MiB')}`,
        },
        {
          name: 'bytes rewritten by repack',
          value: rewritten / MiB,
          unit: 'MiB',
          baseline: { name: 'stored before prune', value: before / MiB },
          ratio: ratioOf(rewritten, before),
          note: 'live blobs copied out of packs whose unused share exceeded --max-unused',
        },
      ];
      return rows;
    } finally {
      await store.close();
    }
  },
};
