// A stopping node and a killed one, as the server sees them.
// Bug 1: after SIGTERM the node still took work: a job.start sent while its running job checkpointed was run to its
// end (30 s here), holding the node's shutdown, and an export.start was served and never reported stopped.
// Bug 2: an export served when the node was SIGKILLed was never reported stopped: the server held it as served.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { KiB, MiB, makeDisk, spawnAgent, startAgent, startMs, tmpDir, waitUntil } from './helpers.js';

t.test('a stopping node takes no new work: a job ends RNODE_AGENT_RESTARTED, an export is refused, a policy runs nothing', async (t) => {
  const dir = tmpDir(t, 'agent-stopping');
  const imgs = [await makeDisk(dir, 'd1', 8 * MiB, 31), await makeDisk(dir, 'd2', 8 * MiB, 32)];
  const ms = await startMs(t, { nodeTimeoutMs: 60_000 });
  const { agent } = await startAgent(t, ms, dir);
  const node = await ms.waitFor(() => ms.nodes.get(agent.nodeId), 10_000, 'registration');
  const store = { url: path.join(dir, 'store') };
  const job = (jobId: string, i: number) => ({
    jobId,
    kind: 'replicate' as const,
    store,
    disks: [{ disk: `d${i + 1}`, source: { location: imgs[i] } }],
    bandwidth: 256 * KiB, // ~30 s a disk: still running when the node stops
  });
  const first = ms.startJob(job('j1', 0), node.id);
  await ms.waitFor(() => first.state === 'accepted', 60_000, 'j1 accepted');
  // What the server sends once the node has begun to stop (SIGTERM calls stop()), handed to the node in that order.
  const stopping = agent.stop();
  const handle = (m: Record<string, unknown>) => (agent as unknown as { onMessage(m: unknown): Promise<void> }).onMessage({ v: 1, ...m });
  await handle({ type: 'job.start', id: 'x-j2', job: job('j2', 1) });
  await handle({ type: 'export.start', id: 'x-e1', export: { exportId: 'e1', store, disk: 'd1', socket: path.join(dir, 'e1.sock') } });
  const policy = { group: 'g1', revision: 1, rpoSeconds: 2, store, disks: [{ disk: 'd2', source: { location: imgs[1] } }] };
  await handle({ type: 'policy.update', id: 'x-p1', policy });
  await stopping;

  const ended = (jobId: string) => ms.reportsOf('job.failed', (m) => m.jobId === jobId)[0]?.msg;
  t.match(await ms.waitFor(() => ended('j1'), 5000, 'j1 ended'), { code: 'RNODE_AGENT_RESTARTED', retryable: true }, 'j1 ends as the node stops');
  t.match(
    await ms.waitFor(() => ended('j2'), 5000, 'j2 ended'),
    { code: 'RNODE_AGENT_RESTARTED', retryable: true, cancelled: false },
    'j2 is not run: it ends at once, for another node',
  );
  t.same(ms.reportsOf('job.completed'), [], 'nothing ran to its end (j2 ran 30 s, holding the shutdown)');
  const refusal = await ms.waitFor(() => ms.errors.find((e) => e.msg.replyTo === 'x-e1')?.msg, 5000, 'the refusal');
  t.match(refusal, { code: 'RNODE_AGENT_RESTARTED', message: /the node is stopping; export e1 was not started/ }, 'the export is refused');
  t.same(ms.reportsOf('export.started'), [], 'and never served');
  t.same(
    ms.reportsOf('job.accepted', (m) => m.jobId !== 'j1' && m.jobId !== 'j2'),
    [],
    'the policy started no run',
  );
});

t.test('an export served when the node was killed is reported stopped when it starts again', async (t) => {
  const dir = tmpDir(t, 'agent-export-kill');
  const img = await makeDisk(dir, 'd', 2 * MiB, 33);
  const ms = await startMs(t, { nodeTimeoutMs: 60_000 });
  const first = spawnAgent(t, ms, dir, 'n1');
  const node = await ms.waitFor(() => ms.liveNodes()[0], 20_000, 'registration');
  const rec = ms.startJob(
    { jobId: 'j', kind: 'replicate', store: { url: path.join(dir, 'store') }, disks: [{ disk: 'd', source: { location: img } }] },
    node.id,
  );
  await ms.waitFor(() => rec.completed, 60_000, 'the point');
  ms.send(node.id, {
    type: 'export.start',
    id: 'x-e1',
    export: { exportId: 'e1', store: { url: path.join(dir, 'store') }, disk: 'd', socket: path.join(dir, 'e1.sock') },
  });
  await ms.waitFor(() => ms.reportsOf('export.started').length > 0, 20_000, 'export.started');
  await waitUntil(() => fs.readFileSync(path.join(dir, 'state-n1', 'exports.json'), 'utf8').includes('e1'), 5000, 'exports.json names it');
  first.child.kill('SIGKILL');
  await first.exited;

  spawnAgent(t, ms, dir, 'n1');
  const stopped = await ms.waitFor(() => ms.reportsOf('export.stopped')[0]?.msg, 20_000, 'export.stopped');
  t.match(stopped, { exportId: 'e1', reason: 'failed', code: 'RNODE_AGENT_RESTARTED', message: /restarted while it served export e1/ });
  await waitUntil(() => fs.readFileSync(path.join(dir, 'state-n1', 'exports.json'), 'utf8') === '[]', 5000, 'exports.json emptied');
  t.equal(ms.reportsOf('export.stopped').length, 1, 'reported once');
});
