// Regression: an agent whose clock was ahead (a day, say) recorded its points' start times in the future. Once the
// clock was set right, the disk's next run waited for that time (no point for a day), the RPO lag was negative and
// showed as 0, no RPO miss was reported, and /healthz said ok. Now a recorded time ahead of the clock is dropped
// with a warning: the disk runs at once, and its RPO counts from when the node started watching it.
import t from 'tap';
import { Scheduler } from '../../src/agent/scheduler.js';
import type { JobRunner } from '../../src/agent/jobs.js';
import type { AgentMetrics } from '../../src/agent/metrics.js';
import type { StateDir } from '../../src/agent/state.js';
import type { Policy } from '../../src/agent/protocol.js';
import { Logger } from '../../src/log.js';

/** A scheduler of one policy (disk d, RPO 10 s, every 5 s) on a fake clock, its state holding `disks`. */
async function scheduler(clock: () => number, disks: Record<string, unknown> = {}) {
  const policy = {
    group: 'g',
    revision: 1,
    rpoSeconds: 10,
    intervalSeconds: 5,
    store: { url: '/store' },
    disks: [{ disk: 'd' }],
  } as unknown as Policy;
  const state = {
    loadPolicies: async () => [policy],
    loadDisks: async () => disks,
    saveDisks: async () => undefined,
    savePolicies: async () => undefined,
  } as unknown as StateDir;
  const started: number[] = [];
  const runner = {
    holdsDisk: () => false,
    start: async () => {
      started.push(clock());
    },
  } as unknown as JobRunner;
  const gauge = { set: () => undefined, inc: () => undefined, remove: () => undefined };
  const metrics = { lastPoint: gauge, rpoTarget: gauge, rpoMissed: gauge, overlapSkipped: gauge } as unknown as AgentMetrics;
  const reports: { type: string }[] = [];
  const logs: string[] = [];
  const log = Logger.create({ sink: { write: (l) => void logs.push(l) }, level: 'warn' });
  const s = new Scheduler({ state, runner, log, metrics, report: (r) => reports.push(r as { type: string }), now: clock });
  await s.load();
  return { scheduler: s, started, reports, logs };
}

t.test('a last point time ahead of the clock does not hold off runs or hide the RPO lag', async (t) => {
  let now = Date.parse('2026-12-05T10:00:00Z');
  // Written while the clock was a day ahead.
  const {
    scheduler: sched,
    started,
    reports,
    logs,
  } = await scheduler(() => now, { '/store#d': { lastPointAt: '2026-12-06T10:00:00.000Z', lastPoint: 3 } });
  sched.tick();
  t.equal(started.length, 1, 'the disk runs at once');
  t.match(logs.join('\n'), /last point time of a disk is in the future/, 'with a warning');
  now += 11_000; // the run did not commit: past the RPO
  sched.tick();
  t.ok(
    reports.some((r) => r.type === 'rpo.missed'),
    'an RPO miss is reported',
  );
  t.ok(sched.lags()[0]!.lag >= 11, `the lag shows (${sched.lags()[0]!.lag} s)`);
  await sched.flushed();
});

// The clock set back while the agent runs: its own last start and the time it began watching the disk were ahead of
// the clock too, so there was no run and no RPO miss until the clock came round again (a day without points).
t.test('the clock set back while the agent runs: the next run is not held off, and the RPO lag counts', async (t) => {
  let now = Date.parse('2026-12-05T10:00:00Z');
  const { scheduler: sched, started, reports } = await scheduler(() => now);
  sched.tick();
  t.equal(started.length, 1, 'the first run');
  await new Promise((r) => setImmediate(r)); // it ended (without a point)
  now -= 24 * 3600_000; // set back a day
  sched.tick();
  t.equal(started.length, 2, 'the disk runs again at once, not a day later');
  await new Promise((r) => setImmediate(r));
  t.notOk(
    reports.some((r) => r.type === 'rpo.missed'),
    'no RPO miss yet',
  );
  now += 11_000;
  sched.tick();
  t.ok(
    reports.some((r) => r.type === 'rpo.missed'),
    'an RPO miss is reported once the RPO passes',
  );
  await sched.flushed();
});
