// Recover against the durable-write floor: the same number of bytes rnode writes, written by `dd oflag=direct
// conv=fdatasync` from the page-cached image, in the same run, rounds alternating; rnode's input, the store, is in
// page cache too, as dd's is. And a recover from the store as it is after a replicate (written with O_DIRECT, not in
// page cache, on the same device as the output) against the device's floor for it: that write while the store's
// packs are read from the same device, at once. With RNODE_BENCH_BEFORE_CLI
// (another build's dist/cli.js) that build replicates into a store of its own (its format may differ) and recovers
// it in the same rounds, for before/after figures.
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { RecoverResult, ReplicateResult } from 'replication-node';
import type { RnodeRun, Section, SectionContext } from '../lib/context.js';
import { firstDifference, warm } from '../lib/images.js';
import { runNode, type RunResult } from '../lib/measure.js';
import { fmt, human, median, type Row } from '../lib/report.js';

const MB = 1e6;
const DISK = 'bench';

export const recovery: Section = {
  name: 'recovery',
  title: 'rnode recover against the durable-write floor (dd oflag=direct conv=fdatasync of the same bytes)',
  // The store (about half the image), the restored file and the dd file.
  spaceNeeded: (s) => 3 * s.size,

  async run(ctx: SectionContext): Promise<Row[]> {
    const img = await ctx.mixedImage();
    const n = ctx.settings.repeat;
    const before = ctx.settings.beforeCli;
    const store = path.join(ctx.dir, 'store');
    const beforeStore = path.join(ctx.dir, 'store-before');
    const restored = path.join(ctx.dir, 'restored.img');
    const floorFile = path.join(ctx.dir, 'floor.img');
    ctx.log('recovery: replicate (full) of the mixed image');
    await ctx.settle(img);
    await ctx.rnode<ReplicateResult>(['replicate', '--source', img, '--target', store, '--disk', DISK]);
    if (before) {
      ctx.log('recovery: replicate (full) with the build before');
      await ctx.settle(img);
      await ctx.rnode<ReplicateResult>(['replicate', '--source', img, '--target', beforeStore, '--disk', DISK], before);
    }

    const rec: RnodeRun<RecoverResult>[] = [];
    const cold: RnodeRun<RecoverResult>[] = [];
    const inCli: number[] = [];
    const old: RunResult[] = [];
    const floor: RunResult[] = [];
    const deviceFloor: RunResult[] = [];
    // The regular files of a store (recursive readdir lists the folders too), and of those its packs.
    const filesOf = async (root: string) => {
      const files: string[] = [];
      for (const f of await fsp.readdir(root, { recursive: true })) if ((await fsp.stat(path.join(root, f))).isFile()) files.push(path.join(root, f));
      return files;
    };
    const storeFiles = await filesOf(store);
    const beforeFiles = before ? await filesOf(beforeStore) : [];
    const packs = storeFiles.filter((p) => p.includes(`${path.sep}packs${path.sep}`));
    // Files into page cache, or out of it (clean pages: settle() synced them first; one dd per file, in one shell).
    const warmStore = async (files: string[]) => {
      await ctx.settle();
      for (const p of files) await warm(p);
    };
    const coldStore = async (files: string[]) => {
      await ctx.settle();
      await ctx.tool('sh', ['-c', 'for f in "$@"; do dd if="$f" iflag=nocache count=0 status=none; done', 'sh', ...files]);
    };
    let written = 0;
    let exact = true;
    for (let i = 0; i < n; i++) {
      ctx.log(`recovery: round ${i + 1}/${n}`);
      await fsp.rm(restored, { force: true });
      await coldStore(storeFiles);
      cold.push(await ctx.rnode<RecoverResult>(['recover', '--store', store, '--disk', DISK, '--out', restored]));
      await fsp.rm(restored, { force: true });
      await warmStore(storeFiles);
      const r = await ctx.rnode<RecoverResult>(['recover', '--store', store, '--disk', DISK, '--out', restored]);
      rec.push(r);
      inCli.push(r.result.seconds);
      written = r.result.bytesWritten;
      if (i === n - 1) exact = (await firstDifference(img, restored)) < 0;
      await fsp.rm(restored, { force: true });
      if (before) {
        await warmStore(beforeFiles);
        old.push(await runNode(before, ['recover', '--store', beforeStore, '--disk', DISK, '--out', restored, '--json'], { scratch: ctx.dir }));
        await fsp.rm(restored, { force: true });
      }
      // The floor: the bytes rnode wrote (its zeros are holes), from page cache to the same filesystem.
      await ctx.settle(img);
      floor.push(
        await ctx.tool('dd', [
          `if=${img}`,
          `of=${floorFile}`,
          'bs=4M',
          'iflag=count_bytes',
          `count=${written}`,
          'oflag=direct',
          'conv=fdatasync',
          'status=none',
        ]),
      );
      await fsp.rm(floorFile, { force: true });
      // The device floor: the same write, with the store's packs read from the device at the same time.
      await coldStore(packs);
      await ctx.settle(img);
      deviceFloor.push(
        await ctx.tool('sh', [
          '-c',
          `(for f in "$@"; do dd if="$f" of=/dev/null bs=4M iflag=direct status=none; done) & ` +
            `dd if=${JSON.stringify(img)} of=${JSON.stringify(floorFile)} bs=4M iflag=count_bytes count=${written} oflag=direct conv=fdatasync status=none; wait`,
          'sh',
          ...packs,
        ]),
      );
      await fsp.rm(floorFile, { force: true });
    }

    // Ratios within each round (the machine is shared: rounds differ more than contenders within one).
    const ratios = rec.map((r, i) => floor[i].seconds / r.seconds);
    const ratiosCli = inCli.map((s, i) => floor[i].seconds / s);
    const mbps = (runs: { seconds: number }[]) => median(runs.map((r) => written / MB / r.seconds));
    const range = (xs: number[]) => `min ${fmt(Math.min(...xs))}, median ${fmt(median(xs))}, max ${fmt(Math.max(...xs))}`;
    ctx.say(`image ${human(ctx.settings.size)} mixed; rnode writes ${human(written)} (non-zero 4 KiB blocks), dd writes as many; ${n} round(s)`);
    ctx.say('ratio = dd seconds / rnode seconds of the same round (>= 1: rnode at disk speed); rnode wall time includes node start');
    ctx.say("the first row's rnode reads its store from page cache, as dd reads the image; the second's from the device");
    const stages = rec.map((r) => r.result.stages).filter((x) => x !== undefined);
    const stage = (k: keyof RecoverResult['stages']) => fmt(median(stages.map((x) => x[k])));
    if (stages.length) {
      ctx.say(
        `where recover's time went (medians, s; fetch, decode and write summed over the chunks in flight): open ${stage('open')}, ` +
          `fetch ${stage('fetch')}, decode ${stage('decode')}, write ${stage('write')}, waiting for a buffer ${stage('wait')}, final sync ${stage('finish')}`,
      );
    }
    const rows: Row[] = [
      {
        name: 'recover (store in page cache) vs durable-write floor',
        value: mbps(rec),
        unit: 'MB/s written',
        baseline: { name: 'dd oflag=direct conv=fdatasync', value: mbps(floor) },
        ratio: median(ratios),
        target: { text: '>= 0.8', pass: median(ratios) >= 0.8 },
        note: `per-round ratio ${range(ratios)}; inside the CLI (no process start) ${range(ratiosCli)}; ${exact ? 'byte-exact' : 'NOT BYTE-EXACT'}`,
        data: { ratios, ratiosCli, stages },
      },
      {
        name: 'recover (store uncached, same device) vs device floor (store read + output write)',
        value: mbps(cold),
        unit: 'MB/s written',
        baseline: { name: 'dd of the packs (iflag=direct) beside the dd above', value: mbps(deviceFloor) },
        ratio: median(cold.map((r, i) => deviceFloor[i].seconds / r.seconds)),
        note:
          `${packs.length} pack files read while the output is written, one device: what a recover from an uncached local store cannot beat; ` +
          `its seconds over the dd-only floor's ${range(floor.map((f, i) => deviceFloor[i].seconds / f.seconds))}; ` +
          `rnode inside the CLI ${range(cold.map((r, i) => deviceFloor[i].seconds / r.result.seconds))}; this recover vs the dd-only floor ${range(cold.map((r, i) => floor[i].seconds / r.seconds))}`,
      },
    ];
    if (before) {
      const speedup = rec.map((r, i) => old[i].seconds / r.seconds);
      rows.push({
        name: 'recover, this build vs RNODE_BENCH_BEFORE_CLI',
        value: mbps(rec),
        unit: 'MB/s written',
        baseline: { name: 'before', value: mbps(old) },
        ratio: median(speedup),
        note: `per-round speed-up ${range(speedup)}; before vs floor ${range(old.map((o, i) => floor[i].seconds / o.seconds))}`,
      });
    }
    if (!exact) throw Object.assign(new Error('recover was not byte-exact'), { rows });
    return rows;
  },
};
