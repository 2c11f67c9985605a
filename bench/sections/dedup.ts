// Repository v2 dedup (issue 14): ten clones of one 64 MiB mixed image, each with a tenth of its chunks rewritten
// (mixed data too, so the clones compress as the image does), replicated one after another into one repository:
// the stored size against one clone stored alone, into a local fs store, and over ws:// to a receiving node
// (`rnode serve` child with a local fs store), where the figure is the bytes on the wire against one clone sent
// alone to an empty node. Library calls in this process; both baselines measured in this run.
import fsp from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { openStore, type ObjectStore, type ReplicateResult } from 'replication-node';
import { fillMixed, generateSampleDisk, Prng } from 'replication-node/testing';
import type { Section } from '../lib/context.js';
import { replicateSeries, storedBytes } from '../lib/point-series.js';
import { fmt, ratioOf, type Row } from '../lib/report.js';

const MiB = 1024 * 1024;
const IMAGE_SIZE = 64 * MiB;
const CHUNK = MiB;
const CLONES = 10;
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

/** Writes clone i of base to file: every tenth chunk (shifted by i) replaced with mixed data of its own. */
async function writeClone(base: Buffer, i: number, file: string): Promise<void> {
  const c = Buffer.from(base);
  const chunks = IMAGE_SIZE / CHUNK;
  for (let k = 0; k < chunks / 10; k++) {
    const at = ((k * 10 + i) % chunks) * CHUNK;
    fillMixed(c.subarray(at, at + CHUNK), new Prng(10_000 + i * 100 + k));
  }
  await fsp.writeFile(file, c);
}

/** Clones 0 .. clones-1 of base written to img in turn, each replicated as disk clone-i into store. */
async function replicateClones(store: ObjectStore, base: Buffer, img: string, clones: number): Promise<ReplicateResult[]> {
  return replicateSeries(store, img, {
    points: clones,
    disk: (p) => `clone-${p - 1}`,
    chunkSize: CHUNK,
    before: (p) => writeClone(base, p - 1, img),
  });
}

export const dedup: Section = {
  name: 'dedup',
  title: 'repository v2 dedup: ten clones of a 64 MiB image (10% changed each) against one clone, stored locally and sent over ws://',
  spaceNeeded: () => 16 * IMAGE_SIZE,

  async run(ctx) {
    const { startServe, stopServe } = (await import(pathToFileURL(path.join(root, 'dist/bench/ws.js')).href)) as typeof import('../ws.js');
    const basePath = path.join(ctx.dir, 'base.img');
    await generateSampleDisk(basePath, { size: IMAGE_SIZE, seed: 41, holeEvery: 0 });
    const base = await fsp.readFile(basePath);
    const img = path.join(ctx.dir, 'clone.img');
    ctx.say(
      `image ${IMAGE_SIZE / MiB} MiB mixed, ${CHUNK / MiB} MiB chunks; clone i rewrites every tenth chunk (offset i) with mixed data of its own`,
    );

    // Local: one clone alone, then ten clones into one store.
    const oneStore = await openStore(path.join(ctx.dir, 'one'));
    await replicateClones(oneStore, base, img, 1);
    const storedOne = await storedBytes(oneStore);
    await oneStore.close();
    const tenStore = await openStore(path.join(ctx.dir, 'ten'));
    const t0 = performance.now();
    const dedupBytes = (await replicateClones(tenStore, base, img, CLONES)).reduce((n, r) => n + r.bytesDeduplicated, 0);
    const localSeconds = (performance.now() - t0) / 1000;
    const storedTen = await storedBytes(tenStore);
    await tenStore.close();
    ctx.log(`dedup: local one clone ${fmt(storedOne / MiB, 'MiB')}, ten ${fmt(storedTen / MiB, 'MiB')}`);

    // Over ws://: bytes the RemoteStore sent for one clone to an empty node, and for ten clones to another one.
    const overWs = async (clones: number): Promise<{ wire: number; stored: number; seconds: number }> => {
      const nodeDir = path.join(ctx.dir, `node-${clones}`);
      const { child, url } = await startServe(nodeDir);
      try {
        const rs = await openStore(url);
        const s0 = performance.now();
        await replicateClones(rs, base, img, clones);
        const seconds = (performance.now() - s0) / 1000;
        const wire = (rs.backend as unknown as { counters: { bytesSent: number } }).counters.bytesSent;
        await rs.close();
        const local = await openStore(nodeDir);
        const stored = await storedBytes(local);
        await local.close();
        return { wire, stored, seconds };
      } finally {
        await stopServe(child);
        await fsp.rm(nodeDir, { recursive: true, force: true });
      }
    };
    const wsOne = await overWs(1);
    const wsTen = await overWs(CLONES);
    ctx.log(`dedup: ws one clone ${fmt(wsOne.wire / MiB, 'MiB')} on the wire, ten ${fmt(wsTen.wire / MiB, 'MiB')}`);

    const rows: Row[] = [
      {
        name: 'ten clones stored, local fs',
        value: storedTen / MiB,
        unit: 'MiB',
        baseline: { name: 'one clone alone', value: storedOne / MiB },
        ratio: ratioOf(storedTen, storedOne),
        target: { text: '< 2.2x one clone', pass: storedTen < 2.2 * storedOne },
        note: `${fmt(dedupBytes / MiB, 'MiB')} of chunks deduplicated across the ten; ${fmt(localSeconds, 's')} for the ten replicates`,
      },
      {
        name: 'ten clones over ws://, bytes on the wire',
        value: wsTen.wire / MiB,
        unit: 'MiB',
        baseline: { name: 'one clone alone', value: wsOne.wire / MiB },
        ratio: ratioOf(wsTen.wire, wsOne.wire),
        target: { text: '< 2.2x one clone', pass: wsTen.wire < 2.2 * wsOne.wire },
        note:
          `stored on the node ${fmt(wsTen.stored / MiB, 'MiB')} vs ${fmt(wsOne.stored / MiB, 'MiB')} (${fmt(wsTen.stored / wsOne.stored)}x); ` +
          `${fmt(wsTen.seconds, 's')} for the ten over ws:// vs ${fmt(localSeconds, 's')} locally`,
      },
    ];
    return rows;
  },
};
