// Runs one contender in its own child process: wall time measured here (spawn to exit, process start included,
// the same for every contender), peak RSS from the child (a preload for node, GNU time for other tools).
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);
const PROBE = fileURLToPath(new URL('./rss-probe.js', import.meta.url));
const STDERR_KEEP = 16 * 1024;

export interface RunResult {
  seconds: number;
  stdout: string;
  /** Peak resident set of the child in bytes; undefined when it could not be measured. */
  peakRss?: number;
  /** User + system CPU seconds of a tool run under GNU time; undefined otherwise. */
  cpuSeconds?: number;
}

export interface RunOptions {
  env?: NodeJS.ProcessEnv;
  /** 'capture' (default) keeps stdout as text; 'discard' sends it to /dev/null (nothing is buffered here). */
  stdout?: 'capture' | 'discard';
  /** A scratch directory for the RSS file. */
  scratch: string;
}

export class ChildFailed extends Error {}

let gnuTime: string | null | undefined;
const live = new Set<ChildProcess>();

/** Stops the children still running (on SIGINT/SIGTERM of the runner). */
export function killChildren(): void {
  for (const c of live) c.kill('SIGTERM');
}

/** /usr/bin/time when it is GNU time (-f %M -o file works), else null. Checked once. */
export async function findGnuTime(scratch: string): Promise<string | null> {
  if (gnuTime !== undefined) return gnuTime;
  gnuTime = null;
  for (const candidate of ['/usr/bin/time']) {
    const out = path.join(scratch, '.time-probe');
    try {
      await execFileP(candidate, ['-f', '%M', '-o', out, 'true']);
      if (/^\d+\s*$/.test(await fsp.readFile(out, 'utf8'))) gnuTime = candidate;
    } catch {
      // not there, or not GNU time
    } finally {
      await fsp.rm(out, { force: true });
    }
  }
  return gnuTime;
}

let seq = 0;

/** The Node flags a script's `#!/usr/bin/env -S node <flags>` line gives it: how it runs as an installed command. */
export function shebangFlags(script: string): string[] {
  const fd = fs.openSync(script, 'r');
  try {
    const head = Buffer.alloc(256);
    const line = head
      .subarray(0, fs.readSync(fd, head, 0, head.length, 0))
      .toString()
      .split('\n', 1)[0]!;
    return /^#!\S+ -S node (.*)$/.exec(line)?.[1]!.split(' ') ?? [];
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * The RSS probe for one node child: the arguments and environment that preload it, and the child's peak RSS in bytes
 * once it has exited (undefined when it wrote none). done() removes the probe's file.
 */
export function rssProbe(scratch: string): {
  args: string[];
  env: Record<string, string>;
  peak: () => Promise<number | undefined>;
  done: () => Promise<void>;
} {
  const file = path.join(scratch, `.rss-${process.pid}-${++seq}`);
  return {
    args: ['--import', PROBE],
    env: { RNODE_BENCH_RSS_OUT: file },
    peak: () => readNumber(file, 1),
    done: () => fsp.rm(file, { force: true }),
  };
}

/** Runs `node <script> ...args` (with the flags of its shebang line) with the RSS probe preloaded. */
export async function runNode(script: string, args: string[], opts: RunOptions): Promise<RunResult> {
  const probe = rssProbe(opts.scratch);
  try {
    const r = await run(
      process.execPath,
      [...shebangFlags(script), ...probe.args, script, ...args],
      { ...opts, env: { ...(opts.env ?? process.env), ...probe.env } },
      `node ${path.basename(script)} ${args[0] ?? ''}`,
    );
    return { ...r, peakRss: await probe.peak() };
  } finally {
    await probe.done();
  }
}

/** Runs an external tool, under GNU time when it is installed (for its peak RSS). */
export async function runTool(cmd: string, args: string[], opts: RunOptions): Promise<RunResult> {
  const time = await findGnuTime(opts.scratch);
  if (!time) return run(cmd, args, opts, cmd);
  const rssFile = path.join(opts.scratch, `.rss-${process.pid}-${++seq}`);
  try {
    const r = await run(time, ['-f', '%U %S %M', '-o', rssFile, cmd, ...args], opts, cmd);
    const m = /([\d.]+) ([\d.]+) (\d+)\s*$/.exec(await fsp.readFile(rssFile, 'utf8').catch(() => ''));
    return { ...r, peakRss: m ? Number(m[3]) * 1024 : undefined, cpuSeconds: m ? Number(m[1]) + Number(m[2]) : undefined }; // %M is KiB
  } finally {
    await fsp.rm(rssFile, { force: true });
  }
}

async function readNumber(file: string, scale: number): Promise<number | undefined> {
  try {
    const m = /(\d+)\s*$/.exec(await fsp.readFile(file, 'utf8'));
    return m ? Number(m[1]) * scale : undefined;
  } catch {
    return undefined;
  }
}

function run(cmd: string, args: string[], opts: RunOptions, label: string): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const devNull = opts.stdout === 'discard' ? fs.openSync('/dev/null', 'w') : undefined;
    const out: Buffer[] = [];
    let err = '';
    const start = process.hrtime.bigint();
    const child = spawn(cmd, args, { env: opts.env ?? process.env, stdio: ['ignore', devNull ?? 'pipe', 'pipe'] });
    live.add(child);
    if (devNull !== undefined) fs.closeSync(devNull); // the child holds its own copy
    child.stdout?.on('data', (b: Buffer) => out.push(b));
    child.stderr!.on('data', (b: Buffer) => {
      err = (err + b.toString()).slice(-STDERR_KEEP);
    });
    child.on('error', (e) => {
      live.delete(child);
      reject(e);
    });
    child.on('close', (code, signal) => {
      live.delete(child);
      const seconds = Number(process.hrtime.bigint() - start) / 1e9;
      if (code === 0) return resolve({ seconds, stdout: Buffer.concat(out).toString() });
      const tail = err.trim().split('\n').slice(-5).join('\n  ');
      reject(new ChildFailed(`${label} exited with ${signal ?? `code ${code}`}${tail ? `:\n  ${tail}` : ''}`));
    });
  });
}

/** Flushes every dirty page, so one contender's write-back is not paid during the next one's run. */
export async function syncAll(): Promise<void> {
  await execFileP('sync');
}
