// Helpers for the agent tests: the reference Management Server (examples/reference-ms.ts) on 127.0.0.1, in-process agents with captured JSON
// logs, agent child processes (node dist/bin/rnode.js agent), sample disks, and HTTP scrapes.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Agent, type AgentOptions } from '../../src/agent/agent.js';
import { Logger } from '../../src/log.js';
import type { ReferenceMs as ReferenceMsType, ReferenceMsOptions } from '../../examples/reference-ms.js';
import { generateSampleDisk } from '../../src/sample/sample-disk.js';
import { CLI, CLI_NODE_FLAGS, ensureBuilt, plainNode } from '../helpers/cli.js';
import { tmpDir } from '../helpers/images.js';
import { Domain } from '../../src/repository/domain.js';
import { r2 } from '../../src/repository/names.js';
import { decodePendingV2 } from '../../src/repository/point-format.js';

// The reference Management Server is an example outside src/: it takes the protocol from the built package
// (replication-node/protocol, in dist/), so dist/ is brought up to date before it loads.
ensureBuilt();
const { ReferenceMs } = await import('../../examples/reference-ms.js');
type ReferenceMs = ReferenceMsType;

export const KiB = 1024;
export const MiB = 1024 * 1024;
export const TOKEN = 'test-token-0123456789abcdef';

interface T {
  teardown(fn: () => void | Promise<void>): void;
}

export async function startMs(t: T, o: Partial<ReferenceMsOptions> = {}): Promise<ReferenceMs> {
  const ms = await ReferenceMs.start({ token: TOKEN, heartbeatMs: 200, nodeTimeoutMs: 1500, ...o });
  t.teardown(() => ms.close());
  return ms;
}

export function writeToken(dir: string, token = TOKEN): string {
  const f = path.join(dir, 'token');
  fs.writeFileSync(f, `${token}\n`, { mode: 0o600 });
  return f;
}

export interface TestAgent {
  agent: Agent;
  logs: string[];
  stateDir: string;
}

/** An agent in this process with fast timings, its JSON log lines captured. */
export async function startAgent(t: T, ms: ReferenceMs, dir: string, o: Partial<AgentOptions> & { name?: string } = {}): Promise<TestAgent> {
  const logs: string[] = [];
  const stateDir = o.stateDir ?? path.join(dir, `state-${o.name ?? 'a'}`);
  const agent = await Agent.start({
    server: ms.url,
    tokenFile: o.tokenFile ?? writeToken(dir),
    stateDir,
    nodeName: o.name ?? 'a',
    metrics: { host: '127.0.0.1', port: 0 },
    backoff: { initialMs: 50, maxMs: 300 },
    progressMs: 100,
    tickMs: 50,
    slots: 2,
    log: Logger.create({
      sink: {
        write: (l) => {
          logs.push(l);
        },
      },
      level: 'debug',
    }),
    ...o,
  });
  let stopped = false;
  t.teardown(async () => {
    if (!stopped) await agent.stop();
  });
  const stop = agent.stop.bind(agent);
  agent.stop = async () => {
    stopped = true;
    await stop();
  };
  return { agent, logs, stateDir };
}

export async function makeDisk(dir: string, name: string, size: number, seed: number): Promise<string> {
  const f = path.join(dir, `${name}.img`);
  await generateSampleDisk(f, { size, seed });
  return f;
}

export async function get(port: number, p: string): Promise<{ status: number; body: string; type: string | null }> {
  const r = await fetch(`http://127.0.0.1:${port}${p}`);
  return { status: r.status, body: await r.text(), type: r.headers.get('content-type') };
}

export function waitUntil<T>(fn: () => T | undefined | null | false, timeoutMs = 20_000, what = 'condition'): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const poll = () => {
      let v: T | undefined | null | false;
      try {
        v = fn();
      } catch (err) {
        reject(err);
        return;
      }
      if (v) resolve(v);
      else if (Date.now() > deadline) reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`));
      else setTimeout(poll, 25);
    };
    poll();
  });
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface AgentProcess {
  child: ChildProcess;
  name: string;
  stderr: string[];
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/**
 * Runs `node dist/bin/rnode.js agent ...` (building dist first when needed), without the test runner's hooks, as in
 * production (plainNode says why). `wrap`: a command the node command line is appended to (a shell that sets a ulimit,
 * then execs it; the pid stays the agent's).
 */
export function spawnAgent(t: T, ms: ReferenceMs, dir: string, name: string, extra: string[] = [], o: { wrap?: string[] } = {}): AgentProcess {
  ensureBuilt();
  const env = { ...process.env };
  const [node, nodeArgs] = plainNode([
    ...CLI_NODE_FLAGS,
    CLI,
    'agent',
    '--server',
    ms.url,
    '--token-file',
    writeToken(dir),
    '--node-name',
    name,
    '--state-dir',
    path.join(dir, `state-${name}`),
    '--reconnect-max-ms',
    '300',
    ...extra,
  ]);
  const [cmd, args] = o.wrap?.length ? [o.wrap[0]!, [...o.wrap.slice(1), node, ...nodeArgs]] : [node, nodeArgs];
  const child = spawn(cmd, args, { env, stdio: ['ignore', 'ignore', 'pipe'] });
  const stderr: string[] = [];
  let buf = '';
  child.stderr!.on('data', (b: Buffer) => {
    buf += b.toString();
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      stderr.push(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.on('exit', (code, signal) => r({ code, signal })));
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    }
  });
  return { child, name, stderr, exited };
}

/** The parsed JSON log lines of an agent. */
/** A logger at debug level whose lines are kept in logs (json or text format). */
export function captureLogs(format: 'json' | 'text' = 'json'): { log: Logger; logs: string[] } {
  const logs: string[] = [];
  const log = Logger.create({ sink: { write: (l) => logs.push(l) }, level: 'debug', format });
  return { log, logs };
}

export function parsedLogs(lines: string[]): Record<string, any>[] {
  return lines.filter((l) => l.trim().startsWith('{')).map((l) => JSON.parse(l));
}

export { tmpDir };

/**
 * The pending checkpoints of an unencrypted disk in an fs store (repository v2: r2/plain/disks/<disk>/pending/<seq10>),
 * each decoded (and authenticated) by point-format's decoder: { point, nextIndex } per checkpoint, [] when none.
 */
export function pendingCheckpoints(storeDir: string, disk: string): { point: number; nextIndex: number }[] {
  const domain = Domain.of(undefined);
  const dir = path.join(storeDir, r2.pendingPrefix(domain.name, domain.dname(disk)));
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir)
    .filter((f) => /^\d{10}$/.test(f))
    .map((f) => {
      const point = Number(f);
      const ck = decodePendingV2(fs.readFileSync(path.join(dir, f)), domain, disk, point) as { nextIndex: number };
      return { point, nextIndex: ck.nextIndex };
    });
}
