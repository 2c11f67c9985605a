// Agent bench: aggregate replicate throughput of 1, 2 and 3 `rnode agent` processes under one reference
// Management Server, writing to one local store, next to a baseline measured in the same run (the library's
// replicate of the same disks, one after another, in this process). On the 2-core project machines the nodes
// share the cores: the figures show the agent's overhead, not scale-out (see docs/capacity.md for the model).
// Settings from env: RNODE_BENCH_AGENT_DISKS (6), RNODE_BENCH_AGENT_DISK_MIB (64), RNODE_BENCH_AGENT_NODES (1,2,3).
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { rssProbe, shebangFlags } from './lib/measure.js';
// Types come from the built library (bench/ compiles apart from src/); the code is loaded from dist/ at run time.
import type * as Lib from '../dist/index.js';
import type * as Testing from '../dist/testing.js';
import type * as ExampleMs from '../dist/examples/reference-ms.js';

export interface AgentBenchRow {
  nodes: number;
  seconds: number;
  mbPerSecond: number;
  ratioToBaseline: number;
  jobs: number;
  /** The largest peak RSS of the row's node processes over their whole run (the bench's RSS probe). */
  peakRssBytes?: number;
}
export interface AgentBenchResult {
  diskBytes: number;
  disks: number;
  baselineMbPerSecond: number;
  rows: AgentBenchRow[];
  note: string;
}

const DIST = fileURLToPath(new URL('../', import.meta.url)); // dist/
const CLI = path.join(DIST, 'bin', 'rnode.js'); // the bundled CLI, as installed

export async function benchAgent(
  opts: { disks?: number; diskMiB?: number; nodes?: number[]; log?: (line: string) => void } = {},
): Promise<AgentBenchResult> {
  const lib = {
    ...((await import(new URL('../index.js', import.meta.url).href)) as typeof Lib),
    ...((await import(new URL('../testing.js', import.meta.url).href)) as typeof Testing),
  };
  const { ReferenceMs } = (await import(new URL('../examples/reference-ms.js', import.meta.url).href)) as typeof ExampleMs;
  const log = opts.log ?? ((l: string) => console.log(l));
  const disks = opts.disks ?? Number(process.env.RNODE_BENCH_AGENT_DISKS ?? 6);
  const diskMiB = opts.diskMiB ?? Number(process.env.RNODE_BENCH_AGENT_DISK_MIB ?? 64);
  const nodeCounts = opts.nodes ?? (process.env.RNODE_BENCH_AGENT_NODES ?? '1,2,3').split(',').map(Number);
  const size = diskMiB * 1024 * 1024;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rnode-bench-agent-'));
  const token = 'bench-token-' + Math.random().toString(36).slice(2);
  const tokenFile = path.join(dir, 'token');
  fs.writeFileSync(tokenFile, token, { mode: 0o600 });
  try {
    const imgs: string[] = [];
    for (let i = 0; i < disks; i++) {
      const f = path.join(dir, `disk${i}.img`);
      await lib.generateSampleDisk(f, { size, seed: 1000 + i });
      imgs.push(f);
    }
    const total = disks * size;
    log(`agent bench: ${disks} disks x ${diskMiB} MiB mixed (1/3 random, 1/3 text, 1/3 zero), fs store, 1 MiB chunks`);

    // Baseline: the library alone, disks one after another (one writer, no agent, no control traffic).
    const baseStore = new lib.FsStore(path.join(dir, 'store-base'), { fsync: false });
    const t0 = performance.now();
    for (let i = 0; i < disks; i++) {
      const src = await lib.openSource(imgs[i]);
      try {
        await lib.replicate({ store: baseStore, source: src, disk: `disk${i}` });
      } finally {
        await src.close();
      }
    }
    const baseSeconds = (performance.now() - t0) / 1000;
    const baseline = total / 1e6 / baseSeconds;
    log(`  baseline  library replicate, sequential: ${baseline.toFixed(0)} MB/s (${baseSeconds.toFixed(2)} s)`);

    const rows: AgentBenchRow[] = [];
    for (const n of nodeCounts) {
      const ms = await ReferenceMs.start({ token, heartbeatMs: 500 });
      const children: ChildProcess[] = [];
      // Each node's peak RSS over its whole run, written by the probe as it exits (after the SIGTERM below).
      const probes = Array.from({ length: n }, () => rssProbe(dir));
      let row: AgentBenchRow | undefined;
      try {
        for (let k = 0; k < n; k++) {
          children.push(
            spawn(
              process.execPath,
              [
                ...shebangFlags(CLI),
                ...probes[k].args,
                CLI,
                'agent',
                '--server',
                ms.url,
                '--token-file',
                tokenFile,
                '--node-name',
                `bench${k}`,
                '--state-dir',
                path.join(dir, `state-${n}-${k}`),
                '--slots',
                '2',
                '--log-level',
                'warn',
              ],
              { stdio: 'ignore', env: { ...process.env, ...probes[k].env } },
            ),
          );
        }
        await ms.waitFor(() => ms.liveNodes().length === n, 30_000, `${n} nodes`);
        const storeDir = path.join(dir, `store-${n}`);
        const t1 = performance.now();
        for (let i = 0; i < disks; i++) {
          ms.startJob({
            jobId: `b${n}-${i}`,
            kind: 'replicate',
            store: { url: storeDir },
            disks: [{ disk: `disk${i}`, source: { location: imgs[i] } }],
          });
        }
        await ms.waitFor(() => [...ms.jobs.values()].every((j) => j.state === 'completed' || j.state === 'failed'), 600_000, 'the jobs');
        const seconds = (performance.now() - t1) / 1000;
        const failed = [...ms.jobs.values()].filter((j) => j.state === 'failed');
        if (failed.length) throw new Error(`agent bench: ${failed.length} job(s) failed: ${String(failed[0].failed?.message)}`);
        const mb = total / 1e6 / seconds;
        row = { nodes: n, seconds, mbPerSecond: mb, ratioToBaseline: mb / baseline, jobs: disks };
        log(`  ${n} node${n > 1 ? 's' : ' '}   aggregate ${mb.toFixed(0)} MB/s (${seconds.toFixed(2)} s), ${(mb / baseline).toFixed(2)}x baseline`);
      } finally {
        for (const c of children) c.kill('SIGTERM');
        await Promise.all(children.map((c) => new Promise((r) => (c.exitCode !== null ? r(null) : c.once('exit', r)))));
        await ms.close();
      }
      const peaks = (await Promise.all(probes.map((p) => p.peak()))).filter((x): x is number => x !== undefined);
      await Promise.all(probes.map((p) => p.done()));
      rows.push({ ...row, peakRssBytes: peaks.length === n ? Math.max(...peaks) : undefined });
    }
    const note =
      `${os.cpus().length} cores: every node process shares them, so more nodes here measure the agent's ` +
      'overhead (process, control messages, lease, store contention), not scale-out; see docs/capacity.md';
    log(`  note: ${note}`);
    return { diskBytes: size, disks, baselineMbPerSecond: baseline, rows, note };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  await benchAgent();
}
