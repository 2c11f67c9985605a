// The reference Management Server spread a VM policy's disks over its nodes as it spreads any disks: each node's VM
// points held only its own disks of the VM, and one node's run removed the snapshot the other's was reading. A VM
// policy's disks are now assigned to one node together, also when that node dies; other policies still spread.
import t from 'tap';
import { startAgent, startMs, tmpDir } from './helpers.js';

t.test("a VM policy's disks go to one node, and move together", async (t) => {
  const dir = tmpDir(t, 'agent-vm-nodes');
  const ms = await startMs(t, { heartbeatMs: 100, nodeTimeoutMs: 1000 });
  const a = await startAgent(t, ms, dir, { name: 'na' });
  const b = await startAgent(t, ms, dir, { name: 'nb' });
  await ms.waitFor(() => ms.liveNodes().length === 2, 10_000, 'two nodes');
  const store = { url: `${dir}/store` };
  // Never run here (a day between runs, and the first run is refused: no vCenter answers at port 1).
  const vddk = (key: number) => ({ location: `vddk://127.0.0.1:1/vm-9?disk=${key}` });
  ms.setPolicy({
    group: 'g-vm',
    revision: 1,
    rpoSeconds: 86_400,
    intervalSeconds: 86_400,
    vm: 'vm-9',
    store,
    disks: [2000, 2001, 2002, 2003].map((k) => ({ disk: `vm9-${k}`, source: vddk(k) })),
  });
  ms.setPolicy({
    group: 'g-raw',
    revision: 1,
    rpoSeconds: 86_400,
    intervalSeconds: 86_400,
    store,
    disks: [0, 1, 2, 3].map((i) => ({ disk: `raw-${i}`, source: { location: `${dir}/raw-${i}.img` } })),
  });
  const vmDisks = (id: string) => ms.sliceFor(id).find((p) => p.group === 'g-vm')?.disks.length ?? 0;
  const rawDisks = (id: string) => ms.sliceFor(id).find((p) => p.group === 'g-raw')?.disks.length ?? 0;
  t.same([vmDisks(a.agent.nodeId), vmDisks(b.agent.nodeId)].sort(), [0, 4], 'the VM on one node');
  t.same([rawDisks(a.agent.nodeId), rawDisks(b.agent.nodeId)], [4 - vmDisks(a.agent.nodeId), 4 - vmDisks(b.agent.nodeId)], 'other disks spread');
  const owner = vmDisks(a.agent.nodeId) === 4 ? a : b;
  const other = owner === a ? b : a;
  await owner.agent.stop();
  await ms.waitFor(() => vmDisks(other.agent.nodeId) > 0, 10_000, 'the VM owner declared dead, its disks reassigned');
  t.equal(vmDisks(other.agent.nodeId), 4, 'the whole VM moved to the survivor');
});
