// Graceful SIGTERM of a VMware replicate from the CLI: the run stops after the reads in flight, removes the vSphere
// snapshot it took, pairs PrepareForAccess with EndAccess, exits 143 with RNODE_CANCELLED, and the next run completes.
// Before, the VMware path ran outside the CLI's signal handling: SIGTERM killed the process and left the snapshot
// on the VM (and PrepareForAccess in force) until the next run cleaned up after it.
import t from 'tap';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { listVmPointSeqs } from '../../src/repository/vm-points.js';
import { CLI, CLI_NODE_FLAGS, ROOT, ensureBuilt, json, runCli, plainNode } from '../helpers/cli.js';
import { accessAndThreads, startEnv } from './harness.js';
import { THREE, expectVmRestore, fill } from './vm-helpers.js';

const FORMS = [
  { vm: 'vm-60', what: 'the whole VM (--source-config)', source: () => [] as string[], disks: 3 },
  {
    vm: 'vm-61',
    what: 'one disk (vddk://...?disk=2000)',
    source: (port: number) => ['--source', `vddk://127.0.0.1:${port}/vm-61?disk=2000`],
    disks: 1,
  },
];

for (const form of FORMS) {
  t.test(`SIGTERM mid-read of ${form.what}: snapshot removed, exit 143, the next run completes`, async (t) => {
    ensureBuilt();
    const env = await startEnv(t, [{ moref: form.vm, disks: THREE }]);
    const { sim } = env;
    fill(env, form.vm, 41);
    // 200 ms a read: the signal lands while the disks are being read.
    sim.dummyExtra = ['dummy.readLatencyUs=200000'];
    sim.writeDummyConfig();
    env.clearLog();
    const cfg = path.join(env.dir, `${form.vm}.json`);
    fs.writeFileSync(cfg, JSON.stringify({ ...env.config, vm: form.vm }));
    const store = path.join(env.dir, 'store');
    const args = ['replicate', '--source-config', cfg, ...form.source(sim.port), '--target', store, '--chunk-size', '64KiB'];
    const childEnv: NodeJS.ProcessEnv = { ...process.env, RNODE_DUMMY_VDDK_STRICT: '1' };
    delete childEnv.NODE_OPTIONS;
    const child = spawn(...plainNode([...CLI_NODE_FLAGS, CLI, ...args]), { cwd: ROOT, env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
    t.teardown(() => {
      if (child.exitCode === null) child.kill('SIGKILL');
    });
    let stderr = '';
    child.stderr.on('data', (b: Buffer) => {
      stderr += b;
    });
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    const deadline = Date.now() + 20_000;
    while (!env.calls().some((c) => c.op === 'Read') && Date.now() < deadline && child.exitCode === null) await new Promise((r) => setTimeout(r, 20));
    t.ok(
      env.calls().some((c) => c.op === 'Read'),
      'the child is reading the snapshot',
    );
    t.equal(sim.vms.get(form.vm)!.snapshots.length, 1, 'its snapshot is on the VM');
    child.kill('SIGTERM');
    t.equal(await exited, 143, `exit 143 (128 + SIGTERM): ${stderr}`);
    t.match(
      stderr,
      /rnode: RNODE_CANCELLED: replicate stopped by SIGTERM; its vSphere snapshot was removed and no VM point was made: run the same command again/,
    );
    t.notMatch(stderr, /\n\s+at /, 'no stack trace');
    t.equal(sim.vms.get(form.vm)!.snapshots.length, 0, 'no snapshot left on the VM');
    const a = accessAndThreads(env.calls());
    t.same([a.prepare, a.end, a.violations], [1, 1, 0], 'PrepareForAccess and EndAccess paired');
    t.same(await listVmPointSeqs(env.store, form.vm), [], 'no VM point');

    sim.dummyExtra = [];
    sim.writeDummyConfig();
    const again = await runCli([...args, '--json'], { env: { RNODE_DUMMY_VDDK_STRICT: '1' } });
    t.equal(again.code, 0, again.stderr);
    const r = json(again);
    t.equal(r.vmPoint, 1, 'the next run makes the VM point');
    t.equal(r.disks.length, form.disks);
    const reused = r.disks.reduce((n: number, d: { chunksDeduplicated: number }) => n + d.chunksDeduplicated, 0);
    t.ok(reused > 0, `chunks the stopped run stored are not stored again (${reused})`);
    t.same(r.staleSnapshotsRemoved, [], 'it found no snapshot to clean up');
    t.notOk(
      r.warnings.some((w: string) => /ended without EndAccess/.test(w)),
      'nor a PrepareForAccess left in force',
    );
    t.equal(sim.vms.get(form.vm)!.snapshots.length, 0);
    await expectVmRestore(t, env, form.vm, 1);
  });
}
