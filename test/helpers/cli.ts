// Runs the CLI as users run it (node dist/bin/rnode.js, the bundle of the compiled modules) as a child process and
// returns its exit code, signal and output. Builds dist/ with tsc and the bundle (scripts/bundle.mjs) first when the
// bundle is missing or older than src/ (once per test run, under a lock shared by parallel test processes), and the
// native addon when it is missing; RNODE_TEST_NO_BUILD=1 skips the rebuild.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const CLI = path.join(ROOT, 'dist', 'bin', 'rnode.js');
/** The Node flags the installed `rnode` runs with (its shebang line), so tests run the CLI as users do. */
export const CLI_NODE_FLAGS: string[] =
  /^#!\S+ -S node (.*)$/.exec(fs.readFileSync(path.join(ROOT, 'src', 'cli.ts'), 'utf8').split('\n', 1)[0]!)?.[1]!.split(' ') ?? [];
// The addon as the loader looks for it (src/native/index.ts): this platform's prebuild, else a source build.
const ADDONS = [
  path.join(ROOT, 'prebuilds', `${process.platform}-${process.arch}`, 'rnode_native.node'),
  path.join(ROOT, 'native', 'build', 'Release', 'rnode_native.node'),
];

export interface CliResult {
  /** Exit code; null when the process died of a signal. */
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

let built = false;

function newestMtime(dir: string): number {
  let newest = 0;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) newest = Math.max(newest, newestMtime(p));
    else if (e.name.endsWith('.ts')) newest = Math.max(newest, fs.statSync(p).mtimeMs);
  }
  return newest;
}

/**
 * Marks that dist/ was checked in this test run: test files are processes of one runner (same parent pid),
 * and once one of them has built, the others must not rebuild under CLI children that are running.
 */
const RUN_MARK = path.join(os.tmpdir(), `rnode-test-built-${Buffer.from(ROOT).toString('hex').slice(-24)}`);

function builtInThisRun(): boolean {
  try {
    return fs.readFileSync(RUN_MARK, 'utf8') === String(process.ppid);
  } catch {
    return false;
  }
}

function needsBuild(): boolean {
  if (!fs.existsSync(CLI)) return true;
  if (process.env.RNODE_TEST_NO_BUILD === '1' || builtInThisRun()) return false;
  return newestMtime(path.join(ROOT, 'src')) > fs.statSync(CLI).mtimeMs;
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** Builds what the CLI needs, once per process; parallel test processes wait on one lock directory. */
export function ensureBuilt(): void {
  if (built) return;
  const lock = path.join(os.tmpdir(), `rnode-test-build-${Buffer.from(ROOT).toString('hex').slice(-24)}.lock`);
  const deadline = Date.now() + 180_000;
  for (;;) {
    try {
      fs.mkdirSync(lock);
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      // A lock older than two minutes belongs to a build that died.
      const age = Date.now() - (fs.statSync(lock, { throwIfNoEntry: false })?.mtimeMs ?? Date.now());
      if (age > 120_000) fs.rmSync(lock, { recursive: true, force: true });
      if (Date.now() > deadline) throw new Error(`timed out waiting for the build lock ${lock}`);
      sleepSync(100);
    }
  }
  try {
    if (!ADDONS.some((f) => fs.existsSync(f))) {
      execFileSync('npx', ['node-gyp', 'rebuild', '--directory', 'native', '--nodedir=/usr'], { cwd: ROOT, stdio: 'pipe' });
    }
    if (needsBuild()) {
      const tsc = path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
      try {
        execFileSync(process.execPath, [tsc, '-p', 'tsconfig.json'], { cwd: ROOT, stdio: 'pipe' });
      } catch (err) {
        // tsc still emits on type errors (src may be mid-edit); only a missing output is fatal.
        if (!fs.existsSync(path.join(ROOT, 'dist', 'cli.js'))) throw err;
        const out = String((err as { stdout?: Buffer }).stdout ?? '');
        process.stderr.write(`# tsc reported errors while building dist/ for the CLI tests:\n${out.replace(/^/gm, '#   ')}\n`);
      }
      execFileSync(process.execPath, [path.join(ROOT, 'scripts', 'bundle.mjs')], { cwd: ROOT, stdio: 'pipe' });
    }
    fs.writeFileSync(RUN_MARK, String(process.ppid));
  } finally {
    fs.rmSync(lock, { recursive: true, force: true });
  }
  built = true;
}

type RunOptions = {
  env?: Record<string, string | undefined>;
  cwd?: string;
  timeoutMs?: number;
  /** A command the node command line is appended to (e.g. a shell that sets a ulimit, then execs it). */
  wrap?: string[];
  /** Given the child once it is spawned (e.g. to signal it when the test's moment comes). */
  onSpawn?: (child: ChildProcess) => void;
};

/** Runs `node dist/bin/rnode.js ...args`; never rejects for a non-zero exit. */
export function runCli(args: string[], opts: RunOptions = {}): Promise<CliResult> {
  ensureBuilt();
  return runNode([...CLI_NODE_FLAGS, CLI, ...args], opts);
}

/** Runs an ES module script in a fresh node process (import the library from DIST_INDEX). */
export function runScript(source: string, opts: RunOptions = {}): Promise<CliResult> {
  ensureBuilt();
  return runNode(['--input-type=module', '-e', source], opts);
}

export const DIST_INDEX = path.join(ROOT, 'dist', 'index.js');

/**
 * The command and arguments that run node with argv outside the test runner's hooks, as users run it. tap's process
 * tracking wraps child_process and puts its --import back into the NODE_OPTIONS of every child (deleting it from the
 * env does not help); that import alone adds ~0.3 s to each child's start, and V8 coverage slows it further. `env -u`
 * takes both out after the wrapper ran. The pid is node's: env execs it.
 */
export function plainNode(argv: string[]): [string, string[]] {
  return ['env', ['-u', 'NODE_OPTIONS', '-u', 'NODE_V8_COVERAGE', process.execPath, ...argv]];
}

/**
 * Starts the CLI with args and leaves it running, for tests that signal it mid-run: the child, its output so far and
 * its exit code to come. Killed at the test's end if it is still running.
 */
export function spawnCli(
  t: { teardown(fn: () => void): void },
  args: string[],
): { child: ChildProcess; out: { stdout: string; stderr: string }; exited: Promise<number | null> } {
  ensureBuilt();
  const child = spawn(...plainNode([CLI, ...args]), { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  const out = { stdout: '', stderr: '' };
  child.stdout!.on('data', (b: Buffer) => (out.stdout += b));
  child.stderr!.on('data', (b: Buffer) => (out.stderr += b));
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  return { child, out, exited };
}

/** Runs node with argv (a script file, flags) outside the runner's hooks; never rejects for a non-zero exit. */
export function runNode(argv: string[], opts: RunOptions = {}): Promise<CliResult> {
  const env = { ...process.env, ...opts.env };
  // Failpoints and coverage hooks of the test runner must not leak into children unless asked for.
  if (!opts.env || !('RNODE_FAILPOINT' in opts.env)) delete env.RNODE_FAILPOINT;
  const [node, nodeArgs] = plainNode(argv);
  const [cmd, args] = opts.wrap?.length ? [opts.wrap[0]!, [...opts.wrap.slice(1), node, ...nodeArgs]] : [node, nodeArgs];
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: opts.cwd ?? ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    opts.onSpawn?.(child);
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') });
    });
  });
}

/** Non-empty lines of a stream's text. */
export function lines(text: string): string[] {
  return text.split('\n').filter((l) => l.trim() !== '');
}

/** The single JSON object a --json command printed on stdout. */
export function json(r: CliResult): any {
  const ls = lines(r.stdout);
  if (ls.length !== 1) throw new Error(`expected one JSON line on stdout, got ${ls.length}: ${r.stdout.slice(0, 500)}\nstderr: ${r.stderr}`);
  return JSON.parse(ls[0]);
}

/** The arguments of `rnode replicate` of img into storeDir as disk, in 64 KiB chunks (a small image makes many), then extra. */
export function replicateArgs(img: string, storeDir: string, disk: string, extra: string[] = []): string[] {
  return ['replicate', '--source', img, '--target', storeDir, '--disk', disk, '--chunk-size', '64KiB', ...extra];
}
