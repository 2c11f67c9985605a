// The scheduler's writes to the state dir are chained and may still be on their way when the agent stops; stop
// waits for them (Scheduler.flushed), or a caller that removes the state dir next races a rename into it (CI saw
// ENOTEMPTY in register.test.ts). This checks flushed() waits for every write, including one queued while it waits.
import t from 'tap';
import { Scheduler } from '../../src/agent/scheduler.js';
import type { JobRunner } from '../../src/agent/jobs.js';
import type { AgentMetrics } from '../../src/agent/metrics.js';
import type { StateDir } from '../../src/agent/state.js';
import type { ReplicateResult } from '../../src/jobs/replicate.js';
import { Logger } from '../../src/log.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

t.test('flushed() resolves only once every disk record handed to the state dir is written', async (t) => {
  const written: string[] = [];
  const state = {
    async saveDisks(d: Record<string, { lastPoint?: number }>) {
      await sleep(100);
      written.push(Object.keys(d).sort().join(','));
    },
  } as unknown as StateDir;
  const scheduler = new Scheduler({
    state,
    runner: {} as JobRunner,
    log: Logger.create({ sink: { write: () => undefined }, level: 'error' }),
    metrics: { lastPoint: { set: () => undefined } } as unknown as AgentMetrics,
    report: () => undefined,
  });
  const point = (disk: string) => scheduler.recordPoint('g', '/store', { disk, point: 1 } as ReplicateResult, new Date());
  point('d0');
  point('d1');
  // A third record arrives while flushed() already waits for the first two.
  setTimeout(() => point('d2'), 150);
  const started = Date.now();
  await scheduler.flushed();
  t.same(written, ['/store#d0', '/store#d0,/store#d1', '/store#d0,/store#d1,/store#d2'], 'all three writes landed, in order');
  t.ok(Date.now() - started >= 250, 'it waited for the write queued while it waited (three 100 ms writes in a row)');
});
