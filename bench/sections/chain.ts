// Long chains (issue 13: an incremental's time follows what changed, not how many points came before). 96 points of a
// 16 MiB image into a local fs store, one chunk rewritten before each, once with chains of delta tables ending at 32
// points (the default) and once with a chain that never ends (maxChain unbounded: how every point was written
// before). Then, through the same store with every GET held 10 ms (a cloud store's round trip; the fs store alone
// answers in microseconds and would hide what a chain costs), the contenders take turns: the next incremental, and a
// recover of the latest point. Library calls in this process.
import fsp from 'node:fs/promises';
import path from 'node:path';
import { openSource, openStore, recover, replicate, type ObjectStore } from 'replication-node';
import { FaultyStore, generateSampleDisk, Prng, fillMixed } from 'replication-node/testing';
import type { Section } from '../lib/context.js';
import { fmt, ratioOf, type Row } from '../lib/report.js';

const MiB = 1024 * 1024;
const IMAGE_SIZE = 16 * MiB;
const CHUNK = 256 * 1024;
const POINTS = 96;
const GET_MS = 10;
/** Unbounded: one chain from the first point on. */
const NO_LIMIT = Number.MAX_SAFE_INTEGER;

const median = (a: number[]) => [...a].sort((x, y) => x - y)[a.length >> 1];

export const chain: Section = {
  name: 'chain',
  title: `an incremental and a recover after ${POINTS} points of a 16 MiB image, chains ending at 32 points vs one unbounded chain, GETs held ${GET_MS} ms`,
  spaceNeeded: () => 8 * IMAGE_SIZE,

  async run(ctx) {
    const img = path.join(ctx.dir, 'disk.img');
    await generateSampleDisk(img, { size: IMAGE_SIZE, seed: 61, holeEvery: 0 });
    const prng = new Prng(62);
    const fh = await fsp.open(img, 'r+');
    const rewriteOne = async (p: number) => {
      const chunk = Buffer.alloc(CHUNK);
      fillMixed(chunk, new Prng(1000 + p));
      await fh.write(chunk, 0, CHUNK, prng.int(IMAGE_SIZE / CHUNK) * CHUNK);
    };
    const point = async (store: ObjectStore, maxChain: number | undefined) => {
      const source = await openSource(img);
      try {
        return await replicate({ store, source, disk: 'bench', chunkSize: CHUNK, maxChain });
      } finally {
        await source.close();
      }
    };
    const open = async (dir: string, maxChain: number | undefined) => {
      const store = await openStore(path.join(ctx.dir, dir));
      // The measured runs' reads wait a cloud store's round trip; the series before them is written at fs speed.
      const slow = new FaultyStore(store).addFault('get', { delayMs: GET_MS, times: Infinity });
      return { dir, maxChain, store, slow, incr: [] as number[], rec: [] as number[] };
    };
    const contenders = [await open('capped', undefined), await open('unbounded', NO_LIMIT)];
    try {
      // The same changes go into both stores: each point is taken into both before the next change.
      for (let p = 1; p <= POINTS; p++) {
        if (p > 1) await rewriteOne(p);
        for (const c of contenders) await point(c.store, c.maxChain);
      }
      for (let round = 0; round < ctx.settings.repeat; round++) {
        await rewriteOne(POINTS + 1 + round);
        for (const c of contenders) {
          let t0 = performance.now();
          await point(c.slow, c.maxChain);
          c.incr.push((performance.now() - t0) / 1000);
          t0 = performance.now();
          const out = path.join(ctx.dir, `${c.dir}.out`);
          await recover({ store: c.slow, disk: 'bench', out });
          c.rec.push((performance.now() - t0) / 1000);
          await fsp.rm(out);
        }
      }
    } finally {
      await fh.close();
      for (const c of contenders) await c.store.close();
    }
    const [capped, unbounded] = contenders;
    ctx.say(`${POINTS} points, then ${ctx.settings.repeat} measured ones; ${CHUNK / 1024} KiB chunks, one rewritten before each point`);
    const runs = (a: number[]) => a.map((x) => fmt(x, 's')).join(', ');
    // Capped against unbounded, each the median of its runs.
    const row = (name: string, a: number[], b: number[], note: string): Row => ({
      name,
      value: median(a),
      unit: 's',
      baseline: { name: 'the same with one unbounded chain', value: median(b) },
      ratio: ratioOf(median(a), median(b)),
      target: { text: '< 1.0x', pass: median(a) < median(b) },
      note: `${note}runs ${runs(a)} vs ${runs(b)}`,
    });
    const perRun = (c: (typeof contenders)[number]) => Math.round(c.slow.calls.get / ctx.settings.repeat);
    const rows = [
      row('incremental after the series', capped.incr, unbounded.incr, `GETs per run ${perRun(capped)} vs ${perRun(unbounded)} (with the recover); `),
      row('recover of the latest point', capped.rec, unbounded.rec, ''),
    ];
    return rows;
  },
};
