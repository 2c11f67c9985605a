// VM jobs a Management Server sends wrong, each of which the agent ran and reported as completed: one disk id for
// two device keys (the VM point listed the id twice; its restore wrote one disk over the other, exit 0), two disk ids
// for one device key (one disk silently never read), a `vm` job with a disk that is no vddk:// source (every disk run
// alone, each vddk:// one from a snapshot of its own, no VM point), and a `vm` that names another VM than the disks'.
// Each is now refused, before any snapshot is taken.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { recoverVm } from '../../src/jobs/vm.js';
import { commitVmPoint, loadVmPoint } from '../../src/repository/vm-points.js';
import { FsStore } from '../../src/store/index.js';
import { startAgent, startMs } from '../agent/helpers.js';
import { KiB, MiB, startEnv } from './harness.js';

t.test('VM jobs that name disks wrong are refused before any snapshot', async (t) => {
  const env = await startEnv(t, [
    {
      moref: 'vm-90',
      disks: [
        { key: 2000, size: 1 * MiB },
        { key: 2001, size: 1 * MiB },
      ],
    },
  ]);
  const { sim } = env;
  const cfg = path.join(env.dir, 'vm-90.json');
  const { disks: _d, ...common } = env.config;
  fs.writeFileSync(cfg, JSON.stringify(common));
  const ms = await startMs(t, { nodeTimeoutMs: 60_000 });
  const { agent } = await startAgent(t, ms, env.dir);
  await ms.waitFor(() => ms.nodes.get(agent.nodeId)?.connected, 10_000, 'registration');
  const store = { url: path.join(env.dir, 'store') };
  const vddk = (key: number, vm = 'vm-90') => ({ location: `vddk://127.0.0.1:${sim.port}/${vm}?disk=${key}`, options: { sourceConfig: cfg } });
  const raw = path.join(env.dir, 'raw.img');
  fs.writeFileSync(raw, Buffer.alloc(64 * KiB, 7));

  const refused = async (jobId: string, disks: Array<{ disk: string; source: { location: string } }>, message: RegExp) => {
    const before = ms.errors.length;
    ms.send(agent.nodeId, { type: 'job.start', job: { jobId, kind: 'replicate', vm: 'vm-90', store, disks, chunkSize: 64 * KiB } });
    await ms.waitFor(() => ms.errors.length > before, 10_000, `${jobId} refused`);
    t.match(ms.errors[ms.errors.length - 1].msg, { code: 'RNODE_PROTO_INVALID', message }, `${jobId}: refused`);
  };
  await refused(
    'one-id-two-keys',
    [
      { disk: 'a', source: vddk(2000) },
      { disk: 'a', source: vddk(2001) },
    ],
    /names disk a twice/,
  );
  await refused(
    'mixed',
    [
      { disk: 'a', source: vddk(2000) },
      { disk: 'r', source: { location: raw } },
    ],
    /VMware VM vm-90, and its disk r is not a vddk:\/\/ source/,
  );

  const failed = async (jobId: string, job: Record<string, unknown>, message: RegExp) => {
    ms.startJob({ jobId, kind: 'replicate', vm: 'vm-90', store, chunkSize: 64 * KiB, ...job } as never);
    t.match(await ms.waitFor(() => ms.jobs.get(jobId)?.failed, 30_000, jobId), { code: 'RNODE_BAD_SOURCE', message }, `${jobId}: failed`);
  };
  await failed(
    'two-ids-one-key',
    {
      disks: [
        { disk: 'a', source: vddk(2000) },
        { disk: 'b', source: vddk(2000) },
      ],
    },
    /disks a and b both name device key 2000 of vm-90/,
  );
  await failed('other-vm', { vm: 'vm-OTHER', disks: [{ disk: 'a', source: vddk(2000) }] }, /names VM vm-OTHER, and its vddk:\/\/ disks are of vm-90/);
  t.equal(sim.calls.filter((m) => m === 'CreateSnapshot_Task').length, 0, 'no snapshot was taken');
  t.notOk(fs.existsSync(path.join(store.url, 'vms')), 'and no VM point written');

  // A VM point an older agent wrote with one id for two devices: each device is restored to a file of its own.
  const done = ms.startJob({
    jobId: 'good',
    kind: 'replicate',
    vm: 'vm-90',
    store,
    chunkSize: 64 * KiB,
    disks: [
      { disk: 'a', source: vddk(2000) },
      { disk: 'b', source: vddk(2001) },
    ],
  });
  await ms.waitFor(() => done.completed, 60_000, 'a VM job named right');
  const fsStore = new FsStore(store.url);
  const good = await loadVmPoint(fsStore, 'vm-90', 1);
  const { format: _f, version: _v, seq: _s, committedAt: _c, mac: _m, ...rest } = good;
  const a = good.disks.find((d) => d.disk === 'a')!;
  await commitVmPoint(fsStore, { ...rest, disks: [a, { ...good.disks.find((d) => d.disk === 'b')!, disk: 'a', point: a.point }] });
  const out = path.join(env.dir, 'restore');
  const r = await recoverVm({ store: fsStore, vm: 'vm-90', point: '2', outDir: out });
  t.same(
    r.disks.map((d) => path.basename(d.out)),
    ['a.key-2000.img', 'a.key-2001.img'],
    'a disk id listed for two devices: a file per device',
  );
  const aData = fs.readFileSync(path.join(out, 'a.key-2000.img'));
  t.ok(fs.readFileSync(path.join(out, 'a.key-2001.img')).equals(aData), 'each holds the point the VM point names');
});
