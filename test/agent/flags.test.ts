// `rnode agent` flags checked at start, not once the Management Server answers: an empty or too long --node-name
// crashed the agent with a stack trace ("outgoing hello does not match its schema") only when the server was
// reachable (a crash loop under systemd), and a password or ?token= in --server was printed in "agent starting".
import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { Agent, type AgentOptions } from '../../src/agent/agent.js';
import { ServerLink } from '../../src/agent/link.js';
import { AgentMetrics } from '../../src/agent/metrics.js';
import { StateDir } from '../../src/agent/state.js';
import { lines, runCli } from '../helpers/cli.js';
import { captureLogs, startMs, tmpDir, waitUntil, writeToken } from './helpers.js';

const SECRET = 'Sup3rSecretPW';

/** Why Agent.start refused `opts`; an agent that started all the same is stopped (and the test fails). */
async function refusal(t: Test, opts: AgentOptions): Promise<(Error & { code?: string }) | undefined> {
  try {
    const agent = await Agent.start(opts);
    t.teardown(() => agent.stop());
    return undefined;
  } catch (err) {
    return err as Error;
  }
}

t.test('--node-name "" with the server up: one usage line and exit 2, not a stack trace', async (t) => {
  const dir = tmpDir(t, 'agent-flags');
  const ms = await startMs(t);
  const r = await runCli(['agent', '--server', ms.url, '--token-file', writeToken(dir), '--node-name', '', '--state-dir', path.join(dir, 'state')], {
    timeoutMs: 20_000,
  });
  t.equal(r.code, 2, r.stderr);
  t.same(lines(r.stderr), ['rnode: RNODE_USAGE: --node-name must be 1 to 256 characters long (got 0); leave it out to use the host name']);
  t.equal(ms.nodes.size, 0, 'never registered');
});

// An empty --state-dir (an unset variable in a unit file) made ./secrets in the working folder, then failed with
// RNODE_INTERNAL "ENOENT: scandir ''; this is a bug", exit 1: a restart loop that would never succeed.
t.test('--state-dir "": one usage line and exit 2, and nothing made in the working folder', async (t) => {
  const dir = tmpDir(t, 'agent-flags');
  const token = writeToken(dir);
  const cwd = path.join(dir, 'cwd');
  fs.mkdirSync(cwd);
  const r = await runCli(['agent', '--server', 'ws://127.0.0.1:1', '--token-file', token, '--state-dir', ''], { cwd, timeoutMs: 15_000 });
  t.equal(r.code, 2, r.stderr);
  t.same(lines(r.stderr), [
    'rnode: RNODE_USAGE: --state-dir is empty; name the folder the node keeps its state in, or leave the flag out for the default',
  ]);
  t.same(fs.readdirSync(cwd), [], 'nothing made in the working folder');
});

t.test('a --token-file the group or others may read is refused at start, like a key file', async (t) => {
  const dir = tmpDir(t, 'agent-flags');
  const token = writeToken(dir);
  fs.chmodSync(token, 0o644);
  const r = await runCli(['agent', '--server', 'ws://127.0.0.1:1', '--token-file', token, '--state-dir', path.join(dir, 'state')], {
    timeoutMs: 15_000,
  });
  t.equal(r.code, 2, r.stderr);
  t.same(lines(r.stderr), [
    `rnode: RNODE_USAGE: --token-file ${token} is readable or writable by group or others (mode 0644); restrict it with "chmod 600 ${token}"`,
  ]);
  t.notOk(fs.existsSync(path.join(dir, 'state')), 'nothing was started');
});

t.test('a node name longer than the hello takes is refused before the agent starts', async (t) => {
  const dir = tmpDir(t, 'agent-flags');
  const ms = await startMs(t);
  const { log } = captureLogs();
  const err = await refusal(t, { server: ms.url, tokenFile: writeToken(dir), stateDir: path.join(dir, 'state'), nodeName: 'n'.repeat(257), log });
  t.match(err, { code: 'RNODE_USAGE', message: /--node-name must be 1 to 256 characters long \(got 257\)/ });
  t.notOk(fs.existsSync(path.join(dir, 'state')), 'nothing was started');
});

t.test('a password in --server is refused and never printed', async (t) => {
  const dir = tmpDir(t, 'agent-flags');
  const ms = await startMs(t);
  const server = ms.url.replace('ws://', `ws://admin:${SECRET}@`);
  const r = await runCli(['agent', '--server', server, '--token-file', writeToken(dir), '--state-dir', path.join(dir, 'state')], {
    timeoutMs: 15_000,
  });
  t.equal(r.code, 2, r.stderr);
  t.same(lines(r.stderr), ["rnode: RNODE_USAGE: --server must not carry credentials; put the node's token in --token-file"]);
  t.notOk(r.stdout.includes(SECRET) || r.stderr.includes(SECRET), 'the password is printed nowhere');
  // Whatever the log format, and also when the URL is not ws:// at all (the refusal does not echo it).
  for (const [url, message] of [
    [server, /must not carry credentials/],
    [`http://admin:${SECRET}@127.0.0.1:1`, /^--server must be a ws:\/\/ or wss:\/\/ URL/],
  ] as const) {
    const { log, logs } = captureLogs('text');
    const err = await refusal(t, { server: url, tokenFile: writeToken(dir), stateDir: path.join(dir, 'state'), log });
    t.match(err, { code: 'RNODE_USAGE', message });
    t.notOk(err?.message.includes(SECRET), 'not echoed');
    t.same(logs, [], 'no log line');
  }
});

t.test('a query in --server (?token=) is refused before anything is logged', async (t) => {
  const dir = tmpDir(t, 'agent-flags');
  const ms = await startMs(t);
  for (const server of [`${ms.url}/?token=${SECRET}`, `${ms.url}/#${SECRET}`]) {
    const { log, logs } = captureLogs();
    const err = await refusal(t, { server, tokenFile: writeToken(dir), stateDir: path.join(dir, 'state'), nodeName: 'a', log });
    t.match(err, { code: 'RNODE_USAGE', message: "--server must not carry a query or fragment; put the node's token in --token-file" });
    t.same(logs, [], 'no log line');
  }
});

t.test('a hello that does not match its schema fails the attempt (logged), never an uncaught exception', async (t) => {
  const dir = tmpDir(t, 'agent-flags');
  const ms = await startMs(t);
  const { log, logs } = captureLogs();
  const link = new ServerLink({
    url: ms.url,
    tokenFile: writeToken(dir),
    state: await StateDir.open(path.join(dir, 'state')),
    log,
    metrics: new AgentMetrics(),
    backoff: { initialMs: 20, maxMs: 50 },
    hello: () => ({
      node: { id: 'node-x', name: '', version: '1' },
      capabilities: { sources: [], stores: [], codecs: [], jobs: [] },
      capacity: { slots: 1 },
    }),
  });
  t.teardown(() => link.stop());
  await link.start();
  const refused = () => logs.filter((l) => l.includes('does not match the protocol') && l.includes('"type":"hello"'));
  await waitUntil(() => refused().length >= 2, 10_000, 'two attempts');
  t.match(refused()[0], /\/node\/name/, 'the log names the field');
  t.equal(ms.nodes.size, 0, 'no hello was sent');
});

t.test('a Management Server that cannot be reached is logged with why (it logged only code 1006)', async (t) => {
  const dir = tmpDir(t, 'agent-flags');
  const { log, logs } = captureLogs();
  const agent = await Agent.start({ server: 'ws://127.0.0.1:1', tokenFile: writeToken(dir), stateDir: path.join(dir, 'state'), nodeName: 'a', log });
  t.teardown(() => agent.stop());
  await waitUntil(() => logs.some((l) => l.includes('could not reach the server')), 10_000, 'the warning');
  const line = JSON.parse(logs.find((l) => l.includes('could not reach the server'))!);
  t.match(line, { level: 'warn', msg: 'could not reach the server; will retry', err: /ECONNREFUSED 127\.0\.0\.1:1/, server: 'ws://127.0.0.1:1' });
});
