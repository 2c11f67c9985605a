// Preloaded into measured node children (`node --import <this file> ...`): on exit, writes the process's peak RSS
// in bytes to the file named by RNODE_BENCH_RSS_OUT, so the parent can read it however the child ends its run.
import { readFileSync, writeFileSync } from 'node:fs';
import { isMainThread } from 'node:worker_threads';

const out = process.env.RNODE_BENCH_RSS_OUT;

/**
 * The peak RSS of this process in bytes: Linux's VmHWM, the high-water mark of this program since its exec. Not
 * getrusage's maxRSS where VmHWM is there: a child's maxRSS starts at its parent's RSS when it forked, so the agent
 * nodes the bench started at its end, with 236 MB in the bench process, each read 236 MB (152 MB by VmHWM).
 */
function peakRss(): number {
  try {
    const m = /^VmHWM:\s+(\d+) kB/m.exec(readFileSync('/proc/self/status', 'utf8'));
    if (m) return Number(m[1]) * 1024;
  } catch {
    // Not Linux: getrusage's figure, with its caveat.
  }
  return process.resourceUsage().maxRSS * 1024; // maxRSS is in KiB
}

// Workers inherit execArgv and so load this too; the figure covers the whole process, so only the main thread,
// which exits last, writes it.
if (out && isMainThread) {
  process.on('exit', () => {
    try {
      writeFileSync(out, String(peakRss()));
    } catch {
      // The parent reports a missing figure; failing the child here would change what is measured.
    }
  });
}
