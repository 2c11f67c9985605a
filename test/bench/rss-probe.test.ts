// The bench's RSS probe (bench/lib/rss-probe.ts) gives a node child's own peak: a child's getrusage maxRSS starts at
// its parent's RSS when it forked, so a full bench run (236 MB in the bench process by its last section) read 236 MB
// for every agent node it started there.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ROOT } from '../helpers/cli.js';

t.test("a child's peak RSS is its own, not its parent's", { skip: process.platform !== 'linux' && 'VmHWM is Linux' }, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rnode-rss-probe-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const out = path.join(dir, 'rss');
  const ballast = Buffer.alloc(768 * 1024 * 1024, 1); // resident: written
  const parentRss = process.memoryUsage().rss;
  // The probe's source, through tap's TypeScript loader (as `npm run soak` runs): not a dist/ that may be stale.
  const probe = path.join(ROOT, 'bench', 'lib', 'rss-probe.ts');
  execFileSync(process.execPath, ['--import=@tapjs/typescript/import', '--import', probe, '-e', '0'], {
    cwd: ROOT,
    env: { ...process.env, NODE_OPTIONS: '', TS_NODE_TRANSPILE_ONLY: '1', RNODE_BENCH_RSS_OUT: out },
  });
  const peak = Number(fs.readFileSync(out, 'utf8'));
  t.ok(ballast[ballast.length - 1] === 1 && parentRss > 768e6, `the parent holds ${Math.round(parentRss / 1e6)} MB`);
  // getrusage's maxRSS read at least the parent's RSS at the fork; the child itself (with the TypeScript loader) ~170 MB.
  t.ok(peak > 10e6 && peak < parentRss / 2, `the child's peak: ${Math.round(peak / 1e6)} MB`);
});
