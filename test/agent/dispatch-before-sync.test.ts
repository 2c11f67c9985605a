// Regression: a job re-dispatched after a takeover reaches a node before the policy of its disk does (the server
// sends jobs first, then policy.sync). The job carries everything it needs (store, chunk size, key, checkpoint
// interval), but an encrypted job resolved its key before taking the disk lock, so a policy landing in that window
// found the disk free and started a scheduled run of it: a second writer of the disk, which (with another chunk
// size in the newer policy) could win the lock and start the point afresh over the killed run's checkpoint.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { EncryptionKey } from '../../src/crypto/keys.js';
import { JobRunner, diskKey } from '../../src/agent/jobs.js';
import { Logger } from '../../src/log.js';
import { AgentMetrics } from '../../src/agent/metrics.js';
import type { AgentReport, Policy, ReplicateJob } from '../../src/agent/protocol.js';
import { Scheduler } from '../../src/agent/scheduler.js';
import { StateDir } from '../../src/agent/state.js';
import { Domain } from '../../src/repository/domain.js';
import { r2 } from '../../src/repository/names.js';
import { decodePendingV2 } from '../../src/repository/point-format.js';
import { listPoints } from '../../src/repository/points.js';
import { replicate } from '../../src/jobs/replicate.js';
import { openSource } from '../../src/source/index.js';
import { expectRestore, fingerprint, fsStore } from '../helpers/images.js';
import { KiB, MiB, makeDisk, sleep, tmpDir } from './helpers.js';

const MASTER = crypto.createHash('sha256').update('dispatch-before-sync').digest();
const KEY = EncryptionKey.fromBytes(MASTER);
const SIZE = 1 * MiB;

t.test('a re-dispatched job that arrives before its policy keeps its disk, and resumes the checkpoint', async (t) => {
  const dir = tmpDir(t, 'agent-dispatch-sync');
  const storeUrl = path.join(dir, 'store');
  const store = fsStore(storeUrl);
  const img = await makeDisk(dir, 'd0', SIZE, 77);

  // The killed run: point 1 of d0 stopped half-way, a checkpoint left in the store.
  const ac = new AbortController();
  const src = await openSource(img);
  await t.rejects(
    replicate({
      store,
      source: src,
      disk: 'd0',
      chunkSize: 64 * KiB,
      encryption: KEY,
      checkpointMillis: 0,
      signal: ac.signal,
      lease: { holder: 'dead-node', ttlMs: 1, waitMs: 0 },
      onProgress: (p) => {
        if (p.position >= SIZE / 2) ac.abort();
      },
    }),
  );
  await src.close();
  const domain = Domain.of(KEY);
  const pending = await store.get(r2.pending(domain.name, domain.dname('d0'), 1));
  t.ok((decodePendingV2(pending, domain, 'd0', 1) as { nextIndex: number }).nextIndex > 0, 'the killed run left a checkpoint');

  const state = await StateDir.open(path.join(dir, 'state'));
  fs.writeFileSync(state.secretPath('d0-key'), `${MASTER.toString('base64')}\n`, { mode: 0o600 });
  const encryption = { mode: 'aes-256-gcm' as const, key: { secretRef: 'file:d0-key' } };
  const reports: AgentReport[] = [];
  const log = Logger.create({ sink: { write: () => undefined }, level: 'error' });
  const metrics = new AgentMetrics();
  let scheduler: Scheduler | undefined;
  const runner = new JobRunner({
    nodeName: 'n',
    slots: 2,
    bandwidth: 0,
    state,
    log,
    metrics,
    report: (r) => reports.push(r),
    progress: () => undefined,
    onPoint: (g, url, r, at) => scheduler?.recordPoint(g, url, r, at),
  });
  scheduler = new Scheduler({ state, runner, log, metrics, report: () => undefined, tickMs: 3_600_000 });

  const job: ReplicateJob = {
    jobId: 'rerun',
    kind: 'replicate',
    attempt: 2,
    store: { url: storeUrl },
    disks: [{ disk: 'd0', source: { location: img } }],
    chunkSize: 64 * KiB,
    encryption,
    checkpointSeconds: 0.1,
    leaseTtlSeconds: 1,
  };
  // The newer policy revision the node has not seen: another chunk size, so its run could not continue the checkpoint.
  const policy: Policy = {
    group: 'g',
    revision: 2,
    rpoSeconds: 7200,
    intervalSeconds: 3600,
    store: { url: storeUrl },
    chunkSize: 128 * KiB,
    encryption,
    disks: [{ disk: 'd0', source: { location: img } }],
    leaseTtlSeconds: 1,
  };
  const run = runner.start(job);
  t.ok(runner.holdsDisk(diskKey(job.store, 'd0')), 'the accepted job holds its disk at once (before its key is read)');
  const applied = scheduler.update(policy); // the policy arrives while the job is still resolving its key
  scheduler.tick();
  await applied;
  await run;
  await sleep(300);
  scheduler.tick(); // after the job: its point restarted the disk's RPO clock, nothing is due for an hour

  const scheduled = reports.filter((r) => r.type === 'job.accepted' && (r as { scheduled?: boolean }).scheduled);
  t.same(scheduled, [], 'no scheduled run of the disk was started beside the job');
  const done = reports.find((r) => r.type === 'job.completed' || r.type === 'job.failed') as any;
  t.equal(done?.type, 'job.completed', `the job completed (${String(done?.message ?? '')})`);
  const r = done?.results?.[0];
  t.equal(r?.point, 1, 'it committed the point the killed run was writing');
  t.equal(r?.resumed, true, 'continuing its checkpoint');
  t.ok(r?.sourceBytesRead < SIZE, `reading ${r?.sourceBytesRead} of ${SIZE} bytes`);
  t.same(
    (await listPoints(store, 'd0', KEY)).map((m) => m.point),
    [1],
    'one point',
  );
  await expectRestore(t, store, 'd0', 1, fingerprint(img), dir, 'point 1', { encryption: KEY });
  scheduler.stop();
  await runner.cancelAll();
});
