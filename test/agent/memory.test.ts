// Regression: the agent's memory grew without bound (issue 10, item 7). Every replicate run allocated its own 32 MiB
// of SharedArrayBuffer chunk slots, and the codec workers' references kept each set alive until their rarely-run
// GC: one node with 3 slots, three 64 MiB disks every 3 s went 160 -> 620 MiB RSS in 42 jobs. Slots are now
// recycled across runs (src/pipeline/shared-slots.ts). This runs a real `rnode agent` process under the reference
// server for ~40 scheduled jobs and checks RSS has no upward trend after warm-up.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { MiB, makeDisk, sleep, spawnAgent, startMs, tmpDir } from './helpers.js';

const JOBS = 40;

function rssMiB(pid: number): number | undefined {
  try {
    return Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) / 1024;
  } catch {
    return undefined;
  }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

t.test('agent RSS stays flat over ~40 scheduled jobs', { skip: process.platform !== 'linux' && 'reads /proc' }, async (t) => {
  const dir = tmpDir(t, 'agent-mem');
  const disks = await Promise.all(
    [0, 1, 2].map(async (i) => ({ disk: `m${i}`, source: { location: await makeDisk(dir, `m${i}`, 16 * MiB, 40 + i) } })),
  );
  const ms = await startMs(t, { heartbeatMs: 500, nodeTimeoutMs: 10_000 });
  // Measured as it runs in production: without the test runner's coverage and process tracking.
  const p = spawnAgent(t, ms, dir, 'mem', ['--slots', '3', '--log-level', 'warn']);
  await ms.waitFor(() => ms.liveNodes().length === 1, 30_000, 'registration');
  // Default chunk size and concurrency: each run takes the 16 x (1 MiB + 1 MiB) slots a production run takes.
  ms.setPolicy({
    group: 'mem',
    revision: 1,
    rpoSeconds: 60,
    intervalSeconds: 1,
    store: { url: path.join(dir, 'store') },
    disks,
    leaseTtlSeconds: 10,
  });
  const samples: { jobs: number; rss: number }[] = [];
  const completed = () => ms.reportsOf('job.completed').length;
  const deadline = Date.now() + 120_000;
  while (completed() < JOBS && Date.now() < deadline) {
    await sleep(250);
    const rss = rssMiB(p.child.pid!);
    if (rss !== undefined) samples.push({ jobs: completed(), rss });
  }
  t.equal(ms.reportsOf('job.failed').length, 0, 'no job failed');
  t.ok(completed() >= JOBS, `${completed()} jobs completed`);
  // Warm-up: the first 6 jobs (the first points are full and compress; buffers and workers come up).
  const after = samples.filter((s) => s.jobs >= 6);
  const quarter = after.filter((s) => s.jobs < 6 + (JOBS - 6) / 4).map((s) => s.rss);
  const secondHalf = after.filter((s) => s.jobs >= 6 + (JOBS - 6) / 2).map((s) => s.rss);
  const early = median(quarter);
  const late = median(secondHalf);
  const peak = Math.max(...samples.map((s) => s.rss));
  t.comment(`RSS MiB: first quarter after warm-up ${early.toFixed(0)}, second half ${late.toFixed(0)}, peak ${peak.toFixed(0)}`);
  // Before the fix: +32 MiB per job until a GC happened to run, 300+ MiB over this run.
  t.ok(late - early < 25, `no growth trend: second-half median ${late.toFixed(0)} MiB vs ${early.toFixed(0)} MiB early`);
  // The bound for a node with its slots busy. Three runs always in flight here: 200-212 MiB and climbing
  // before V8's young generation was capped (src/cli.ts) and glibc stopped keeping freed buffers in its heaps
  // (returnLargeFreesToSystem); 158-170 MiB after.
  t.ok(peak < 200, `peak RSS ${peak.toFixed(0)} MiB under 200 MiB`);
});
