// Regression: with CBT off on the VM and "enableCbt": false, that every run reads all allocated areas was only a
// line on stderr, although docs/vmware.md ("When CBT cannot be trusted") says it is recorded as the point's
// rescanReason (manifest and run summary). Now the run's warnings say CBT is off, and each disk's point records
// its rescanReason in its manifest, the VM point and the result.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { replicateVmwareCommand } from '../../src/cli/vmware.js';
import { loadPoint } from '../../src/repository/points.js';
import { loadVmPoint } from '../../src/repository/vm-points.js';
import { KiB, MiB, expectRestores, startEnv } from './harness.js';
import { randomData } from './vm-helpers.js';

t.test('CBT off and enableCbt false: a warning and every point rescanned with its rescanReason recorded', async (t) => {
  const env = await startEnv(t, [{ moref: 'vm-1', cbt: false, disks: [{ key: 2000, size: 4 * MiB }] }]);
  env.sim.writeToVmDisk('vm-1', 2000, MiB, randomData(100 * KiB, 1));
  const cfg = path.join(env.dir, 'vm.json');
  fs.writeFileSync(cfg, JSON.stringify({ ...env.config, enableCbt: false }));
  const out: string[] = [];
  const io = { out: (l: string) => out.push(l), err: () => {} };
  const args = { 'source-config': cfg, target: env.store.location, 'chunk-size': '64KiB' };

  t.equal(await replicateVmwareCommand({ ...args, json: true }, io), 0);
  const r1 = JSON.parse(out.pop()!);
  t.match(r1.warnings, [/CBT is off for VM vm-1 and enableCbt is false: every run reads all allocated areas/]);
  t.equal(r1.disks[0].full, true, 'the first point is full');

  env.sim.writeToVmDisk('vm-1', 2000, 3 * MiB, randomData(4096, 2));
  t.equal(await replicateVmwareCommand({ ...args, json: true }, io), 0);
  const r2 = JSON.parse(out.pop()!);
  t.equal(r2.disks[0].full, false);
  t.equal(r2.disks[0].chunksChanged, 1, 'compared by content');
  t.match(r2.warnings, [/CBT is off for VM vm-1/]);
  t.match(r2.disks[0].rescanReason, /no change marker/, 'the result says why all allocated areas were read');
  t.equal((await loadPoint(env.store, 'vm-1-disk-2000', 2)).source.rescanReason, r2.disks[0].rescanReason, 'so does the manifest');
  t.equal((await loadVmPoint(env.store, 'vm-1', 2)).disks[0].rescanReason, r2.disks[0].rescanReason, 'and the VM point');

  env.sim.writeToVmDisk('vm-1', 2000, 0, randomData(4096, 3));
  t.equal(await replicateVmwareCommand(args, io), 0);
  t.match(out.join('\n'), /warning: CBT is off for VM vm-1/);
  t.match(out.join('\n'), /point 3 of disk vm-1-disk-2000: incremental on point 2 \(read all allocated areas: /);
  t.notOk(env.sim.calls.includes('ReconfigVM_Task'), 'CBT was not turned on');
  await expectRestores(t, env, [r1, r2]);
});
