// The bench's RSS probe (bench/lib/rss-probe.ts) gives a node child's own peak: a child's getrusage maxRSS starts at
// its parent's RSS when it forked, so a full bench run (236 MB in the bench process by its last section) read 236 MB
// for every agent node it started there.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ensureBuilt, ROOT } from '../helpers/cli.js';

t.test("a child's peak RSS is its own, not its parent's", { skip: process.platform !== 'linux' && 'VmHWM is Linux' }, async (t) => {
  ensureBuilt();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rnode-rss-probe-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const out = path.join(dir, 'rss');
  const ballast = Buffer.alloc(384 * 1024 * 1024, 1); // resident: written
  const parentRss = process.memoryUsage().rss;
  execFileSync(process.execPath, ['--import', path.join(ROOT, 'dist', 'bench', 'lib', 'rss-probe.js'), '-e', '0'], {
    env: { ...process.env, NODE_OPTIONS: '', RNODE_BENCH_RSS_OUT: out },
  });
  const peak = Number(fs.readFileSync(out, 'utf8'));
  t.ok(ballast[ballast.length - 1] === 1 && parentRss > 384e6, `the parent holds ${Math.round(parentRss / 1e6)} MB`);
  t.ok(peak > 10e6 && peak < 200e6, `the child's peak: ${Math.round(peak / 1e6)} MB`);
});
