// `npm run example:ms` (examples/ms.ts) as docs/agent.md has an operator use it: the example prints its address and
// token file, a real `rnode agent` started with them registers, receives the sample policy and completes a scheduled
// replicate job (reported to the server, a point in the example's store); then both stop on SIGTERM with exit 0.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { CLI, ensureBuilt, ROOT, plainNode } from '../helpers/cli.js';
import { fsStore, tmpDir } from '../helpers/images.js';
import { listPoints } from '../../src/repository/points.js';

t.setTimeout(120_000);

const EXAMPLE = path.join(ROOT, 'dist', 'examples', 'ms.js');

/** A child process whose stdout and stderr lines are collected as they come. */
function start(args: string[]): { child: ChildProcess; out: string[]; err: string[]; exited: Promise<number | null> } {
  const env = { ...process.env };
  delete env.NODE_OPTIONS;
  const child = spawn(...plainNode(args), { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const out: string[] = [];
  const err: string[] = [];
  for (const [stream, lines] of [
    [child.stdout!, out],
    [child.stderr!, err],
  ] as const) {
    let buf = '';
    stream.on('data', (b: Buffer) => {
      buf += b.toString();
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        lines.push(buf.slice(0, i));
        buf = buf.slice(i + 1);
      }
    });
  }
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, out, err, exited };
}

async function waitFor<T>(fn: () => T | undefined, timeoutMs: number, what: string): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

t.test('the example Management Server runs a real agent to a completed job', async (t) => {
  ensureBuilt();
  execFileSync(process.execPath, [path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'examples/tsconfig.json'], {
    cwd: ROOT,
    stdio: 'pipe',
  });
  const dir = tmpDir(t, 'example-ms');
  const ms = start([EXAMPLE, '--port', '0', '--workdir', dir, '--interval', '1', '--disk-mib', '4']);
  t.teardown(() => {
    if (ms.child.exitCode === null) ms.child.kill('SIGKILL');
  });
  const tryLine = await waitFor(() => ms.out.find((l) => l.startsWith('try: ')), 30_000, `the example's "try:" line (${ms.err.join('\n')})`);
  const url = /listening on (ws:\/\/127\.0\.0\.1:\d+)$/.exec(ms.out[0])?.[1];
  t.ok(url, `prints its address: ${ms.out[0]}`);
  const token = /^token: ([0-9a-f]{48}) \(in (.+)\)$/.exec(ms.out[1]);
  t.ok(token, `prints the token and its file: ${ms.out[1]}`);
  t.equal(fs.readFileSync(token![2], 'utf8').trim(), token![1], 'the token file holds the printed token');
  t.equal(fs.statSync(token![2]).mode & 0o077, 0, 'only its owner reads the token file');
  t.match(tryLine, `rnode agent --server ${url} --token-file ${token![2]}`, 'prints the agent command line');

  // The agent as the "try:" line has it, from the built CLI.
  const agentArgs = tryLine
    .slice('try: rnode '.length)
    .split(' ')
    .map((a) => (a === 'pretty' ? 'json' : a));
  const agent = start([CLI, ...agentArgs, '--node-name', 'example-node']);
  t.teardown(() => {
    if (agent.child.exitCode === null) agent.child.kill('SIGKILL');
  });
  const done = await waitFor(
    () => ms.out.find((l) => l.startsWith('ms: job.completed ')),
    60_000,
    `a completed job (agent: ${agent.err.slice(-5).join('\n')})`,
  );
  const report = JSON.parse(done.slice('ms: job.completed '.length)) as { node: string; results: Array<{ disk: string; point: number }> };
  t.match(report, { node: 'example-node', results: [{ disk: 'sample', point: Number }] }, 'the server heard the job complete');
  const points = await listPoints(fsStore(path.join(dir, 'store')), 'sample');
  t.ok(points.length >= 1, `the point is in the example's store (${points.length})`);
  t.notOk(
    agent.err.some((l) => l.includes(token![1])),
    'the agent never logs the token',
  );

  agent.child.kill('SIGTERM');
  t.equal(await agent.exited, 0, 'the agent stops on SIGTERM with exit 0');
  ms.child.kill('SIGTERM');
  t.equal(await ms.exited, 0, 'the example stops on SIGTERM with exit 0');
});
