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
      bandwidth: 256 * KiB,
    },
    node.id,
  );
  // Once the server has job.accepted, the job is in the node's jobs.json (progress, best effort, is not waited for);
  // the run is paced slowly enough (~4 MiB stored at 256 KiB/s, ~15 s) to be still going at the kill.
  await ms.waitFor(() => rec.state === 'accepted', 60_000, 'the job accepted');
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

// The server sent the interrupted jobs again as soon as the restarted node registered (one with the same attempt,
// one with attempt + 1): the node accepted them before it ended the interrupted attempts, so it reported the running
// attempt 1 failed (RNODE_AGENT_RESTARTED) and then completed, and the failed attempt 1 of the other after its
// attempt 2 was accepted.
t.test('after a kill, the interrupted attempts end before the jobs the server sends again at registration', async (t) => {
  const dir = tmpDir(t, 'agent-restart');
  const ms = await startMs(t, { nodeTimeoutMs: 60_000 });
  const first = spawnAgent(t, ms, dir, 'n1');
  const node = await ms.waitFor(() => ms.liveNodes()[0], 20_000, 'registration');
  // A node killed between sending job.accepted and writing jobs.json would restart without the job the server holds as
  // accepted: read jobs.json as each first job.accepted arrives.
  const acceptedSeenInJobsJson: string[] = [];
  const jobsFile = path.join(dir, 'state-n1', 'jobs.json');
  const onReport = (_n: unknown, msg: { type: string; jobId?: string; attempt?: number }) => {
    if (msg.type !== 'job.accepted' || (msg.attempt ?? 1) !== 1 || acceptedSeenInJobsJson.length >= 2) return;
    const held = fs.existsSync(jobsFile) ? (JSON.parse(fs.readFileSync(jobsFile, 'utf8')) as { jobId: string }[]) : [];
    if (held.some((j) => j.jobId === msg.jobId)) acceptedSeenInJobsJson.push(String(msg.jobId));
  };
  ms.on('report', onReport);
  // Both disks first, then both jobs at once: the two runs must overlap, and the kill land in both. With the second
  // disk made after the first job started, a loaded machine (the whole suite on 2 cores) let the first run end first:
  // "both jobs running" then never held, 20 s or 60 s.
  const imgs = [await makeDisk(dir, 'same', 8 * MiB, 20), await makeDisk(dir, 'next', 8 * MiB, 21)];
  const recs = ['same', 'next'].map((jobId, i) =>
    ms.startJob(
      {
        jobId,
        kind: 'replicate' as const,
        store: { url: path.join(dir, `store-${jobId}`) },
        disks: [{ disk: 'd', source: { location: imgs[i] } }],
        bandwidth: 256 * KiB,
      },
      node.id,
    ),
  );
  const [same, next] = recs;
  // The kill needs both attempts in the node's jobs.json, and neither ended: that much the node guarantees once the
  // server has their job.accepted. (Waiting for progress as well, which is best effort, timed out under the whole
  // suite's load now and then, in CI too.) Each run puts ~4 MiB at 256 KiB/s: about 15 s of runs still going.
  await ms.waitFor(() => recs.every((r) => r.state === 'accepted'), 60_000, 'both jobs accepted');
  t.same(acceptedSeenInJobsJson, ['same', 'next'], 'each job was in jobs.json when its job.accepted reached the server');
  first.child.kill('SIGKILL');
  await first.exited;

  // Sent in the same breath as the welcome: attempt 1 of "same" again, attempt 2 of "next".
  ms.once('registered', (n: { id: string }) => {
    ms.send(n.id, { type: 'job.start', job: same.job });
    next.attempt = 2;
    next.job = { ...next.job, attempt: 2 };
    ms.send(n.id, { type: 'job.start', job: next.job });
  });
  spawnAgent(t, ms, dir, 'n1');
  await ms.waitFor(() => same.state === 'completed' && next.state === 'completed', 120_000, 'both jobs completed');
  const trail = (jobId: string) =>
    ms
      .reportsOf('job.accepted', (m) => m.jobId === jobId)
      .concat(
        ms.reportsOf('job.completed', (m) => m.jobId === jobId),
        ms.reportsOf('job.failed', (m) => m.jobId === jobId),
      )
      .sort((a, b) => Number(a.msg.seq) - Number(b.msg.seq))
      .map((r) => `${String(r.msg.type)} ${String(r.msg.attempt)}${r.msg.code ? ` ${String(r.msg.code)}` : ''}`);
  t.same(
    trail('same'),
    ['job.accepted 1', 'job.failed 1 RNODE_AGENT_RESTARTED', 'job.accepted 1', 'job.completed 1'],
    'the interrupted run ends before the run sent again is accepted, which is never reported failed',
  );
  t.same(trail('next'), ['job.accepted 1', 'job.failed 1 RNODE_AGENT_RESTARTED', 'job.accepted 2', 'job.completed 2'], 'in order');
});
