// `npm start` with no arguments: the main job on an embedded default. Generates a sample disk, replicates it
// (full, then incremental after changing blocks) to a local store, restores and verifies both points, and
// prints what it did.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { ErrorCodes, RnodeError } from '../errors.js';
import { failpoint } from '../failpoint.js';
import { replicate, type ReplicateResult } from '../jobs/replicate.js';
import { recover } from '../jobs/restore.js';
import { verify } from '../jobs/verify.js';
import { generateSampleDisk, scatterWrites } from '../sample/sample-disk.js';
import { openSource } from '../source/index.js';
import { isStoreFull, openStore } from '../store/index.js';
import { assertNotInsideAnyStore } from '../store/containment.js';
import { isVirtualFsPath, makeDirs, unusablePath } from '../store/fs/dirs.js';
import type { Options } from './args.js';
import { parse, type Io } from './commands.js';
import { bytes, rate, secs } from './format.js';
import { parseSize } from '../pipeline/grid.js';
import { stoppable } from './signals.js';

async function fileDigest(p: string): Promise<string> {
  const h = createHash('sha256');
  for await (const b of fs.createReadStream(p, { highWaterMark: 4 << 20 })) h.update(b as Buffer);
  return h.digest('hex');
}

const MIN_SIZE = 1024 * 1024;

/** The folder the demo makes its own folder in, and how messages name it. */
interface DemoParent {
  dir: string;
  /** Where the folder came from, for messages: --workdir, TMPDIR (TMP, TEMP), or "temp folder" for /tmp. */
  from: string;
  fix: string;
  create: boolean;
}

/**
 * --workdir (created if missing), else the system's temp folder, which os.tmpdir() takes from TMPDIR, TMP or TEMP:
 * messages name where the folder came from and what to change (they said --workdir for a bad TMPDIR).
 */
function demoParent(workdir: string | undefined): DemoParent {
  if (workdir !== undefined) return { dir: path.resolve(workdir), from: '--workdir', fix: 'choose another folder', create: true };
  const variable = ['TMPDIR', 'TMP', 'TEMP'].find((name) => process.env[name]);
  return {
    dir: os.tmpdir(),
    from: variable ?? 'temp folder',
    fix: `set ${variable ?? 'TMPDIR'} to another folder, or give --workdir`,
    // The system's temp folder is not the demo's to create.
    create: false,
  };
}

/** The work folder must be a writable folder outside any store; checked (and created) before anything is written. */
async function prepareWorkdir({ dir, from, fix, create }: DemoParent): Promise<void> {
  const what = `${from} ${dir}`;
  if (isVirtualFsPath(dir)) {
    throw new RnodeError(ErrorCodes.PATH_UNUSABLE, `${what} is on a kernel virtual filesystem (/proc, /sys), which holds no files; ${fix}`);
  }
  assertNotInsideAnyStore(dir, from);
  try {
    if (create) await makeDirs(dir);
    else if (!(await fsp.stat(dir)).isDirectory()) throw Object.assign(new Error(`${dir} is not a folder`), { code: 'ENOTDIR' });
    // Writable, with room for at least a small file: fail now rather than minutes into the sample disk.
    const probe = path.join(dir, `.rnode-probe-${process.pid}`);
    await fsp.writeFile(probe, Buffer.alloc(64 * 1024));
    await fsp.rm(probe, { force: true });
  } catch (err) {
    if (!create && (err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new RnodeError(ErrorCodes.PATH_UNUSABLE, `${what} does not exist; ${fix}`, { cause: err, details: { errno: 'ENOENT' } });
    }
    throw unusablePath(what, err, fix) ?? err;
  }
}

/** The demo's flags (also what `rnode completion` offers for it). */
export const DEMO_OPTIONS: Options = { size: { type: 'string' }, workdir: { type: 'string' }, keep: { type: 'boolean' } };

export const DEMO_SUMMARY = 'replicate, change, recover and verify a generated sample disk (--size, --workdir, --keep)';

export async function runDemo(argv: string[], io: Io): Promise<number> {
  const v = parse('demo', argv, DEMO_OPTIONS);
  if (v.help) {
    const usage = 'rnode demo [--size <bytes>] [--workdir <dir>] [--keep] [--json]';
    if (v.json === true) io.out(JSON.stringify({ command: 'demo', usage: [usage], summary: DEMO_SUMMARY }));
    else {
      io.out(`usage: ${usage}`);
      io.out(`  ${DEMO_SUMMARY}`);
    }
    return 0;
  }
  return stoppable('the demo', 'its files were removed (or kept with --keep)', (signal) => demo(v, io, signal));
}

async function demo(v: Record<string, string | boolean | undefined>, io: Io, signal: AbortSignal): Promise<number> {
  const size = parseSize(typeof v.size === 'string' ? v.size : '256MiB');
  // One chunk at least: the demo changes scattered 4 KiB blocks of the disk between its two points.
  if (!size || size < MIN_SIZE) throw new RnodeError(ErrorCodes.USAGE, '--size must be a size of at least 1MiB, such as 256MiB');
  const json = v.json === true;
  const say = (l: string) => {
    if (!json) io.out(l);
  };
  // A folder of its own, in --workdir or the system's temp folder: the demo removes it whole afterwards, and never
  // touches what was there before (a store or a disk image the user keeps in --workdir under the same names).
  const parent = demoParent(typeof v.workdir === 'string' ? v.workdir : undefined);
  await prepareWorkdir(parent);
  const work = await fsp.mkdtemp(path.join(parent.dir, 'rnode-demo-')).catch((err) => {
    throw unusablePath(`${parent.from} ${parent.dir}`, err, parent.fix) ?? err;
  });
  const image = path.join(work, 'sample-disk.img');
  const storeDir = path.join(work, 'store');
  say(`rnode demo in ${work}`);
  try {
    say(`1. generating a ${bytes(size)} sample disk (per MiB: 1/3 random, 1/3 text, 1/3 zero; every 8th MiB a hole)`);
    await generateSampleDisk(image, { size, seed: 7, holeEvery: 8 }).catch((err) => {
      throw unusablePath(`${parent.from} ${work}`, err, parent.fix) ?? err;
    });
    const digests = [await fileDigest(image)];
    const store = await openStore(storeDir);
    const points: ReplicateResult[] = [];
    try {
      const run = async () => {
        const source = await openSource(image);
        try {
          return await replicate({ store, source, disk: 'sample', signal });
        } catch (err) {
          // The demo's store is a folder of its work folder: a full one is that folder's, said with its fix.
          throw isStoreFull(err) ? unusablePath(`${parent.from} ${work}`, err.cause, parent.fix)! : err;
        } finally {
          await source.close();
        }
      };
      points.push(await run());
      const p1 = points[0];
      say(
        `2. full point ${p1.point}: read ${bytes(p1.bytesRead)}, stored ${bytes(p1.bytesWritten)} (${p1.chunksChanged} chunks, ${p1.chunksZero} zero) ` +
          `in ${secs(p1.seconds)}, ${rate(p1.diskSize, p1.seconds)} of disk`,
      );
      const changed = await scatterWrites(image, size, 64, 11);
      digests.push(await fileDigest(image));
      points.push(await run());
      const p2 = points[1];
      say(
        `3. changed ${changed.length} scattered 4 KiB blocks; incremental point ${p2.point}: ${p2.chunksChanged} chunks changed, ` +
          `stored ${bytes(p2.bytesWritten)} in ${secs(p2.seconds)}, ${rate(p2.diskSize, p2.seconds)} of disk`,
      );
      const restores = [];
      for (const p of points) {
        const out = path.join(work, `restored-point-${p.point}.img`);
        const r = await recover({ store, disk: 'sample', point: String(p.point), out, signal });
        const same = (await fileDigest(out)) === digests[p.point - 1];
        restores.push({ point: p.point, out, seconds: r.seconds, byteExact: same });
        say(`4. recovered point ${p.point} in ${secs(r.seconds)} (${rate(r.diskSize, r.seconds)}): ${same ? 'byte-exact' : 'MISMATCH'}`);
        if (!same) throw new RnodeError(ErrorCodes.CHUNK_CORRUPT, `restored point ${p.point} differs from the disk it was taken from`);
      }
      failpoint('demo-verify');
      const ver = await verify({ store, disk: 'sample', point: 'all', signal });
      say(`5. verify all points: ${ver.ok ? 'ok' : 'FAILED'}, ${ver.chunksChecked} chunks checked in ${secs(ver.seconds)}`);
      if (json) io.out(JSON.stringify({ workdir: work, points, restores, verify: { ok: ver.ok, chunksChecked: ver.chunksChecked } }));
      if (!ver.ok) return 1;
    } finally {
      await store.close();
    }
    say(v.keep ? `kept ${work}` : 'done; removing the demo files (pass --keep to keep them)');
    return 0;
  } finally {
    if (!v.keep) await fsp.rm(work, { recursive: true, force: true });
  }
}
