// Peak RSS must not grow with disk size: a full replicate of the mixed image next to one of a much larger sparse
// image (little allocated data, so the run costs seconds), each in its own child process.
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { ReplicateResult } from 'replication-node';
import type { RnodeRun, Section, SectionContext } from '../lib/context.js';
import { allocatedBytes, makeSparseImage } from '../lib/images.js';
import { human, median, ratioOf, type Row } from '../lib/report.js';

const MB = 1e6;
/** "Flat": the large sparse disk's peak may exceed the mixed image's by at most this factor (noise allowance). */
const FLAT_FACTOR = 1.25;
const RSS_LIMIT_MB = 200;

function maxRss(runs: RnodeRun<unknown>[]): number | null {
  const xs = runs.map((r) => r.peakRss);
  return xs.every((x): x is number => x !== undefined) && xs.length ? Math.max(...xs) / MB : null;
}

export const memory: Section = {
  name: 'memory',
  title: 'peak RSS flat in disk size: full replicate of the mixed image and of a large sparse image',
  spaceNeeded: (s) => s.size + 3 * s.sparseData,

  async run(ctx: SectionContext): Promise<Row[]> {
    const { settings } = ctx;
    const img = await ctx.mixedImage();
    const sparse = path.join(ctx.dir, 'sparse.img');
    ctx.log(`making the ${human(settings.sparseSize)} sparse image`);
    await makeSparseImage(sparse, settings.sparseSize, settings.sparseData);
    await ctx.settle(); // freshly written: in page cache, and now clean
    const alloc = await allocatedBytes(sparse);
    const dense = `${human(settings.size)} mixed`;
    const large = `${human(settings.sparseSize)} sparse`;
    ctx.say(`${dense}: fully allocated; ${large}: ${human(alloc)} allocated in 1 MiB pieces spread over it, the rest holes`);
    ctx.say(`peak RSS = max over ${settings.repeat} run(s) of each, the two interleaved, each a fresh store and its own process`);

    const denseRuns: RnodeRun<ReplicateResult>[] = [];
    const sparseRuns: RnodeRun<ReplicateResult>[] = [];
    for (let i = 0; i < settings.repeat; i++) {
      for (const [file, runs, name] of [
        [img, denseRuns, 'mixed'],
        [sparse, sparseRuns, 'sparse'],
      ] as const) {
        const store = path.join(ctx.dir, `store-${name}`);
        await fsp.rm(store, { recursive: true, force: true });
        ctx.log(`round ${i + 1}/${settings.repeat}: full replicate of the ${name} image`);
        await ctx.settle(file === img ? img : undefined);
        runs.push(await ctx.rnode<ReplicateResult>(['replicate', '--source', file, '--target', store, '--disk', 'bench']));
        await fsp.rm(store, { recursive: true, force: true });
      }
    }

    const denseRss = maxRss(denseRuns);
    const sparseRss = maxRss(sparseRuns);
    const s = sparseRuns[sparseRuns.length - 1].result;
    const flat = ratioOf(sparseRss, denseRss);
    const rate = (runs: RnodeRun<ReplicateResult>[]) => median(runs.map((r) => r.result.diskSize / MB / r.seconds));
    return [
      {
        name: `peak RSS, full replicate, ${dense}`,
        value: denseRss,
        unit: 'MB',
        target: { text: `< ${RSS_LIMIT_MB} MB`, pass: denseRss === null ? undefined : denseRss < RSS_LIMIT_MB },
      },
      {
        name: `peak RSS, full replicate, ${large}`,
        value: sparseRss,
        unit: 'MB',
        baseline: denseRss !== null ? { name: dense, value: denseRss } : undefined,
        ratio: flat,
        target: {
          text: `< ${RSS_LIMIT_MB} MB, <= ${FLAT_FACTOR}x ${dense}`,
          pass: sparseRss === null || flat === undefined ? undefined : sparseRss < RSS_LIMIT_MB && flat <= FLAT_FACTOR,
        },
        note: `${s.chunksTotal} chunks in the grid, ${human(s.bytesRead)} read, ${s.chunksChanged} stored, ${s.chunksZero} zero`,
      },
      {
        name: `full replicate, ${large}`,
        value: rate(sparseRuns),
        unit: 'MB/s',
        baseline: { name: dense, value: rate(denseRuns) },
        ratio: ratioOf(rate(sparseRuns), rate(denseRuns)),
        note: 'MB/s of disk size: holes are skipped via the allocated-extent map, not read',
      },
    ];
  },
};
