// Benchmark settings, all from the environment, validated once so a typo fails before minutes of work.
import fs from 'node:fs';
import os from 'node:os';
import { parseSize } from 'replication-node';

export interface Settings {
  /** RNODE_BENCH_SIZE: the mixed image (default 1.5GiB). */
  size: number;
  /** RNODE_BENCH_SPARSE_SIZE: the sparse image of the memory section (default 16GiB). */
  sparseSize: number;
  /** Bytes of mixed data scattered over the sparse image (64 MiB, less for small sparse sizes). */
  sparseData: number;
  /** RNODE_BENCH_DIR: where the run's fresh work directory is made (default os.tmpdir()). */
  parentDir: string;
  /** RNODE_BENCH_ONLY: comma-separated section names; empty = all. */
  only: string[];
  /** RNODE_BENCH_REPEAT: runs per contender, interleaved; figures are medians (default 3). */
  repeat: number;
  /** RNODE_BENCH_KEEP=1 keeps the work directory. */
  keep: boolean;
  /** RNODE_BENCH_JSON: also write the run's JSON result to this file, so runs can be compared. */
  jsonOut?: string;
  /** RNODE_BENCH_MARKDOWN: also write the tables as Markdown to this file (docs/benchmarks.md carries them). */
  markdownOut?: string;
  /**
   * RNODE_BENCH_BEFORE_CLI: another build's dist/cli.js; the throughput and recovery sections run it in the same
   * rounds, each build on its own store, for before/after ratios.
   */
  beforeCli?: string;
}

export class SettingsError extends Error {}

const MiB = 1024 * 1024;

function size(name: string, fallback: string, min: number): number {
  const text = process.env[name] || fallback;
  const n = parseSize(text);
  if (n === undefined || n < min) {
    throw new SettingsError(`${name}=${JSON.stringify(text)} is not a size of at least ${min / MiB} MiB; use e.g. ${name}=${fallback}`);
  }
  return n;
}

export function readSettings(): Settings {
  const s = size('RNODE_BENCH_SIZE', '1.5GiB', 16 * MiB);
  const sparseSize = size('RNODE_BENCH_SPARSE_SIZE', '16GiB', 64 * MiB);
  const repeatText = process.env.RNODE_BENCH_REPEAT || '3';
  const repeat = Number(repeatText);
  if (!/^\d+$/.test(repeatText) || repeat < 1 || repeat > 50) {
    throw new SettingsError(`RNODE_BENCH_REPEAT=${JSON.stringify(repeatText)} must be a whole number from 1 to 50`);
  }
  const beforeCli = process.env.RNODE_BENCH_BEFORE_CLI;
  if (beforeCli && !fs.existsSync(beforeCli)) {
    throw new SettingsError(`RNODE_BENCH_BEFORE_CLI=${JSON.stringify(beforeCli)} does not exist; point it at another build's dist/cli.js`);
  }
  return {
    size: s,
    sparseSize,
    // A quarter of the sparse disk at most, whole MiB, so "mostly holes" holds at small test sizes too.
    sparseData: Math.max(MiB, Math.min(64 * MiB, Math.floor(sparseSize / 4 / MiB) * MiB)),
    parentDir: process.env.RNODE_BENCH_DIR || os.tmpdir(),
    only: (process.env.RNODE_BENCH_ONLY ?? '')
      .split(',')
      .map((x) => x.trim())
      .filter(Boolean),
    repeat,
    keep: process.env.RNODE_BENCH_KEEP === '1',
    ...(process.env.RNODE_BENCH_JSON ? { jsonOut: process.env.RNODE_BENCH_JSON } : {}),
    ...(process.env.RNODE_BENCH_MARKDOWN ? { markdownOut: process.env.RNODE_BENCH_MARKDOWN } : {}),
    ...(beforeCli ? { beforeCli } : {}),
  };
}
