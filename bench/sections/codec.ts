// The codec against its baselines on the two kinds of data the mixed image holds: `--compression none` against
// LZ4 on incompressible data (skipping the compressor must pay), and LZ4's CPU time on the text against `lz4 -1`'s.
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { ReplicateResult } from 'replication-node';
import type { Section } from '../lib/context.js';
import { fmt, human, median, spread, type Row } from '../lib/report.js';
import { floorScript, stagesText } from './throughput.js';

const MiB = 1024 * 1024;
/** Alternating none / lz4 (the default codec) pairs per round (see run()). */
const PAIRS = 3;

/** Writes the [from, to) third of every MiB of the mixed image (random: 0, text: 1) as one file. */
async function extractThird(image: string, size: number, third: 0 | 1, out: string): Promise<number> {
  const src = await fsp.open(image, 'r');
  const dst = await fsp.open(out, 'w');
  try {
    const buf = Buffer.allocUnsafe(MiB);
    const t = Math.floor(MiB / 3);
    const [from, to] = third === 0 ? [0, t & ~3] : [t & ~3, 2 * t];
    let written = 0;
    for (let pos = 0; pos < size; pos += MiB) {
      await src.read(buf, 0, MiB, pos);
      // Whole 4 KiB blocks only, so both contenders read the same page-aligned file.
      const piece = buf.subarray(from, from + Math.floor((to - from) / 4096) * 4096);
      await dst.write(piece);
      written += piece.length;
    }
    return written;
  } finally {
    await Promise.all([src.close(), dst.close()]);
  }
}

export const codec: Section = {
  name: 'codec',
  title: '--compression none vs lz4 on incompressible data; LZ4 CPU time on text vs lz4 -1',
  spaceNeeded: (s) => 2 * s.size,

  async run(ctx) {
    const { settings, tools } = ctx;
    const img = await ctx.mixedImage();
    const n = settings.repeat;
    const random = path.join(ctx.dir, 'random.img');
    const text = path.join(ctx.dir, 'text.img');
    const randomBytes = await extractThird(img, settings.size, 0, random);
    const textBytes = await extractThird(img, settings.size, 1, text);
    ctx.say(`random.img ${human(randomBytes)} and text.img ${human(textBytes)}: the random and the text thirds of the mixed image`);

    const none: ReplicateResult[] = [];
    const lz4: ReplicateResult[] = [];
    const wall = { none: [] as number[], lz4: [] as number[] };
    const onText: ReplicateResult[] = [];
    const lzCpu: number[] = [];
    /** none's wall time over lz4's in the same pair, one per pair. */
    const pairRatios: number[] = [];
    /** The durable-write floor of random.img's bytes (what both contenders store), seconds per round. */
    const floor: number[] = [];
    const pair = [
      ['none', none, wall.none],
      ['lz4', lz4, wall.lz4],
    ] as const;
    for (let i = 0; i < n; i++) {
      // The two write the same bytes at the device's pace and differ by the ~0.05 s of CPU none saves: three runs
      // each were too few (medians 0.93-1.12x from run to run while 8 alternating pairs read 0.97x), so each round
      // runs PAIRS pairs, who goes first alternating from pair to pair, and the ratio is the median of the pairs'.
      for (let k = 0; k < PAIRS; k++) {
        const seconds: Record<string, number> = {};
        for (const [codecName, into, w] of (i * PAIRS + k) % 2 === 0 ? pair : [...pair].reverse()) {
          ctx.log(`round ${i + 1}/${n}, pair ${k + 1}/${PAIRS}: replicate random.img --compression ${codecName}`);
          await ctx.settle(random);
          const store = path.join(ctx.dir, `store-${codecName}-${i}-${k}`);
          const r = await ctx.rnode<ReplicateResult>(['replicate', '--source', random, '--target', store, '--disk', 'r', '--compression', codecName]);
          into.push(r.result);
          w.push(r.seconds);
          seconds[codecName] = r.seconds;
          await fsp.rm(store, { recursive: true, force: true });
        }
        pairRatios.push(seconds.none / seconds.lz4);
      }
      // Both store random.img's bytes as they are: neither can finish before the disk has them durably.
      ctx.log(`round ${i + 1}/${n}: durable-write floor of random.img (4 parallel dd oflag=direct conv=fdatasync)`);
      await ctx.settle(random);
      floor.push((await ctx.tool('sh', ['-c', floorScript(random, randomBytes, path.join(ctx.dir, 'floor'))])).seconds);
      ctx.log(`round ${i + 1}/${n}: replicate text.img, and lz4 -1 of it`);
      await ctx.settle(text);
      const t = await ctx.rnode<ReplicateResult>(['replicate', '--source', text, '--target', path.join(ctx.dir, `store-text-${i}`), '--disk', 't']);
      onText.push(t.result);
      await fsp.rm(path.join(ctx.dir, `store-text-${i}`), { recursive: true, force: true });
      if (tools.lz4) {
        await ctx.settle(text);
        const l = await ctx.tool(tools.lz4, ['-1', '-c', text], { stdout: 'discard' });
        if (l.cpuSeconds !== undefined) lzCpu.push(l.cpuSeconds);
      }
    }

    const rows: Row[] = [];
    const mNone = median(wall.none);
    const mLz4 = median(wall.lz4);
    const pairRatio = median(pairRatios);
    rows.push({
      name: 'replicate random.img, --compression none',
      value: mNone,
      unit: 's',
      baseline: { name: 'lz4', value: mLz4 },
      ratio: pairRatio,
      target: { text: '< 1.0x (none faster)', pass: pairRatio < 1 },
      note: [
        `ratio: the median over ${pairRatios.length} alternating pairs of none's wall time over lz4's (per pair ${fmt(Math.min(...pairRatios))}-${fmt(Math.max(...pairRatios))})`,
        `wall from spawn to exit; none ${spread(wall.none, 's')}; lz4 ${spread(wall.lz4, 's')}`,
        `compress ${fmt(median(none.map((r) => r.stages.compress)), 's')} vs ${fmt(median(lz4.map((r) => r.stages.compress)), 's')}`,
        `the durable-write floor of the ${human(randomBytes)} both store: ${fmt(median(floor), 's')}` +
          (floor.length > 1 ? ` (${spread(floor, 's')})` : '') +
          `; none at ${fmt(median(floor) / mNone)}x of it, ` +
          `lz4 at ${fmt(median(floor) / mLz4)}x (process start included): the CPU none saves shows only where a run is not held by the disk`,
      ].join('; '),
      data: { none: none.map((r) => r.stages), lz4: lz4.map((r) => r.stages) },
    });
    const packText = median(onText.map((r) => r.stages.compress));
    const lzText = lzCpu.length ? median(lzCpu) : null;
    rows.push({
      name: 'LZ4 time on text.img (codec workers)',
      value: packText,
      unit: 's',
      baseline: lzText !== null ? { name: 'lz4 -1 CPU (user+sys)', value: lzText } : undefined,
      ratio: lzText ? packText / lzText : undefined,
      target: { text: '<= 1.2x lz4 -1', pass: lzText ? packText / lzText <= 1.2 : undefined },
      note:
        `rnode: the workers' compress stage (LZ4 of each chunk as one block, and the payload's xxh64), summed over workers; ` +
        `lz4 -1: CPU of the whole process reading the file, output discarded; rnode run: ${stagesText(onText[onText.length - 1].stages)}`,
      data: { rnode: onText.map((r) => r.stages), lz4Cpu: lzCpu },
    });
    return rows;
  },
};
