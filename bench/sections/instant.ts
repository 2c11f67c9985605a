// Instant recovery (section instant-recovery): time to first byte of `rnode export` from a local store, nbdcopy of the export against
// `rnode recover` of the same point, and random 4 KiB reads per second through the export, cold and warm cache.
import { spawn, type ChildProcess } from 'node:child_process';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { openSource, openStore, startExport } from 'replication-node';
import { cliPath, findOnPath, type Section, type SectionContext } from '../lib/context.js';
import { startQemuNbd } from '../lib/qemu-nbd.js';
import { fmt, median, type Row } from '../lib/report.js';

const MB = 1e6;
const DISK = 'bench';
const RANDOM_READS = 2000;
const READERS = 16;

/** `rnode export` in a child on a unix socket; resolves once it printed its URL. */
async function exportChild(
  ctx: SectionContext,
  store: string,
  socket: string,
  cacheBytes: number,
): Promise<{ url: string; stop: () => Promise<void> }> {
  const child: ChildProcess = spawn(
    process.execPath,
    [cliPath(), 'export', '--store', store, '--disk', DISK, '--socket', socket, '--cache', String(cacheBytes), '--json'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let err = '';
  child.stderr!.on('data', (d) => {
    err += d;
    if (err.length > 65536) err = err.slice(-16384);
  });
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d) => {
      out += d;
      const nl = out.indexOf('\n');
      if (nl >= 0) resolve(JSON.parse(out.slice(0, nl)).url);
    });
    child.once('exit', (code) => reject(new Error(`rnode export exited (${code}) before it was ready: ${err.slice(-500)}`)));
  });
  const stop = async () => {
    if (child.exitCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await exited;
  };
  ctx.log(`export ready at ${url}`);
  return { url, stop };
}

/**
 * The NBD path's own cost: nbdcopy --flush from qemu-nbd serving the raw image (page cache, nothing to decode or
 * verify), the same copy nbdcopy makes of the export. Seconds of nbdcopy, from its start.
 */
async function qemuNbdCopy(ctx: SectionContext, nbdcopy: string, img: string, out: string): Promise<number> {
  const server = await startQemuNbd(ctx.dir, img, { format: 'raw' });
  try {
    await ctx.settle(img);
    return (await ctx.tool(nbdcopy, ['--flush', server.url(), out])).seconds;
  } finally {
    await server.stop();
    await fsp.rm(out, { force: true });
  }
}

/** Random 4 KiB reads at the given offsets, READERS at a time, through rnode's own NBD client; reads per second. */
async function randomReads(url: string, offsets: number[]): Promise<number> {
  const src = await openSource(url);
  try {
    const bufs = Array.from({ length: READERS }, () => Buffer.alloc(4096));
    let next = 0;
    const t0 = process.hrtime.bigint();
    await Promise.all(
      bufs.map(async (buf) => {
        while (next < offsets.length) await src.read(offsets[next++], buf, 4096);
      }),
    );
    return offsets.length / (Number(process.hrtime.bigint() - t0) / 1e9);
  } finally {
    await src.close();
  }
}

export const instantRecovery: Section = {
  name: 'instant-recovery',
  title: 'instant recovery: rnode export time to first byte, nbdcopy of the export vs rnode recover, random 4 KiB reads',
  // The store (about half the image) and one restored copy at a time.
  spaceNeeded: (s) => 2 * s.size,
  async run(ctx) {
    const img = await ctx.mixedImage();
    const store = path.join(ctx.dir, 'store');
    ctx.log('replicate the image once (the point every row reads)');
    const rep = await ctx.rnode<{ diskSize: number; chunkSize: number }>(['replicate', '--source', img, '--target', store, '--disk', DISK]);
    const size = rep.result.diskSize;
    const rows: Row[] = [];

    // Time to first byte: startExport (manifests, chain, key check, listen) + an NBD handshake + one 4 KiB read.
    const ttfb: number[] = [];
    for (let i = 0; i < Math.max(3, ctx.settings.repeat); i++) {
      const s = await openStore(store);
      const socket = path.join(ctx.dir, `ttfb-${i}.sock`);
      const t0 = process.hrtime.bigint();
      const exp = await startExport({ store: s, disk: DISK, socket });
      const src = await openSource(exp.url);
      await src.read(0, Buffer.alloc(4096), 4096);
      ttfb.push(Number(process.hrtime.bigint() - t0) / 1e9);
      await src.close();
      await exp.close();
      await s.close();
    }
    const t = median(ttfb);
    rows.push({
      name: 'time to first byte, export (local store)',
      value: t,
      unit: 's',
      target: { text: '< 0.2 s', pass: t < 0.2 },
      note: `median of ${ttfb.length}: start export + NBD handshake + first 4 KiB read (cold cache); process start not included`,
    });

    const nbdcopy = findOnPath('nbdcopy');
    if (!nbdcopy) {
      rows.push({ name: 'nbdcopy of the export', value: null, unit: 'MB/s', note: 'nbdcopy not installed (apt: libnbd-bin)' });
    } else {
      // Each round: nbdcopy of a freshly started export (cold cache), then rnode recover of the same point; the
      // ratio is taken within the round (the machine is shared: rounds differ more than contenders within one).
      const copySeconds: number[] = [];
      const recoverSeconds: number[] = [];
      const qemuNbd = findOnPath('qemu-nbd') !== null;
      const transportSeconds: number[] = [];
      for (let i = 0; i < ctx.settings.repeat; i++) {
        const out = path.join(ctx.dir, 'out.img');
        const exp = await exportChild(ctx, store, path.join(ctx.dir, `copy-${i}.sock`), 256 * 1024 * 1024);
        try {
          await ctx.settle();
          ctx.log(`round ${i + 1}: nbdcopy of the export (cold cache)`);
          // --flush: the copy is made durable at the end, as recover's is.
          copySeconds.push((await ctx.tool(nbdcopy, ['--flush', exp.url, out])).seconds);
        } finally {
          await exp.stop();
        }
        await fsp.rm(out, { force: true });
        await ctx.settle();
        ctx.log(`round ${i + 1}: rnode recover of the same point`);
        recoverSeconds.push((await ctx.rnode(['recover', '--store', store, '--disk', DISK, '--out', out])).seconds);
        await fsp.rm(out, { force: true });
        if (qemuNbd) {
          ctx.log(`round ${i + 1}: nbdcopy of the raw image from qemu-nbd (the NBD path alone)`);
          transportSeconds.push(await qemuNbdCopy(ctx, nbdcopy, img, out));
        }
      }
      const transport = transportSeconds.length ? median(transportSeconds) : undefined;
      const ratios = copySeconds.map((c, i) => recoverSeconds[i] / c);
      const ratio = median(ratios);
      const rate = (xs: number[]) => median(xs.map((x) => size / MB / x));
      rows.push({
        name: 'nbdcopy of the export',
        value: rate(copySeconds),
        unit: 'MB/s',
        baseline: { name: 'rnode recover', value: rate(recoverSeconds), unit: 'MB/s' },
        ratio,
        target: { text: '>= 0.8x rnode recover', pass: ratio >= 0.8 },
        note:
          `ratio = recover seconds / nbdcopy seconds of the same round: min ${fmt(Math.min(...ratios))}, median ${fmt(ratio)}, ` +
          `max ${fmt(Math.max(...ratios))} over ${ratios.length} round(s); MB/s of disk size; nbdcopy --flush from an export started each ` +
          'round (cold cache, 256 MiB); both wall times include process start' +
          (transport
            ? `; the NBD path alone (nbdcopy --flush from qemu-nbd serving the raw image from page cache, nothing to decode or ` +
              `verify): ${fmt(size / MB / transport, 'MB/s')}, ${fmt(median(recoverSeconds) / transport)}x of this recover; the export ` +
              `reaches ${fmt(transport / median(copySeconds))}x of it`
            : '; qemu-nbd not installed (apt: qemu-utils): no NBD-path baseline'),
      });
    }

    // Random reads over the whole disk (zero chunks cost nothing), the same offsets cold then warm.
    const offsets = Array.from({ length: RANDOM_READS }, (_, i) => Math.floor((((i * 2654435761) % 4294967296) / 4294967296) * (size / 4096)) * 4096);
    const exp = await exportChild(ctx, store, path.join(ctx.dir, 'rand.sock'), size + 64 * 1024 * 1024);
    try {
      const cold = await randomReads(exp.url, offsets);
      const warm = await randomReads(exp.url, offsets);
      rows.push({
        name: 'random 4 KiB reads, cold cache',
        value: cold,
        unit: 'reads/s',
        note: `${RANDOM_READS} reads, ${READERS} in flight; each miss fetches and verifies a ${rep.result.chunkSize / 2 ** 20} MiB chunk`,
      });
      rows.push({
        name: 'random 4 KiB reads, warm cache',
        value: warm,
        unit: 'reads/s',
        baseline: { name: 'cold', value: cold, unit: 'reads/s' },
        ratio: warm / cold,
        note: 'the same offsets again, every chunk cached',
      });
    } finally {
      await exp.stop();
    }
    return rows;
  },
};
