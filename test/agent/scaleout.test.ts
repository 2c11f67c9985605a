// Scale-out: three node processes (node dist/cli.js agent) under one reference server, ten disks. One node is
// killed with SIGKILL while it writes a disk; the server declares it dead (no heartbeat), hands its jobs to the
// others, and the job that was mid-way completes on another node from the checkpoint in the store (resumed,
// reading less than the disk) once the dead node's lease expires. Every disk ends with exactly one point
// (never two writers) that restores byte-exact; the survivors' /metrics agree.
import t from 'tap';
import path from 'node:path';
import { Domain } from '../../src/repository/domain.js';
import { listPoints } from '../../src/repository/points.js';
import { parseExposition } from '../helpers/metrics.js';
import { expectRestore, fingerprint, fsStore } from '../helpers/images.js';
import { get, KiB, MiB, makeDisk, parsedLogs, pendingCheckpoints, spawnAgent, startMs, tmpDir, TOKEN, type AgentProcess } from './helpers.js';

const DISKS = 10;
const SIZE = 2 * MiB;

t.test('three nodes, ten disks, one node killed mid-job', async (t) => {
  const dir = tmpDir(t, 'agent-scale');
  const imgs = await Promise.all(Array.from({ length: DISKS }, (_, i) => makeDisk(dir, `disk${i}`, SIZE, 100 + i)));
  const storeDir = path.join(dir, 'store');
  // A repository of small packs: a checkpoint follows the packs it covers, so a 2 MiB disk (~1 MiB of data) in
  // packs of 128 KiB checkpoints several times a run, and a kill can land mid-way.
  await Domain.openOrCreate(fsStore(storeDir), undefined, 128 * KiB);
  const ms = await startMs(t, { heartbeatMs: 200, nodeTimeoutMs: 1500 });
  const procs: AgentProcess[] = ['n1', 'n2', 'n3'].map((n) => spawnAgent(t, ms, dir, n, ['--slots', '2', '--metrics', '127.0.0.1:0']));
  await ms.waitFor(() => ms.liveNodes().length === 3, 30_000, 'three nodes');
  t.pass('three node processes registered');

  for (let i = 0; i < DISKS; i++) {
    ms.startJob({
      jobId: `rep-disk${i}`,
      kind: 'replicate',
      store: { url: storeDir },
      disks: [{ disk: `disk${i}`, source: { location: imgs[i] } }],
      chunkSize: 64 * KiB,
      // ~2 s a job (a 2 MiB disk compresses to ~1 MiB): time to find one mid-way, even on a loaded machine.
      bandwidth: 512 * KiB,
      checkpointSeconds: 0.2,
      leaseTtlSeconds: 3,
    });
  }
  const counts = [...ms.liveNodes()].map((n) => [...ms.jobs.values()].filter((j) => j.nodeId === n.id).length);
  t.same(counts.sort(), [3, 3, 4], 'jobs spread over the nodes by load');

  // How far a disk's run has durably got: the chunk index its newest checkpoint in the store resumes from.
  const CHUNKS = SIZE / (64 * KiB);
  const checkpointAt = (disk: string) => Math.max(0, ...pendingCheckpoints(storeDir, disk).map((ck) => ck.nextIndex));
  // A job under way, its checkpoint short of half the disk (the reader runs ahead of the writes, so the store, not
  // the bytes read, says how far it is): kill its node.
  const victimJob = await ms.waitFor(
    () =>
      [...ms.jobs.values()].find((j) => {
        const at = j.state === 'accepted' && j.progress?.phase === 'scan' ? checkpointAt(j.progress.disk) : 0;
        return at > 0 && at <= CHUNKS / 2;
      }),
    30_000,
    'a job with a checkpoint',
  );
  const victimId = victimJob.nodeId!;
  const victim = procs.find((p) => p.name === ms.nodes.get(victimId)!.name)!;
  const diskOf = (j: { job: { disks?: { disk: string }[] } }) => j.job.disks![0]!.disk;
  const victimJobs = [...ms.jobs.values()].filter((j) => j.nodeId === victimId);
  const running = victimJobs.filter((j) => j.state === 'accepted' && checkpointAt(diskOf(j)) > 0);
  victim.child.kill('SIGKILL');
  t.match(await victim.exited, { signal: 'SIGKILL' }, `node ${victim.name} killed while writing ${victimJob.progress!.disk}`);
  // A job of the victim may have committed its point between the look above and the kill, before its report
  // left: its re-run on another node then finds that point and adds a second one (no checkpoint to resume).
  // The store, final once the victim is dead, says which of its disks had a point and which jobs were mid-way.
  const store = fsStore(storeDir);
  const committedAtKill = new Set<string>();
  for (const j of victimJobs) if ((await listPoints(store, diskOf(j))).length > 0) committedAtKill.add(diskOf(j));
  const inFlight = running.filter((j) => !committedAtKill.has(diskOf(j)));
  if (committedAtKill.size) t.comment(`committed just before the kill: ${[...committedAtKill].join(', ')}`);

  await ms.waitFor(() => [...ms.jobs.values()].every((j) => j.state === 'completed' || j.state === 'failed'), 90_000, 'every job to end');
  const failed = [...ms.jobs.values()].filter((j) => j.state === 'failed');
  t.same(
    failed.map((j) => [j.job.jobId, j.attempt, j.failed?.code, j.failed?.message]),
    [],
    'no job failed',
  );
  if (failed.length) t.comment(JSON.stringify([...ms.jobs.values()].map((j) => [j.job.jobId, j.state, j.attempt, j.attempts])));
  t.equal(ms.nodes.get(victimId)!.alive, false, 'the killed node was declared dead');

  for (const j of inFlight) {
    const r = (j.completed!.results as any[])[0];
    t.ok(j.attempt >= 2 && j.nodeId !== victimId, `${j.job.jobId} completed on another node (attempt ${j.attempt})`);
    t.equal(r.resumed, true, `${j.job.jobId} continued from the checkpoint`);
    t.ok(r.sourceBytesRead < SIZE, `${j.job.jobId} read ${r.sourceBytesRead} bytes, less than the ${SIZE}-byte disk`);
  }
  t.ok(inFlight.length >= 1, `${inFlight.length} job(s) were mid-way on the killed node`);

  for (let i = 0; i < DISKS; i++) {
    const points = await listPoints(store, `disk${i}`);
    // One writer at a time: a disk the victim committed, but whose job ran again elsewhere because its report never
    // reached the server, has the re-run's point too.
    const job = ms.jobs.get(`rep-disk${i}`)!;
    const runs = committedAtKill.has(`disk${i}`) && job.attempt >= 2 ? 2 : 1;
    t.equal(points.length, runs, `disk${i}: exactly one point per run (one writer; ${runs} run(s))`);
    for (let point = 1; point <= points.length; point++) {
      await expectRestore(t, store, `disk${i}`, point, fingerprint(imgs[i]), dir, `disk${i} point ${point}`);
    }
  }

  // The survivors' own view: metrics agree with what they reported; logs are JSON lines with job ids.
  let completedByMetrics = 0;
  for (const p of procs.filter((x) => x !== victim)) {
    const line = parsedLogs(p.stderr).find((e) => e.msg === 'serving /metrics, /healthz, /readyz');
    const port = Number(String(line?.listen).split(':').pop());
    const m = parseExposition((await get(port, '/metrics')).body);
    completedByMetrics += m.get('rnode_jobs_total{kind="replicate",result="completed"}') ?? 0;
    t.equal((await get(port, '/readyz')).status, 200, `${p.name} ready`);
    const logs = parsedLogs(p.stderr);
    t.ok(
      logs.some((e) => e.msg === 'point committed' && e.jobId && e.disk),
      `${p.name} logs carry jobId and disk`,
    );
    t.notOk(
      p.stderr.some((l) => l.includes(TOKEN)),
      `${p.name} never logged its token`,
    );
  }
  const survivorsCompleted = [...ms.jobs.values()].filter((j) => j.nodeId !== victimId).length;
  t.equal(completedByMetrics, survivorsCompleted, 'rnode_jobs_total of the survivors = jobs they completed');
});
