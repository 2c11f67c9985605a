// One agent per state folder. Two agents started on one --state-dir both ran as the same node: they replaced each
// other at the server (close 4409, logged only as "disconnected"), numbered reports from one counter, and the server
// dropped one's reports as duplicates of the other's, so their jobs stayed "dispatched" forever.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { lines, runCli } from '../helpers/cli.js';
import { parsedLogs, spawnAgent, startAgent, startMs, tmpDir, waitUntil, writeToken } from './helpers.js';

t.test('a second agent on a state folder in use refuses to start, naming the pid; a killed agent frees it', async (t) => {
  const dir = tmpDir(t, 'agent-lock');
  const ms = await startMs(t, { nodeTimeoutMs: 60_000 });
  const first = spawnAgent(t, ms, dir, 'n1');
  await ms.waitFor(() => ms.liveNodes().length === 1, 20_000, 'registration');
  const [node] = ms.liveNodes();

  const stateDir = path.join(dir, 'state-n1');
  const r = await runCli(['agent', '--server', ms.url, '--token-file', writeToken(dir), '--node-name', 'twin', '--state-dir', stateDir], {
    timeoutMs: 15_000,
  });
  t.equal(r.code, 1, r.stderr);
  const out = lines(r.stderr);
  t.equal(out.length, 1, r.stderr);
  t.match(out[0], new RegExp(`^rnode: RNODE_STATE_IN_USE: another agent \\(pid ${first.child.pid}\\) uses the state folder ${stateDir}; `));
  t.equal(ms.nodes.size, 1, 'the second never registered');
  t.equal(ms.nodes.get(node.id)?.ws, node.ws, 'the first keeps its connection');

  // The kernel drops the lock with the process, however it dies.
  first.child.kill('SIGKILL');
  await first.exited;
  const again = spawnAgent(t, ms, dir, 'n1');
  await ms.waitFor(() => ms.nodes.get(node.id)?.connected && ms.nodes.get(node.id)?.hello.node.pid === again.child.pid, 20_000, 'restart');
  t.equal(ms.nodes.size, 1, 'the same node, registered again');
});

t.test('in one process too: a stopped agent gives the folder up, one that failed to start holds nothing', async (t) => {
  const dir = tmpDir(t, 'agent-lock');
  const ms = await startMs(t);
  const a = await startAgent(t, ms, dir);
  await t.rejects(startAgent(t, ms, dir), { code: 'RNODE_STATE_IN_USE', message: new RegExp(`\\(pid ${process.pid}\\)`) });
  await a.agent.stop();
  const b = await startAgent(t, ms, dir);
  t.equal(b.agent.nodeId, a.agent.nodeId, 'the same node');
  await b.agent.stop();

  fs.writeFileSync(path.join(a.stateDir, 'node.json'), '{');
  await t.rejects(startAgent(t, ms, dir), { code: 'RNODE_STATE_CORRUPT' });
  await t.rejects(startAgent(t, ms, dir), { code: 'RNODE_STATE_CORRUPT' }, 'not RNODE_STATE_IN_USE');
});

t.test('a copy of a state folder on another node: replaced at the server, logged as an error that says why', async (t) => {
  const dir = tmpDir(t, 'agent-lock');
  const ms = await startMs(t);
  const a = await startAgent(t, ms, dir, { name: 'a' });
  await ms.waitFor(() => a.agent.link.isRegistered, 10_000, 'registration');
  const copy = path.join(dir, 'copy');
  fs.mkdirSync(copy);
  fs.copyFileSync(path.join(a.stateDir, 'node.json'), path.join(copy, 'node.json'));
  const b = await startAgent(t, ms, dir, { name: 'b', stateDir: copy });
  t.equal(b.agent.nodeId, a.agent.nodeId);
  const line = await waitUntil(() => parsedLogs(a.logs).find((e) => e.code === 4409), 10_000, 'the close of the replaced connection');
  t.match(line, { level: 'error', msg: /^another process registered with this node id/ });
});
