// Preloaded into measured node children (`node --import <this file> ...`): on exit, writes the process's peak RSS
// in bytes to the file named by RNODE_BENCH_RSS_OUT, so the parent can read it however the child ends its run.
import { writeFileSync } from 'node:fs';
import { isMainThread } from 'node:worker_threads';

const out = process.env.RNODE_BENCH_RSS_OUT;
// Workers inherit execArgv and so load this too; getrusage covers the whole process, so only the main thread,
// which exits last, writes the figure.
if (out && isMainThread) {
  process.on('exit', () => {
    try {
      writeFileSync(out, String(process.resourceUsage().maxRSS * 1024)); // maxRSS is in KiB
    } catch {
      // The parent reports a missing figure; failing the child here would change what is measured.
    }
  });
}
