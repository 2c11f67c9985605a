// An incremental from a QEMU dirty bitmap over NBD reads only what changed, so its time follows the changed chunks,
// not the disk: a 16 GiB qcow2 with 1% of its chunks written since its bitmap, replicated through `qemu-nbd -B`,
// against the full replicate (through qemu-nbd the same way) of a qcow2 that holds just those chunks (issue 13:
// within 2x). Both are wall times of the real CLI, process start included, rounds interleaved.
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { findOnPath, type Section, type SectionContext } from '../lib/context.js';
import type { RunResult } from '../lib/measure.js';
import { startQemuNbd } from '../lib/qemu-nbd.js';
import { fmt, human, median, spread, type Row } from '../lib/report.js';

const execFileP = promisify(execFile);
const MiB = 1024 * 1024;
const DISK = 16 * 1024 * MiB;
const CHUNK = MiB;
/** Data written before the first point, in 1 MiB pieces spread over the disk. */
const BASE_BYTES = 256 * MiB;
const CHANGED = 0.01;

interface ReplicateJson {
  full: boolean;
  chunksChanged: number;
  bytesRead: number;
  rescanReason?: string;
}

/** Writes distinct random data at the given offsets through qemu-io (its bitmaps record it); not while exported. */
async function qemuWrite(img: string, offsets: number[], length: number, scratch: string): Promise<void> {
  // qemu-io's `write -s FILE` writes FILE from its start: a file per write, in batches that keep argv short.
  for (let i = 0; i < offsets.length; i += 128) {
    const batch = offsets.slice(i, i + 128);
    const cmds: string[] = [];
    const files: string[] = [];
    for (const [k, o] of batch.entries()) {
      const src = path.join(scratch, `write-${k}.bin`);
      await fsp.writeFile(src, crypto.randomBytes(length));
      files.push(src);
      cmds.push('-c', `write -q -s ${src} ${o} ${length}`);
    }
    await execFileP('qemu-io', ['-f', 'qcow2', ...cmds, img]);
    for (const f of files) await fsp.rm(f);
  }
}

export const nbd: Section = {
  name: 'nbd',
  title: 'incremental from a QEMU dirty bitmap over NBD against replicating just its changed chunks',
  spaceNeeded: () => 2 * BASE_BYTES + 4 * CHANGED * DISK,
  async run(ctx: SectionContext): Promise<Row[]> {
    const missing = ['qemu-img', 'qemu-io', 'qemu-nbd'].filter((t) => !findOnPath(t));
    if (missing.length) {
      return [
        { name: 'incremental from a dirty bitmap', value: null, unit: 's', note: `${missing.join(', ')} not installed (apt: qemu-utils): skipped` },
      ];
    }
    const n = ctx.settings.repeat;
    const img = path.join(ctx.dir, 'vm.qcow2');
    const store = path.join(ctx.dir, 'store');
    const chunks = DISK / CHUNK;
    const rnd = (k: number) => crypto.randomInt(k);
    await execFileP('qemu-img', ['create', '-q', '-f', 'qcow2', img, String(DISK)]);
    const baseOffsets = Array.from({ length: BASE_BYTES / CHUNK }, (_, i) => Math.floor((i * chunks) / (BASE_BYTES / CHUNK)) * CHUNK);
    await qemuWrite(img, baseOffsets, CHUNK, ctx.dir);
    await execFileP('qemu-img', ['bitmap', '--add', img, 'c0']);
    ctx.log('nbd: full point of the 16 GiB disk (untimed)');
    let exp = await startQemuNbd(ctx.dir, img, { format: 'qcow2', socket: 'vm.sock' });
    await ctx.rnode(['replicate', '--source', exp.url('checkpoint=c0'), '--target', store, '--disk', 'vm']);
    await exp.stop();
    ctx.say(
      `a ${human(DISK)} qcow2 holding ${human(BASE_BYTES)} of random data; each round writes 4 KiB of random data into ` +
        `${CHANGED * 100}% of its ${human(CHUNK)} chunks, then replicates through qemu-nbd -B (the bitmap of the previous point)`,
    );
    ctx.say('baseline: the same chunks (their data after the writes) as a qcow2 of their own, replicated full through qemu-nbd into a new store');

    const incr: RunResult[] = [];
    const just: RunResult[] = [];
    const notes: string[] = [];
    for (let i = 1; i <= n; i++) {
      const picked = [...new Set(Array.from({ length: Math.round(chunks * CHANGED) }, () => rnd(chunks)))].sort((a, b) => a - b);
      await qemuWrite(
        img,
        picked.map((c) => c * CHUNK + 4096 * rnd(CHUNK / 4096)),
        4096,
        ctx.dir,
      );
      await execFileP('qemu-img', ['bitmap', '--add', img, `c${i}`]);
      // Just those chunks, as they are now: read from the disk, written as an image of their own.
      const raw = path.join(ctx.dir, 'just.raw');
      const justImg = path.join(ctx.dir, 'just.qcow2');
      await execFileP('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', img, path.join(ctx.dir, 'now.raw')]);
      const from = await fsp.open(path.join(ctx.dir, 'now.raw'), 'r');
      const to = await fsp.open(raw, 'w');
      const buf = Buffer.allocUnsafe(CHUNK);
      for (const [k, c] of picked.entries()) {
        await from.read(buf, 0, CHUNK, c * CHUNK);
        await to.write(buf, 0, CHUNK, k * CHUNK);
      }
      await from.close();
      await to.close();
      await fsp.rm(path.join(ctx.dir, 'now.raw'));
      await execFileP('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, justImg]);

      ctx.log(`nbd round ${i}/${n}: incremental through the dirty bitmap (${picked.length} chunks changed)`);
      exp = await startQemuNbd(ctx.dir, img, { format: 'qcow2', bitmaps: [`c${i - 1}`], socket: 'vm.sock' });
      await ctx.settle();
      const r = await ctx.rnode<ReplicateJson>([
        'replicate',
        '--source',
        exp.url(`bitmap=c${i - 1}&checkpoint=c${i}`),
        '--target',
        store,
        '--disk',
        'vm',
      ]);
      await exp.stop();
      if (r.result.full || r.result.rescanReason)
        throw new Error(`the point after the writes was not a bitmap incremental: ${JSON.stringify(r.result)}`);
      incr.push(r);
      notes.push(`${r.result.chunksChanged}/${picked.length} chunks, ${human(r.result.bytesRead)} read`);

      ctx.log(`nbd round ${i}/${n}: full replicate of just those chunks`);
      exp = await startQemuNbd(ctx.dir, justImg, { format: 'qcow2' });
      await ctx.settle();
      const justStore = path.join(ctx.dir, `just-store-${i}`);
      just.push(await ctx.rnode(['replicate', '--source', exp.url(), '--target', justStore, '--disk', 'just']));
      await exp.stop();
      await fsp.rm(justStore, { recursive: true, force: true });
      await fsp.rm(raw);
      fs.rmSync(justImg);
    }
    const incrS = median(incr.map((r) => r.seconds));
    const justS = median(just.map((r) => r.seconds));
    const ratio = incrS / justS;
    return [
      {
        name: `incremental from a dirty bitmap, ${human(DISK)} disk, ${CHANGED * 100}% changed`,
        value: incrS,
        unit: 's',
        baseline: { name: 'full replicate of just the changed chunks', value: justS },
        // Time against time: <= 2 means the incremental took at most twice as long as storing just its chunks.
        ratio,
        target: { text: '<= 2.0x (time)', pass: ratio <= 2 },
        note: [
          'ratio = incremental seconds / seconds for just the changed chunks, medians',
          `per round: ${notes.join('; ')}`,
          spread(
            incr.map((r) => r.seconds),
            's',
          ) &&
            `incremental ${spread(
              incr.map((r) => r.seconds),
              's',
            )}`,
          `just the chunks ${fmt(justS, 's')}`,
        ]
          .filter(Boolean)
          .join('; '),
      },
    ];
  },
};
