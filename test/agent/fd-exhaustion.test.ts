// Out of file descriptors, a node degrades and keeps running. Bug: a heartbeat's process.memoryUsage() threw EMFILE
// from its timer and the agent died (uncaught), taking its running jobs with it; and idle connections to /metrics,
// which stayed open for a minute each, were enough to use up the descriptors.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import { MAX_CONNECTIONS } from '../../src/metrics/http.js';
import type { Health } from '../../src/agent/protocol.js';
import { get, sleep, spawnAgent, startMs, tmpDir, waitUntil, type AgentProcess } from './helpers.js';

const linux = process.platform === 'linux';

function hasPrlimit(): boolean {
  try {
    execFileSync('prlimit', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

type Ms = Awaited<ReturnType<typeof startMs>>;

/** The metrics port the agent logged. */
async function metricsPort(p: AgentProcess): Promise<number> {
  const line = await waitUntil(() => p.stderr.find((l) => l.includes('serving /metrics')), 30_000, 'the metrics endpoint');
  return Number(/"listen":"[^"]*:(\d+)"/.exec(line)![1]);
}

/** Counts the heartbeats the server receives from a node (each brings a new health object). */
function heartbeats(ms: Ms, nodeId: string): { count: () => number; last: () => Health | undefined; stop: () => void } {
  let n = 0;
  let seen: Health | undefined;
  const timer = setInterval(() => {
    const h = ms.nodes.get(nodeId)?.health;
    if (h && h !== seen) {
      seen = h;
      n++;
    }
  }, 5);
  return { count: () => n, last: () => seen, stop: () => clearInterval(timer) };
}

/** Opens connections that never send a byte; `closed` counts those the server closed. */
function idleConnections(port: number, count: number): { sockets: net.Socket[]; closed: () => number; settled: Promise<void> } {
  let closed = 0;
  let settled = 0;
  let done!: () => void;
  const settledP = new Promise<void>((r) => (done = r));
  const sockets = Array.from({ length: count }, () => {
    const s = net.connect(port, '127.0.0.1');
    let counted = false;
    const settle = () => {
      if (counted) return;
      counted = true;
      if (++settled === count) done();
    };
    s.on('connect', settle);
    s.on('error', () => undefined);
    s.resume(); // reads the server's 408, so that its close is seen
    s.on('close', () => {
      closed++;
      settle();
    });
    return s;
  });
  return { sockets, closed: () => closed, settled: settledP };
}

const open = (pid: number) => fs.readdirSync(`/proc/${pid}/fd`).length;

t.test('idle connections to /metrics past the bound are refused, and the node keeps running', { skip: !linux && 'ulimit and /proc' }, async (t) => {
  const dir = tmpDir(t, 'agent-nofile');
  const ms = await startMs(t, { heartbeatMs: 200, nodeTimeoutMs: 10_000 });
  // The finder's case: 256 descriptors, 300 idle connections.
  const p = spawnAgent(t, ms, dir, 'nf', ['--metrics', '127.0.0.1:0'], { wrap: ['bash', '-c', 'ulimit -n 256 && exec "$@"', 'bash'] });
  await ms.waitFor(() => ms.liveNodes().length === 1, 30_000, 'registration');
  const nodeId = ms.liveNodes()[0]!.id;
  const port = await metricsPort(p);
  const beats = heartbeats(ms, nodeId);
  t.teardown(beats.stop);

  const idle = idleConnections(port, 300);
  t.teardown(() => idle.sockets.forEach((s) => s.destroy()));
  await idle.settled;
  const before = beats.count();
  await waitUntil(() => beats.count() >= before + 10 || p.child.exitCode !== null, 30_000, 'ten more heartbeats');
  t.equal(p.child.exitCode, null, `the agent is running (stderr: ${p.stderr.filter((l) => /EMFILE|uncaught/i.test(l)).join('\n')})`);
  t.ok(beats.count() >= before + 10, 'it kept heartbeating');
  t.ok(ms.nodes.get(nodeId)?.alive, 'the server holds it alive');
  t.equal(idle.closed(), 300 - MAX_CONNECTIONS, `the ${300 - MAX_CONNECTIONS} connections past the bound were closed at once`);

  // The idle ones within the bound are closed by the server in time, and scrapes work again.
  await waitUntil(() => idle.closed() === 300, 60_000, 'the server to close the idle connections');
  t.equal((await get(port, '/metrics')).status, 200, 'a scrape is served again');
  t.equal(p.child.exitCode, null, 'still running');
});

t.test(
  'with every descriptor in use the node keeps heartbeating (not ready), and recovers when they are free',
  { skip: (!linux && 'prlimit and /proc') || (!hasPrlimit() && 'needs prlimit (util-linux)') },
  async (t) => {
    const dir = tmpDir(t, 'agent-nofile');
    const ms = await startMs(t, { heartbeatMs: 200, nodeTimeoutMs: 10_000 });
    const p = spawnAgent(t, ms, dir, 'nf2', ['--metrics', '127.0.0.1:0']);
    await ms.waitFor(() => ms.liveNodes().length === 1, 30_000, 'registration');
    const nodeId = ms.liveNodes()[0]!.id;
    const port = await metricsPort(p);
    const beats = heartbeats(ms, nodeId);
    t.teardown(beats.stop);
    await waitUntil(() => beats.last()?.rssBytes !== undefined && beats.last()?.ready, 10_000, 'a heartbeat with its RSS');

    // Fewer descriptors left than the metrics bound: idle connections take every one of them.
    const pid = p.child.pid!;
    const limit = open(pid) + 8;
    t.ok(limit - open(pid) < MAX_CONNECTIONS, 'fewer descriptors left than the metrics bound');
    execFileSync('prlimit', ['--pid', String(pid), `--nofile=${limit}:${limit}`]);
    const idle = idleConnections(port, 100);
    t.teardown(() => idle.sockets.forEach((s) => s.destroy()));
    await idle.settled;
    await waitUntil(() => open(pid) >= limit - 1, 10_000, 'every descriptor in use');

    const before = beats.count();
    await waitUntil(() => beats.count() >= before + 10 || p.child.exitCode !== null, 30_000, 'ten more heartbeats');
    t.equal(p.child.exitCode, null, `the agent is running (stderr: ${p.stderr.filter((l) => /EMFILE|uncaught/i.test(l)).join('\n')})`);
    t.ok(beats.count() >= before + 10, 'it kept heartbeating while out of descriptors');
    t.equal(beats.last()?.ready, false, 'not ready: it cannot write its state');
    t.ok(beats.last()!.rssBytes! > 0, 'the heartbeat carries the last RSS known');

    // The descriptors come back: ready again, and /metrics answers.
    idle.sockets.forEach((s) => s.destroy());
    await waitUntil(() => beats.last()?.ready === true, 20_000, 'ready again');
    await sleep(100);
    t.equal((await get(port, '/metrics')).status, 200, 'a scrape is served');
    t.equal(p.child.exitCode, null, 'still running');
  },
);
