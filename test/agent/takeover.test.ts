// Takeover, 20 times (issue 10, item 6): a node process is SIGKILLed at a random moment of a replicate run, the
// reference server declares it dead and re-runs the job on the other node. Whenever the store held a usable
// checkpoint of the killed run (a pending record past chunk 0 and no committed point), the re-run must resume
// from it (resumed: true, reading less than the disk); every disk ends with one point that restores byte-exact.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { listPoints } from '../../src/recovery/points.js';
import { expectRestore, fingerprint, fsStore } from '../helpers/images.js';
import { KiB, MiB, makeDisk, parsedLogs, sleep, spawnAgent, startMs, tmpDir, type AgentProcess } from './helpers.js';

const KILLS = Number(process.env.RNODE_TAKEOVER_KILLS ?? 20);
const SIZE = 1 * MiB;

/** Deterministic "random" kill moments, so a failure replays. */
function rng(seed: number) {
  return () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
}

t.test(`a node killed at ${KILLS} random moments: every re-run with a usable checkpoint resumes`, async (t) => {
  const dir = tmpDir(t, 'agent-takeover');
  const storeDir = path.join(dir, 'store');
  const store = fsStore(storeDir);
  const ms = await startMs(t, { heartbeatMs: 150, nodeTimeoutMs: 900 });
  const imgs = await Promise.all(Array.from({ length: KILLS }, (_, i) => makeDisk(dir, `t${i}`, SIZE, 500 + i)));
  const random = rng(Number(process.env.RNODE_TAKEOVER_SEED ?? 7));
  let generation = 0;
  const start = (): AgentProcess => spawnAgent(t, ms, dir, `k${generation++}`, ['--slots', '2']);
  // The survivor runs every re-run; victims come and go.
  const survivor = start();
  await ms.waitFor(() => ms.liveNodes().length === 1, 30_000, 'the survivor');
  const survivorId = ms.liveNodes()[0].id;
  const outcomes: { disk: string; usable: boolean; resumed: boolean; read: number; killAfterMs: number }[] = [];

  // The next victim starts while the current one's job is taken over, so spawning costs no wall time.
  let next = start();
  for (let i = 0; i < KILLS; i++) {
    const disk = `t${i}`;
    const victim = next;
    const victimNode = await ms.waitFor(() => ms.liveNodes().find((n) => n.name === victim.name), 30_000, `node ${victim.name}`);
    const rec = ms.startJob({
      jobId: `take-${i}`, kind: 'replicate', store: { url: storeDir }, disks: [{ disk, source: { location: imgs[i] } }],
      chunkSize: 64 * KiB, bandwidth: 768 * KiB, checkpointSeconds: 0.1, leaseTtlSeconds: 1.5,
    }, victimNode.id);
    await ms.waitFor(() => rec.state === 'accepted' || rec.state === 'completed', 20_000, `${disk} accepted`);
    // Anywhere from before the first checkpoint (the run starts ~0.3 s after it is accepted) to past its end (~1.6 s).
    const killAfterMs = Math.floor(random() * 1800);
    await sleep(killAfterMs);
    victim.child.kill('SIGKILL');
    await victim.exited;
    if (i + 1 < KILLS) next = start();
    // What the store says the killed run left: a checkpoint past chunk 0 of a point that was not committed.
    const committed = (await listPoints(store, disk)).length > 0;
    const pendingDir = path.join(storeDir, 'disks', disk, 'pending');
    const usable = !committed && fs.existsSync(pendingDir) && fs.readdirSync(pendingDir).some((f) => f.endsWith('.json') &&
      JSON.parse(fs.readFileSync(path.join(pendingDir, f), 'utf8')).nextIndex > 0);
    const done = await ms.waitFor(() => (rec.state === 'completed' || rec.state === 'failed') && rec, 60_000, `${disk} to end`);
    if (done.state === 'failed') {
      t.fail(`${disk}: the job failed: ${String(done.failed?.code)} ${String(done.failed?.message)}`);
      continue;
    }
    const r = (done.completed!.results as any[])[0];
    const reRun = done.nodeId === survivorId;
    outcomes.push({ disk, usable, resumed: r.resumed, read: r.sourceBytesRead, killAfterMs });
    if (usable) {
      t.ok(reRun && r.resumed === true && r.sourceBytesRead < SIZE,
        `${disk} (killed after ${killAfterMs} ms, checkpoint in the store): re-run resumed=${r.resumed}, read ${r.sourceBytesRead} of ${SIZE} bytes`);
    } else {
      t.pass(`${disk} (killed after ${killAfterMs} ms): no usable checkpoint (${committed ? 'point already committed' : 'none yet'}), ${reRun ? 're-run' : 'first run'} resumed=${r.resumed}`);
    }
  }
  const usable = outcomes.filter((o) => o.usable);
  t.comment(`${outcomes.length} kills, ${usable.length} with a usable checkpoint, ${usable.filter((o) => o.resumed).length} resumed`);
  t.ok(usable.length >= KILLS / 4, `most kills land mid-run (${usable.length} of ${outcomes.length} had a checkpoint)`);
  for (let i = 0; i < KILLS; i++) {
    const points = await listPoints(store, `t${i}`);
    if (i % 4 === 0 || points.length !== 1) {
      await expectRestore(t, store, `t${i}`, 'latest', fingerprint(imgs[i]), dir, `t${i} restores byte-exact`);
    }
    t.ok(points.length >= 1, `t${i} has a point`);
  }
  if (t.passing()) return;
  for (const l of parsedLogs(survivor.stderr).filter((e) => e.level !== 'debug').slice(-60)) t.comment(JSON.stringify(l));
});
