// The agent's VM jobs (issue: a job naming a VM opened each vddk:// disk as its own source, so a 3-disk VM got three
// snapshots taken at three moments): a 3-disk VM job makes exactly one CreateSnapshot_Task per run, its three
// points share that snapshot, and the VM point restores byte-exact as the snapshot saw it while the guest keeps
// writing during the read; quiesce falls back with a warning in the report, or fails the job by policy.
import t from 'tap';
import { createCipheriv, createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { recoverVm } from '../../src/jobs/vm.js';
import { loadPoint } from '../../src/repository/points.js';
import { listVmPointSeqs, loadVmPoint } from '../../src/repository/vm-points.js';
import { startAgent, startMs } from '../agent/helpers.js';
import { metricValue } from '../helpers/metrics.js';
import { KiB, MiB, accessAndThreads, fingerprintOf, snapshotFingerprints, startEnv } from './harness.js';

function randomData(length: number, seed: number): Buffer {
  const key = createHash('sha256').update(`rnode-agent-vm-${seed}`).digest().subarray(0, 16);
  return createCipheriv('aes-128-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(length));
}

t.test('a 3-disk VM job: one snapshot per run, three points of it, a VM point that restores byte-exact while the guest writes', async (t) => {
  const env = await startEnv(t, [
    {
      moref: 'vm-90',
      disks: [
        { key: 2000, size: 8 * MiB },
        { key: 2001, size: 4 * MiB },
        { key: 2002, size: 6 * MiB },
      ],
    },
  ]);
  const { sim } = env;
  for (const [i, k] of [2000, 2001, 2002].entries()) sim.writeToVmDisk('vm-90', k, i * MiB, randomData(2 * MiB, i));
  const cfg = path.join(env.dir, 'vm-90.json');
  const { disks: _d, ...common } = env.config;
  fs.writeFileSync(cfg, JSON.stringify(common));
  // The simulator shares this process and blocks it while it freezes disk images (cp, sha256): a generous node
  // timeout keeps a slow machine from making the server re-dispatch a running job.
  const ms = await startMs(t, { nodeTimeoutMs: 60_000 });
  const { agent, logs } = await startAgent(t, ms, env.dir);
  await ms.waitFor(() => ms.nodes.get(agent.nodeId)?.connected, 10_000, 'registration');
  const store = { url: path.join(env.dir, 'store') };
  // A job that never ends leaves its agent log and the stand-in's last calls in the failure.
  const done = (id: string, ms_: number, what: string) =>
    ms
      .waitFor(() => ms.jobs.get(id)?.completed ?? ms.jobs.get(id)?.failed, ms_, what)
      .catch((err: Error) => {
        throw new Error(
          `${err.message}\nagent log:\n${logs.slice(-30).join('\n')}\nVDDK calls:\n${env
            .calls()
            .slice(-15)
            .map((c) => c.raw)
            .join('\n')}`,
        );
      });
  const disks = [2000, 2001, 2002].map((k) => ({
    disk: `db-vm-${k}`,
    source: { location: `vddk://127.0.0.1:${sim.port}/vm-90?disk=${k}`, options: { sourceConfig: cfg } },
  }));
  const job = { jobId: 'vm90-1', kind: 'replicate' as const, vm: 'vm-90', store, disks, chunkSize: 64 * KiB, diskParallelism: 3 };

  // The guest keeps writing while the job reads (reads are slowed down to make the window wide).
  sim.dummyExtra = ['dummy.readLatencyUs=10000'];
  sim.writeDummyConfig();
  env.clearLog();
  let n = 0;
  const writer = setInterval(() => {
    if (n >= 300) return; // bounded: the machine may be slow, the run long
    for (const k of [2000, 2001, 2002]) sim.writeToVmDisk('vm-90', k, (n % 16) * 64 * KiB, randomData(4096, 1000 + n++));
  }, 20);
  ms.startJob(job);
  const c1 = await done('vm90-1', 180_000, 'VM job');
  clearInterval(writer);
  t.notOk(ms.jobs.get('vm90-1')?.failed, 'the job completed');
  t.ok(n > 3, `the guest wrote ${n} times during the run`);
  t.equal(sim.calls.filter((m) => m === 'CreateSnapshot_Task').length, 1, 'exactly one CreateSnapshot_Task for the run');
  const vm = (c1 as any).vm;
  t.match(vm, { vm: 'vm-90', vmPoint: 1, consistency: 'crash' }, 'the report names the VM point');
  t.same(
    (c1 as any).results.map((r: any) => [r.disk, r.point]),
    [
      ['db-vm-2000', 1],
      ['db-vm-2001', 1],
      ['db-vm-2002', 1],
    ],
    "one point per disk, under the job's disk ids",
  );
  for (const d of disks) {
    const m = await loadPoint(env.store, d.disk, 1);
    t.ok(m.source.location.endsWith(`@${vm.snapshot}`), `${d.disk} point 1 was read from snapshot ${vm.snapshot}`);
  }
  const p = await loadVmPoint(env.store, 'vm-90', 1);
  t.equal(p.snapshot.moref, vm.snapshot, 'the VM point ties them to the one snapshot');
  t.same(
    p.disks.map((d) => d.disk),
    disks.map((d) => d.disk),
  );
  const out = path.join(env.dir, 'restore');
  const r = await recoverVm({ store: env.store, vm: 'vm-90', outDir: out });
  const want = snapshotFingerprints(env, vm.snapshot);
  for (const d of r.disks) t.equal(fingerprintOf(d.out), want.get(d.key), `disk ${d.key} restores byte-exact as the snapshot saw it`);
  t.not(fingerprintOf(sim.disk('vm-90', 2000).image), want.get(2000), 'while the live disk has moved on');
  const a = accessAndThreads(env.calls());
  t.same([a.prepare, a.end, a.violations], [1, 1, 0], 'PrepareForAccess/EndAccess once, nothing off the designated thread');
  // The disks share the VM's store: each counted all of its bytes, so the VM's were counted three times.
  const sent = await metricValue(agent.metrics.bytesSent, {});
  const stored = (c1 as any).results.reduce((n: number, x: any) => n + x.bytesWritten, 0);
  t.ok(sent < stored * 1.5, `rnode_bytes_sent_total ${sent} counts the bytes once (${stored} stored by the three points)`);

  // The second run: one more snapshot, not three.
  sim.dummyExtra = [];
  sim.writeDummyConfig();
  ms.startJob({ ...job, jobId: 'vm90-2' });
  const c2 = await done('vm90-2', 120_000, 'second VM job');
  t.equal(sim.calls.filter((m) => m === 'CreateSnapshot_Task').length, 2, 'one CreateSnapshot_Task per run');
  t.equal((c2 as any).vm.vmPoint, 2);
  t.ok(
    (c2 as any).results.every((x: any) => x.full === false),
    'incremental',
  );
  const p2 = await loadVmPoint(env.store, 'vm-90', 2);
  const r2 = await recoverVm({ store: env.store, vm: 'vm-90', point: '2', outDir: path.join(env.dir, 'restore2') });
  const want2 = snapshotFingerprints(env, p2.snapshot.moref);
  for (const d of r2.disks) t.equal(fingerprintOf(d.out), want2.get(d.key), `VM point 2: disk ${d.key} byte-exact`);

  // Quiesce without VMware Tools: fallback puts the reason in the report's warnings; fail fails the job.
  sim.setTools('vm-90', 'absent');
  ms.startJob({ ...job, jobId: 'vm90-3', quiesce: true });
  const c3 = await done('vm90-3', 120_000, 'quiesce fallback');

  t.match((c3 as any).vm, { consistency: 'crash', consistencyReason: /VMware Tools are not running/ });
  t.match((c3 as any).warnings, [/crash-consistent/], 'a warning in the report');
  t.ok(
    logs.some((l) => l.includes('"level":"warn"') && l.includes('crash-consistent')),
    'and in the agent log',
  );
  ms.startJob({ ...job, jobId: 'vm90-4', quiesce: true, quiesceFallback: 'fail' });
  const f4 = await ms.waitFor(() => ms.jobs.get('vm90-4')?.failed, 120_000, 'quiesce fail');
  t.match(f4, { code: 'RNODE_VM_QUIESCE' }, 'policy fail: job.failed with RNODE_VM_QUIESCE');
  t.same(await listVmPointSeqs(env.store, 'vm-90'), [1, 2, 3]);
});
