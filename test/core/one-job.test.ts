// The rnode process's set-up for a one-chunk-job command (src/cli/one-job.ts). Regressions it guards: codec workers
// started for a command that runs no chunk job (a node start each, wasted), chunk buffers wiped and kept at the end
// of a job in a process that exits right after (30-120 ms at the end of a 16 MiB recover), and V8 flags on node's
// command line.
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { prepareForCommand } from '../../src/cli/one-job.js';
import { CLI, ensureBuilt, plainNode, runCli } from '../helpers/cli.js';
import { MiB, randomData, tmpDir } from '../helpers/images.js';
import { recycleShared, takeShared } from '../../src/pipeline/shared-slots.js';

t.test('other commands and --help start no workers, and returned buffers are still kept for reuse', async (t) => {
  for (const argv of [[], ['--version'], ['points', '--store', 's', '--disk', 'd'], ['recover', '--help'], ['verify', '-h'], ['agent']]) {
    t.equal(await prepareForCommand(argv), undefined, `rnode ${argv.join(' ')}`);
  }
  const b = takeShared(8192);
  b[0] = 7;
  recycleShared(b);
  const again = takeShared(8192);
  t.equal(again, b, 'the returned buffer is handed out again');
  t.equal(again[0], 0, 'wiped first');
});

t.test('recover: the codec workers start, and returned buffers are dropped', async (t) => {
  const workers = await prepareForCommand(['recover', '--store', 's', '--disk', 'd', '--out', 'o']);
  t.ok(workers, 'workers started');
  t.teardown(() => workers?.close());
  await workers!.ready();
  const b = takeShared(8192);
  recycleShared(b);
  t.not(takeShared(8192), b, 'a new buffer, not the returned one');
});

// A V8 flag on node's command line makes V8 refuse node's code cache for its built-in modules in every isolate of the
// process (src/v8-tuning.ts): the executable sets the flags it wants at run time instead, and they hold. The probe
// allocates, as the process exits, what grows a young generation left alone from 1 to 16 MiB per semispace (32 MiB).
// A service sets them first thing; a chunk job once its codec workers have started, so its young generation may have
// grown some by then (to 8-16 MiB on a loaded machine), but not after.
const PROBE = `import fs from 'node:fs';
import v8 from 'node:v8';
const young = () => v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space').space_size;
process.on('exit', () => {
  const before = young();
  let keep = [];
  for (let i = 0; i < 3e6; i++) {
    keep.push({ a: i, b: 'x' + i });
    if (keep.length > 200000) keep = [];
  }
  fs.writeFileSync(process.env.PROBE_REPORT, JSON.stringify({ before, after: young(), execArgv: process.execArgv }));
});
`;

/** Starts the executable as installed (its shebang), with the probe and without the test runner's NODE_OPTIONS. */
function spawnProbed(dir: string, args: string[]): { child: ChildProcess; report: () => { before: number; after: number; execArgv: string[] } } {
  const probe = path.join(dir, 'probe.mjs');
  const report = path.join(dir, 'young.json');
  fs.writeFileSync(probe, PROBE);
  const { NODE_OPTIONS: _, ...env } = process.env;
  const child = spawn(...plainNode(['--import', probe, CLI, ...args]), {
    env: { ...env, PROBE_REPORT: report },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return { child, report: () => ({ ...JSON.parse(fs.readFileSync(report, 'utf8')), probe }) };
}

async function exited(child: ChildProcess): Promise<number | null> {
  return child.exitCode ?? (await new Promise((resolve) => child.once('exit', resolve)));
}

t.test('the executable has no V8 flags on its command line, and its young generation stops growing', async (t) => {
  ensureBuilt();
  t.equal(fs.readFileSync(CLI, 'utf8').split('\n', 1)[0], '#!/usr/bin/env node', 'the shebang runs plain node');
  const dir = tmpDir(t, 'v8-tuning');
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, randomData(2 * MiB, 5));

  const job = spawnProbed(dir, ['replicate', '--source', img, '--target', path.join(dir, 'store')]);
  t.equal(await exited(job.child), 0, 'replicate exits 0');
  const r = job.report();
  t.same(r.execArgv, ['--import', path.join(dir, 'probe.mjs')], 'no V8 flag given to node');
  t.equal(r.after, r.before, `a replicate's young generation grows no more once its workers have started (${r.after / MiB} MiB)`);
  t.ok(r.after <= 16 * MiB, `and stays under 16 MiB (left to grow: 32 MiB)`);

  // A receiving node, once a point has reached it: its codec workers (new isolates) have checked the chunks.
  const serve = spawnProbed(dir, ['serve', '--listen', '127.0.0.1:0', '--store', path.join(dir, 'recv'), '--json']);
  const url = await new Promise<string>((resolve) =>
    serve.child.stdout!.once('data', (b: Buffer) => resolve(JSON.parse(String(b).split('\n')[0]).listening)),
  );
  const sent = await runCli(['replicate', '--source', img, '--target', url]);
  t.equal(sent.code, 0, sent.stderr);
  serve.child.kill('SIGTERM');
  t.equal(await exited(serve.child), 0, 'serve stops with exit 0');
  const s = serve.report();
  // Its codec workers start with the first point, while the main thread receives it: each new isolate sets the growth
  // factor back to 2 until the main thread hears the worker is online, and a scavenge in between may grow the young
  // generation a step (4 to 8 MiB, seen once with four test files running at once). Left alone it grows to 32 MiB.
  t.ok(s.after <= 8 * MiB, `a service's young generation stays small (${s.after / MiB} MiB)`);
});
