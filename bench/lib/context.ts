// What a benchmark section gets from the runner: settings, a directory of its own, the shared mixed image,
// and helpers that run the real rnode CLI and baseline tools as measured child processes.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { promisify } from 'node:util';
import { makeMixedImage, warm } from './images.js';
import { runNode, runTool, syncAll, type RunOptions, type RunResult } from './measure.js';
import { human, type Row } from './report.js';
import type { Settings } from './settings.js';

const execFileP = promisify(execFile);

export interface Tools {
  lz4: string | null;
  restic: string | null;
  /** xxhsum (xxHash's CLI): hashing the whole image is the floor of an incremental that reads it all. */
  xxhsum: string | null;
  /** GNU time, for the peak RSS of non-node tools. */
  gnuTime: string | null;
  fincore: string | null;
}

export interface RnodeRun<T> extends RunResult {
  /** The command's --json output. */
  result: T;
}

export interface BenchContext {
  settings: Settings;
  /** The run's work directory (removed at the end unless RNODE_BENCH_KEEP=1). */
  workdir: string;
  /** Filesystem type of workdir, for the report. */
  fsType: string;
  tools: Tools;
  log(message: string): void;
  /** The RNODE_BENCH_SIZE mixed image: made, synced and read into page cache on first use. */
  mixedImage(): Promise<string>;
  /**
   * Runs `node dist/bin/rnode.js <args> --json` in a child; wall time and peak RSS measured. `cli` runs another build's
   * CLI instead (RNODE_BENCH_BEFORE_CLI), for before/after rows in one run.
   */
  rnode<T = Record<string, unknown>>(args: string[], cli?: string): Promise<RnodeRun<T>>;
  /** Runs an external tool in a child; wall time (and peak RSS under GNU time) measured. */
  tool(cmd: string, args: string[], opts?: Omit<RunOptions, 'scratch'>): Promise<RunResult>;
  /** Flushes dirty pages and reads the image into page cache: call before each measured run. */
  settle(image?: string): Promise<void>;
}

export interface SectionContext extends BenchContext {
  /** A fresh directory for this section's files, removed after it. */
  dir: string;
  /** Adds a line above the section's table (setup facts a reader needs to trust the figures). */
  say(line: string): void;
}

/**
 * One named part of the benchmark. Sections run in list order; RNODE_BENCH_ONLY picks some by name. A section
 * measures its contender and its baseline itself, in the same run, and returns rows with both.
 */
export interface Section {
  name: string;
  title: string;
  /** Disk bytes the section needs at its peak, besides the shared mixed image. */
  spaceNeeded(settings: Settings): number;
  run(ctx: SectionContext): Promise<Row[]>;
}

export function findOnPath(name: string): string | null {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (!dir) continue;
    const p = path.join(dir, name);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      if (fs.statSync(p).isFile()) return p;
    } catch {
      // not here
    }
  }
  return null;
}

/** The package's own CLI, as users run it (`node dist/bin/rnode.js`, the bundle). */
export function cliPath(): string {
  const pkg = createRequire(import.meta.url).resolve('replication-node/package.json');
  const cli = path.join(path.dirname(pkg), 'dist', 'bin', 'rnode.js');
  if (!fs.existsSync(cli)) throw new Error(`${cli} is missing: build first with "npm run build"`);
  return cli;
}

export async function fsTypeOf(dir: string): Promise<string> {
  try {
    return (await execFileP('stat', ['-f', '-c', '%T', dir])).stdout.trim() || 'unknown';
  } catch {
    return 'unknown';
  }
}

/** First line a tool prints about its version, for the report. */
export async function toolVersion(cmd: string, args: string[]): Promise<string> {
  try {
    const { stdout, stderr } = await execFileP(cmd, args);
    return (stdout.trim() || stderr.trim()).split('\n')[0].replace(/^\*+\s*|\s*\*+$/g, '');
  } catch {
    return 'version unknown';
  }
}

/** Share of the file resident in page cache (0..1), from util-linux fincore; undefined without it. */
export async function cachedFraction(fincore: string | null, file: string): Promise<number | undefined> {
  if (!fincore) return undefined;
  try {
    const { stdout } = await execFileP(fincore, ['-b', '-n', '-o', 'RES,SIZE', file]);
    const [res, size] = stdout.trim().split(/\s+/).map(Number);
    return size > 0 ? res / size : undefined;
  } catch {
    return undefined;
  }
}

export function makeContext(settings: Settings, workdir: string, fsType: string, tools: Tools, log: (m: string) => void): BenchContext {
  const cli = cliPath();
  let image: Promise<string> | undefined;
  const ctx: BenchContext = {
    settings,
    workdir,
    fsType,
    tools,
    log,
    mixedImage() {
      image ??= (async () => {
        const file = path.join(workdir, 'mixed.img');
        log(`generating the ${human(settings.size)} mixed image ${file}`);
        await makeMixedImage(file, settings.size);
        await ctx.settle(file);
        return file;
      })();
      return image;
    },
    async rnode<T>(args: string[], other?: string) {
      const r = await runNode(other ?? cli, [...args, '--json'], { scratch: workdir });
      const last = r.stdout.trim().split('\n').pop() ?? '';
      let result: T;
      try {
        result = JSON.parse(last) as T;
      } catch {
        throw new Error(`rnode ${args[0]} printed no JSON result (got ${JSON.stringify(last.slice(0, 200))})`);
      }
      return { ...r, result };
    },
    tool: (cmd, args, opts = {}) => runTool(cmd, args, { ...opts, scratch: workdir }),
    async settle(file) {
      await syncAll();
      if (file) await warm(file);
    },
  };
  return ctx;
}
