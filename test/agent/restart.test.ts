// A node SIGKILLed mid-job and restarted on its state folder before the server timed it out: only job.accepted was
// ever sent for the job, and the restarted node no longer knew it, so the server kept it "accepted" forever.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { KiB, MiB, makeDisk, spawnAgent, startMs, tmpDir } from './helpers.js';

t.test('a job the node was running when it was killed ends with job.failed RNODE_AGENT_RESTARTED once it restarts', async (t) => {
  const dir = tmpDir(t, 'agent-restart');
  const img = await makeDisk(dir, 'd', 8 * MiB, 7);
  const ms = await startMs(t, { nodeTimeoutMs: 60_000 });
  const first = spawnAgent(t, ms, dir, 'n1');
  const node = await ms.waitFor(() => ms.liveNodes()[0], 20_000, 'registration');
  // Paced: the run takes seconds, so the kill lands mid-run.
  const rec = ms.startJob(
    {
      jobId: 'j1',
      kind: 'replicate',
      store: { url: path.join(dir, 'store') },
      disks: [{ disk: 'd', source: { location: img } }],
      bandwidth: 512 * KiB,
    },
    node.id,
  );
  await ms.waitFor(() => rec.state === 'accepted' && ms.progress.some((p) => p.msg.jobId === 'j1'), 20_000, 'the job running');
  first.child.kill('SIGKILL');
  await first.exited;

  spawnAgent(t, ms, dir, 'n1');
  await ms.waitFor(() => rec.state === 'failed', 20_000, 'the job ended');
  t.match(rec.failed, {
    type: 'job.failed',
    jobId: 'j1',
    kind: 'replicate',
    attempt: 1,
    code: 'RNODE_AGENT_RESTARTED',
    message: /the node restarted while attempt 1 of job j1 ran/,
    cancelled: false,
    retryable: true,
  });
  t.equal(ms.nodes.get(node.id)?.connected, true, 'the same node');
  const jobsFile = path.join(dir, 'state-n1', 'jobs.json');
  await ms.waitFor(() => fs.readFileSync(jobsFile, 'utf8') === '[]', 5_000, 'jobs.json emptied');
  t.equal(ms.reportsOf('job.failed').length, 1, 'reported once');
});
