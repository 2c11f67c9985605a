// Full replicate, incremental (~1% of chunks changed) and recover through the real CLI, each next to the same
// image through `lz4 -1` / `lz4 -d` and `restic backup`, and to the durable-write floor of the bytes a full point
// stores, all in this run, contenders interleaved round by round; with where each rnode run's time went.
import crypto from 'node:crypto';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { lz4Implementation, xxh3Implementation, type ReplicateResult, type RecoverResult, type StageTimes } from 'replication-node';
import { cachedFraction, type RnodeRun, type Section, type SectionContext } from '../lib/context.js';
import { changeChunks, firstDifference } from '../lib/images.js';
import { syncAll, type RunResult } from '../lib/measure.js';
import { fmt, human, median, ratioOf, spread, type Row } from '../lib/report.js';

const MB = 1e6;
const DISK = 'bench';
const CHANGE_FRACTION = 0.01;
/** Node reading the image and taking keyed BLAKE3 of each chunk on as many threads as rnode's codec workers. */
const SCAN_FLOOR = fileURLToPath(new URL('../lib/scan-floor.js', import.meta.url));
const SCAN_THREADS = Math.max(1, Math.min(4, os.availableParallelism()));
/** Change-hash runs in flight, as rnode's scan keeps them (src/jobs/replicate/prescan.ts). */
const SCAN_RUNS = 8;

/** Throughput in MB/s of disk size for each run, and its median. */
function rates(size: number, runs: { seconds: number }[]): { all: number[]; median: number | null } {
  const all = runs.map((r) => size / MB / r.seconds);
  return { all, median: all.length ? median(all) : null };
}

function peakRss(runs: RunResult[]): number | null {
  const xs = runs.map((r) => r.peakRss).filter((x): x is number => x !== undefined);
  return xs.length === runs.length && xs.length > 0 ? Math.max(...xs) / MB : null;
}

/** Every file under dir, depth first (a store's chunk objects). */
async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fsp.readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...(await filesUnder(p)));
    else if (e.isFile()) out.push(p);
  }
  return out.sort();
}

/**
 * The durable-write floor: the shell script that writes file's bytes as 4 parallel `dd oflag=direct
 * conv=fdatasync` streams of a quarter each into outPrefix.N (what the disk can take, durably, with no CPU work).
 */
export function floorScript(file: string, size: number, outPrefix: string): string {
  const MiBs = Math.ceil(size / 2 ** 20);
  const quarter = Math.ceil(MiBs / 4);
  const streams = [0, 1, 2, 3].map(
    (i) => `dd if='${file}' of='${outPrefix}.${i}' bs=1M skip=${i * quarter} count=${quarter} oflag=direct conv=fdatasync status=none &`,
  );
  return `${streams.join(' ')} wait; rm -f '${outPrefix}'.*`;
}

/** Median of each stage over runs (see StageTimes), rounded to ms. */
function medianStages(runs: ReplicateResult[]): StageTimes | undefined {
  const all = runs.map((r) => r.stages).filter((s): s is StageTimes => s !== undefined);
  if (!all.length) return undefined;
  const m = (f: (s: StageTimes) => number) => Math.round(median(all.map(f)) * 1000) / 1000;
  return {
    read: m((s) => s.read),
    hash: m((s) => s.hash),
    compress: m((s) => s.compress),
    encrypt: m((s) => s.encrypt),
    encodeQueue: m((s) => s.encodeQueue),
    write: m((s) => s.write),
    wait: m((s) => s.wait),
    waitFor: { encode: m((s) => s.waitFor.encode), write: m((s) => s.waitFor.write) },
  };
}

/** The stages as one line: what each took, summed over chunks in flight, and what the reader waited for. */
export function stagesText(s: StageTimes): string {
  const f = (x: number) => `${x.toFixed(2)} s`;
  return (
    `read ${f(s.read)}, hash ${f(s.hash)}, compress ${f(s.compress)}, encrypt ${f(s.encrypt)}, write ${f(s.write)} ` +
    `(summed over chunks in flight; ${f(s.encodeQueue)} queued for a codec worker); the reader waited ${f(s.wait)}: ` +
    `${f(s.waitFor.encode)} on encoding, ${f(s.waitFor.write)} on the store`
  );
}

async function timed<T>(fn: () => Promise<T>): Promise<number> {
  const t = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t) / 1e9;
}

export const throughput: Section = {
  name: 'throughput',
  title: 'full replicate, incremental and recover (rnode CLI) against lz4 -1 and restic on one mixed image',
  // At its peak: one store per round (about half the image each: the mixed image compresses to ~47%), the lz4 file
  // and the restored file (or restic repo, or lz4 -d output), each at most the image size.
  spaceNeeded: (s) => (s.repeat / 2 + 2) * s.size,

  async run(ctx: SectionContext): Promise<Row[]> {
    const { settings, tools } = ctx;
    const size = settings.size;
    const img = await ctx.mixedImage();
    const n = settings.repeat;
    const lz4File = path.join(ctx.dir, 'mixed.img.lz4');
    const resticEnv = {
      ...process.env,
      // A throwaway repository's password: only ever in the child's environment, never printed.
      RESTIC_PASSWORD: crypto.randomBytes(24).toString('hex'),
      RESTIC_CACHE_DIR: path.join(ctx.dir, 'restic-cache'),
    };
    const cached = await cachedFraction(tools.fincore, img);
    ctx.say(
      `image: ${human(size)} mixed (per MiB 1/3 random, 1/3 text, 1/3 zero), no holes, read from page cache by every contender` +
        (cached === undefined ? '' : ` (${(cached * 100).toFixed(0)}% resident after warming)`),
    );
    ctx.say(`rnode store, lz4 output, restic repo and restored files are all in ${ctx.dir} (${ctx.fsType}): the same filesystem`);
    ctx.say(`each figure: median of ${n} run(s), contenders interleaved; wall time from spawn to exit (process start included);`);
    ctx.say('MB/s = 10^6 bytes of disk size per second; `sync` (untimed) and a page-cache read of the image before every run');
    ctx.say('rnode fsyncs every stored object and the restored file; lz4 does not fsync (see the "+ sync" rows)');
    ctx.say(`rnode compresses with ${lz4Implementation} and takes change hashes (XXH3-128) with ${xxh3Implementation}`);
    if (!tools.lz4) ctx.say('lz4 is not installed: its baselines are skipped (apt-get install lz4)');
    if (!tools.restic) ctx.say('restic is not installed: its baseline is skipped (apt-get install restic)');

    // Round by round: rnode full, the write floor of what it stored, lz4 -1 to a file (then sync, timed apart),
    // lz4 -1 to /dev/null, restic backup.
    const full: RunResult[] = [];
    const floor: RunResult[] = [];
    const storedFile = path.join(ctx.dir, 'stored.bin');
    let storedBytes = 0;
    const fullResults: ReplicateResult[] = [];
    const lzFile: RunResult[] = [];
    const lzFileSync: { seconds: number }[] = [];
    const lzNull: RunResult[] = [];
    const restic: RunResult[] = [];
    // The build before (RNODE_BENCH_BEFORE_CLI), in the same rounds, each on a store of its own.
    const before = settings.beforeCli;
    const oldFull: RunResult[] = [];
    const oldIncr: RunResult[] = [];
    const oldRec: RunResult[] = [];
    let oldStore = '';
    // Each round's store stays until the section ends: removing 1,500 files and creating as many right after
    // measures the filesystem, not rnode (ext4 without a journal skips inodes freed in the last 30 s, which took
    // a quarter of the CPU of a run that followed a removal).
    let store = '';
    for (let i = 0; i < n; i++) {
      store = path.join(ctx.dir, `store-${i}`);
      ctx.log(`round ${i + 1}/${n}: rnode replicate (full)`);
      await ctx.settle(img);
      const r = await ctx.rnode<ReplicateResult>(['replicate', '--source', img, '--target', store, '--disk', DISK]);
      if (!r.result.full) throw new Error(`the first point into a fresh store was not full: ${JSON.stringify(r.result)}`);
      full.push(r);
      fullResults.push(r.result);
      if (before) {
        oldStore = path.join(ctx.dir, `store-before-${i}`);
        ctx.log(`round ${i + 1}/${n}: the build before, replicate (full)`);
        await ctx.settle(img);
        oldFull.push(await ctx.rnode(['replicate', '--source', img, '--target', oldStore, '--disk', DISK], before));
      }
      if (i === 0) {
        // The same bytes the point stored (its objects, concatenated untimed), written the fastest durable way.
        const fh = await fsp.open(storedFile, 'w');
        for (const f of await filesUnder(store)) await fh.write(await fsp.readFile(f));
        storedBytes = (await fh.stat()).size;
        await fh.close();
      }
      ctx.log(`round ${i + 1}/${n}: durable-write floor (4 parallel dd oflag=direct conv=fdatasync)`);
      await ctx.settle(storedFile);
      floor.push(await ctx.tool('sh', ['-c', floorScript(storedFile, storedBytes, path.join(ctx.dir, 'floor'))]));
      if (tools.lz4) {
        ctx.log(`round ${i + 1}/${n}: lz4 -1 to a file, then to /dev/null`);
        await ctx.settle(img);
        const l = await ctx.tool(tools.lz4, ['-1', '-f', img, lz4File]);
        lzFile.push(l);
        lzFileSync.push({ seconds: l.seconds + (await timed(syncAll)) });
        await ctx.settle(img);
        lzNull.push(await ctx.tool(tools.lz4, ['-1', '-c', img], { stdout: 'discard' }));
      }
      if (tools.restic) {
        ctx.log(`round ${i + 1}/${n}: restic backup`);
        const repo = path.join(ctx.dir, 'restic-repo');
        await fsp.rm(repo, { recursive: true, force: true });
        await ctx.tool(tools.restic, ['-r', repo, 'init', '--quiet'], { env: resticEnv });
        await ctx.settle(img);
        restic.push(await ctx.tool(tools.restic, ['-r', repo, 'backup', '--quiet', img], { env: resticEnv }));
        await fsp.rm(repo, { recursive: true, force: true });
      }
    }
    const last = fullResults[fullResults.length - 1];
    const chunkSize = last.chunkSize;

    // Incremental points on the last round's store, each after its own ~1% change.
    const incr: RnodeRun<ReplicateResult>[] = [];
    const incrNotes: string[] = [];
    const xxh: RunResult[] = [];
    const scanFloor: RunResult[] = [];
    const idFloor: RunResult[] = [];
    // What any job costs whatever the disk's size: an unchanged replicate of a 1 MiB disk (process start, codec
    // workers, lease, the parent's table, commit), and node's own start. A whole incremental must fit in twice
    // xxhsum's time to reach 0.5x of it; these show how much of that budget is gone before the first chunk is read.
    const tiny = path.join(ctx.dir, 'tiny.img');
    const tinyStore = path.join(ctx.dir, 'store-tiny');
    await fsp.writeFile(tiny, crypto.randomBytes(2 ** 20));
    await ctx.rnode(['replicate', '--source', tiny, '--target', tinyStore, '--disk', DISK]);
    const fixed: RunResult[] = [];
    const nodeStart: RunResult[] = [];
    const nodeStartNoCa: RunResult[] = [];
    for (let i = 0; i < n; i++) {
      await ctx.settle(tiny);
      fixed.push(await ctx.rnode(['replicate', '--source', tiny, '--target', tinyStore, '--disk', DISK]));
      nodeStart.push(await ctx.tool(process.execPath, ['-e', '0']));
      // NODE_EXTRA_CA_CERTS (set by some environments for every process) makes node parse that file at each start,
      // before any script runs: what it costs here, beside the start every rnode command pays.
      if (process.env.NODE_EXTRA_CA_CERTS) {
        const { NODE_EXTRA_CA_CERTS: _, ...env } = process.env;
        nodeStartNoCa.push(await ctx.tool(process.execPath, ['-e', '0'], { env }));
      }
      const touched = await changeChunks(img, size, chunkSize, CHANGE_FRACTION, 100 + i);
      ctx.log(`incremental ${i + 1}/${n}: ${touched} chunks changed`);
      await ctx.settle(img);
      const r = await ctx.rnode<ReplicateResult>(['replicate', '--source', img, '--target', store, '--disk', DISK]);
      if (r.result.full) throw new Error(`the point after a ~1% change was full: ${JSON.stringify(r.result)}`);
      if (r.result.comparedBy !== 'change-hashes') ctx.say(`incremental ${i + 1} compared by ${r.result.comparedBy}, not by change hashes`);
      incr.push(r);
      if (tools.xxhsum) {
        await ctx.settle(img);
        xxh.push(await ctx.tool(tools.xxhsum, ['-H2', img], { stdout: 'discard' }));
      }
      await ctx.settle(img);
      scanFloor.push(await ctx.tool(process.execPath, [SCAN_FLOOR, img, String(SCAN_RUNS), 'xxh3']));
      await ctx.settle(img);
      idFloor.push(await ctx.tool(process.execPath, [SCAN_FLOOR, img, String(SCAN_THREADS), 'blake3']));
      if (before) {
        await ctx.settle(img);
        oldIncr.push(await ctx.rnode(['replicate', '--source', img, '--target', oldStore, '--disk', DISK], before));
      }
      incrNotes.push(`${r.result.chunksChanged}/${touched}` + (r.result.chunksChanged === touched ? '' : ' (MISMATCH)'));
    }
    const lastIncr = incr[incr.length - 1].result;

    // Recover of the latest point (it needs chunks of the full point and of every incremental), against lz4 -d.
    const restored = path.join(ctx.dir, 'restored.img');
    const lzOut = path.join(ctx.dir, 'lz4-decompressed.img');
    const rec: RunResult[] = [];
    let recResult: RecoverResult | undefined;
    const lzDec: RunResult[] = [];
    const lzDecSync: { seconds: number }[] = [];
    let exact = true;
    for (let i = 0; i < n; i++) {
      ctx.log(`round ${i + 1}/${n}: rnode recover latest`);
      await fsp.rm(restored, { force: true });
      await ctx.settle();
      const r = await ctx.rnode<RecoverResult>(['recover', '--store', store, '--disk', DISK, '--point', 'latest', '--out', restored]);
      rec.push(r);
      recResult = r.result;
      if (i === n - 1) {
        const at = await firstDifference(img, restored);
        exact = at < 0;
        if (!exact) ctx.say(`RECOVER IS NOT BYTE-EXACT: first difference at offset ${at}`);
      }
      if (before) {
        await fsp.rm(restored, { force: true });
        await ctx.settle();
        oldRec.push(await ctx.rnode(['recover', '--store', oldStore, '--disk', DISK, '--point', 'latest', '--out', restored], before));
        await fsp.rm(restored, { force: true });
      }
      if (tools.lz4) {
        ctx.log(`round ${i + 1}/${n}: lz4 -d to a file`);
        await fsp.rm(lzOut, { force: true });
        await ctx.settle();
        const l = await ctx.tool(tools.lz4, ['-d', '-f', lz4File, lzOut]);
        lzDec.push(l);
        lzDecSync.push({ seconds: l.seconds + (await timed(syncAll)) });
        await fsp.rm(lzOut, { force: true });
      }
    }

    const fullR = rates(size, full);
    const floorR = rates(size, floor);
    const stages = medianStages(fullResults);
    if (stages) ctx.say(`where a full replicate's time went (median of ${fullResults.length}): ${stagesText(stages)}`);
    const lzFileR = rates(size, lzFile);
    const lzFileSyncR = rates(size, lzFileSync);
    const lzNullR = rates(size, lzNull);
    const resticR = rates(size, restic);
    const incrR = rates(size, incr);
    const xxhR = rates(size, xxh);
    const scanFloorR = rates(size, scanFloor);
    const idFloorR = rates(size, idFloor);
    await fsp.rm(storedFile, { force: true });
    const recR = rates(size, rec);
    const lzDecR = rates(size, lzDec);
    const lzDecSyncR = rates(size, lzDecSync);
    const lz4Size = tools.lz4 ? (await fsp.stat(lz4File)).size : 0;
    const cliSeconds = median(fullResults.map((r) => r.seconds));

    const target = (text: string, ratio: number | undefined, min: number) => ({ text, pass: ratio === undefined ? undefined : ratio >= min });
    const rssTarget = (mb: number | null) => ({ text: '< 200 MB', pass: mb === null ? undefined : mb < 200 });
    const fullRss = peakRss(full);
    const rows: Row[] = [];
    const push = (r: Row) => rows.push(r);

    const r0 = ratioOf(fullR.median, floorR.median);
    push({
      name: 'full replicate',
      value: fullR.median,
      unit: 'MB/s',
      baseline: { name: 'durable-write floor of its bytes', value: floorR.median! },
      ratio: r0,
      target: target('>= 0.8x write floor', r0, 0.8),
      note: [
        `floor: the ${human(storedBytes)} the point stored, as 4 parallel dd oflag=direct conv=fdatasync streams`,
        spread(floorR.all, 'MB/s') && `floor ${spread(floorR.all, 'MB/s')}`,
      ]
        .filter(Boolean)
        .join('; '),
      ...(stages ? { data: { stages, runs: fullResults.map((r) => ({ seconds: r.seconds, stages: r.stages })) } } : {}),
    });
    const r1 = ratioOf(fullR.median, lzFileR.median);
    push({
      name: 'full replicate',
      value: fullR.median,
      unit: 'MB/s',
      baseline: tools.lz4 ? { name: 'lz4 -1 to file', value: lzFileR.median! } : undefined,
      ratio: r1,
      note: [
        spread(fullR.all, 'MB/s') && `rnode ${spread(fullR.all, 'MB/s')}`,
        `${fmt(cliSeconds, 's')} inside the CLI vs ${fmt(median(full.map((r) => r.seconds)), 's')} wall`,
        `stored ${human(last.bytesWritten)} in ${last.chunksChanged} chunks of ${human(chunkSize)}`,
        tools.lz4 ? `lz4 file ${human(lz4Size)}${spread(lzFileR.all, 'MB/s') && `, ${spread(lzFileR.all, 'MB/s')}`}` : 'lz4 not installed',
      ]
        .filter(Boolean)
        .join('; '),
    });
    // What the device allows, whatever the writer: the point's bytes at this run's floor, and (were every compressible
    // byte gone) only the image's random third. A target above these is beyond this machine's disk.
    const ceiling = (baseline: number | null | undefined) => {
      if (!floorR.median || !baseline || !storedBytes) return '';
      const randomOnly = (floorR.median * storedBytes) / (size / 3);
      return (
        `at this run's write floor of its bytes rnode would be at ${(floorR.median / baseline).toFixed(2)}x; ` +
        `writing only the image's random third (${human(size / 3)}) at the floor's rate, ${(randomOnly / baseline).toFixed(2)}x`
      );
    };
    const r2 = ratioOf(fullR.median, resticR.median);
    push({
      name: 'full replicate',
      value: fullR.median,
      unit: 'MB/s',
      baseline: tools.restic ? { name: 'restic backup', value: resticR.median! } : undefined,
      ratio: r2,
      target: target('>= 5.0x restic', r2, 5),
      note: tools.restic
        ? ['restic: a fresh local repo each run (init untimed), default compression', spread(resticR.all, 'MB/s'), ceiling(resticR.median)]
            .filter(Boolean)
            .join('; ')
        : 'restic not installed: skipped',
    });
    if (tools.lz4) {
      const r4 = ratioOf(fullR.median, lzFileSyncR.median);
      push({
        name: 'full replicate',
        value: fullR.median,
        unit: 'MB/s',
        baseline: { name: 'lz4 -1 to file + sync', value: lzFileSyncR.median! },
        ratio: r4,
        target: target('>= 2.5x lz4 -1 + sync', r4, 2.5),
        note: ['lz4 made durable like the store is: its wall time plus a following `sync`', ceiling(lzFileSyncR.median)].filter(Boolean).join('; '),
      });
      push({
        name: 'full replicate',
        value: fullR.median,
        unit: 'MB/s',
        baseline: { name: 'lz4 -1 -c > /dev/null', value: lzNullR.median! },
        ratio: ratioOf(fullR.median, lzNullR.median),
        note: ['compute-only reference, nothing written', spread(lzNullR.all, 'MB/s')].filter(Boolean).join('; '),
      });
    }
    push({
      name: `incremental (~${CHANGE_FRACTION * 100}% chunks changed)`,
      value: incrR.median,
      unit: 'MB/s',
      baseline: { name: 'rnode full replicate', value: fullR.median! },
      ratio: ratioOf(incrR.median, fullR.median),
      note: [
        `chunks found changed/touched per run: ${incrNotes.join(', ')}`,
        `stored ${human(lastIncr.bytesWritten)} (last run)`,
        'the raw source reads the whole disk to find changes',
        spread(incrR.all, 'MB/s'),
      ]
        .filter(Boolean)
        .join('; '),
    });
    const r5 = ratioOf(incrR.median, xxhR.median);
    push({
      name: `incremental (~${CHANGE_FRACTION * 100}% chunks changed)`,
      value: incrR.median,
      unit: 'MB/s',
      baseline: tools.xxhsum ? { name: 'xxhsum -H2 of the image', value: xxhR.median! } : undefined,
      ratio: r5,
      target: target('>= 0.5x xxhsum -H2', r5, 0.5),
      note: tools.xxhsum
        ? [
            'both read the whole image from page cache; rnode also finds, stores and commits the changes',
            `compared by ${[...new Set(incr.map((r) => r.result.comparedBy))].join(', ')}`,
            spread(xxhR.all, 'MB/s') && `xxhsum ${spread(xxhR.all, 'MB/s')}`,
            scanFloorR.median &&
              xxhR.median &&
              `the floor of that scan (a Node process that only loads the addon and reads the image through its change-hash runs, ` +
                `XXH3-128 of each 1 MiB on the libuv pool, nothing else) reaches ${(scanFloorR.median / xxhR.median).toFixed(2)}x of xxhsum: ` +
                'the most an incremental can here',
            idFloorR.median &&
              xxhR.median &&
              `with chunk ids instead (a node without the parent's change hashes: ${SCAN_THREADS} worker threads, keyed BLAKE3 of each ` +
                `1 MiB) the floor is ${(idFloorR.median / xxhR.median).toFixed(2)}x`,
            xxhR.median &&
              `0.5x of xxhsum leaves ${fmt((2 * size) / xxhR.median / 1e6, 's')} for the whole job; an unchanged replicate of a 1 MiB disk ` +
                `takes ${fmt(median(fixed.map((r) => r.seconds)), 's')} of it from spawn to exit (\`node -e 0\`: ${fmt(median(nodeStart.map((r) => r.seconds)), 's')}` +
                (nodeStartNoCa.length
                  ? `, ${fmt(median(nodeStartNoCa.map((r) => r.seconds)), 's')} without the NODE_EXTRA_CA_CERTS this environment sets, which node parses at every start)`
                  : ')'),
          ]
            .filter(Boolean)
            .join('; ')
        : 'xxhsum not installed (apt: xxhash): skipped',
    });
    push({
      name: `incremental (~${CHANGE_FRACTION * 100}% chunks changed)`,
      value: incrR.median,
      unit: 'MB/s',
      baseline: { name: 'scan floor: Node reading the image with XXH3-128 per chunk', value: scanFloorR.median! },
      ratio: ratioOf(incrR.median, scanFloorR.median),
      note: [
        `the addon's change-hash runs (pread + XXH3-128 of 64 chunks each, ${SCAN_RUNS} at once on the libuv pool), as rnode's scan ` +
          'reads them; process start included',
        spread(scanFloorR.all, 'MB/s') && `floor ${spread(scanFloorR.all, 'MB/s')}`,
        idFloorR.median && `with keyed BLAKE3 chunk ids on worker threads instead: ${spread(idFloorR.all, 'MB/s')}`,
      ]
        .filter(Boolean)
        .join('; '),
    });
    const r3 = ratioOf(recR.median, lzDecR.median);
    push({
      name: 'recover latest point',
      value: recR.median,
      unit: 'MB/s',
      baseline: tools.lz4 ? { name: 'lz4 -d to file', value: lzDecR.median! } : undefined,
      ratio: r3,
      note:
        `point ${recResult?.point} (full + ${n} incremental), ${exact ? 'byte-exact' : 'NOT BYTE-EXACT'}, output sparse and fsynced` +
        (tools.lz4
          ? `; lz4 -d output sparse, not fsynced${spread(lzDecR.all, 'MB/s') && `; rnode ${spread(recR.all, 'MB/s')}, lz4 -d ${spread(lzDecR.all, 'MB/s')}`}`
          : ''),
    });
    if (tools.lz4) {
      push({
        name: 'recover latest point',
        value: recR.median,
        unit: 'MB/s',
        baseline: { name: 'lz4 -d to file + sync', value: lzDecSyncR.median! },
        ratio: ratioOf(recR.median, lzDecSyncR.median),
      });
    }
    const lzRss = peakRss(lzFile);
    const resticRss = peakRss(restic);
    const rssBase = resticRss !== null ? { name: 'restic backup', value: resticRss } : lzRss !== null ? { name: 'lz4 -1', value: lzRss } : undefined;
    push({
      name: 'peak RSS, full replicate',
      value: fullRss,
      unit: 'MB',
      baseline: rssBase,
      ratio: ratioOf(fullRss, rssBase?.value),
      target: rssTarget(fullRss),
      note: `max over ${full.length} run(s)`,
    });
    const incrRss = peakRss(incr);
    push({
      name: 'peak RSS, incremental',
      value: incrRss,
      unit: 'MB',
      baseline: fullRss !== null ? { name: 'rnode full', value: fullRss } : undefined,
      ratio: ratioOf(incrRss, fullRss),
      target: rssTarget(incrRss),
    });
    const recRss = peakRss(rec);
    const lzDecRss = peakRss(lzDec);
    push({
      name: 'peak RSS, recover',
      value: recRss,
      unit: 'MB',
      baseline: lzDecRss !== null ? { name: 'lz4 -d', value: lzDecRss } : undefined,
      ratio: ratioOf(recRss, lzDecRss),
      target: rssTarget(recRss),
    });
    if (before) {
      // Wall-time ratios within each round: the machine may be shared, rounds differ more than builds within one.
      const perRound = (now: RunResult[], old: RunResult[]) => now.map((r, i) => old[i].seconds / r.seconds);
      const range = (xs: number[]) => `per round min ${fmt(Math.min(...xs))}, max ${fmt(Math.max(...xs))}`;
      const rowsBefore: [string, RunResult[], RunResult[]][] = [
        ['full replicate', full, oldFull],
        ['incremental', incr, oldIncr],
        ['recover latest point', rec, oldRec],
      ];
      for (const [what, now, old] of rowsBefore) {
        const speedup = perRound(now, old);
        push({
          name: `${what}, this build vs before`,
          value: rates(size, now).median,
          unit: 'MB/s',
          baseline: { name: 'RNODE_BENCH_BEFORE_CLI', value: rates(size, old).median! },
          ratio: median(speedup),
          note: `ratio = before's seconds / this build's, median of rounds (${range(speedup)}); peak RSS ${fmt(peakRss(now), 'MB')} vs ${fmt(peakRss(old), 'MB')}`,
        });
      }
    }
    if (!exact) throw Object.assign(new Error('recover was not byte-exact'), { rows });
    return rows;
  },
};
