// VM points of encrypted disks. They were plain JSON that anyone with the bucket could edit (e.g. name another, older
// disk point, so `recover --vm` restored a VM state that never existed, or widen what prune deletes); then plain JSON
// with a MAC, which anyone with the bucket could still read: disk ids, VMDK paths, the VM's whole config. Now a VM
// point of encrypted disks is sealed under their key, bound to the VM and its number: the bucket shows its key id
// only; an edited, replayed or moved one is METADATA_FORGED before anything is restored. (A MAC'd one an earlier
// rnode wrote is read as before: src/repository/vm-points.ts.)
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { EncryptionKey } from '../../src/crypto/keys.js';
import { vmLayout } from '../../src/repository/names.js';
import { recoverVm } from '../../src/jobs/vm.js';
import { listPartialVmRuns, loadVmPoint } from '../../src/repository/vm-points.js';
import { runCli } from '../helpers/cli.js';
import { startEnv } from './harness.js';
import { THREE, fill } from './vm-helpers.js';

t.test('an encrypted VM point is sealed: nothing it names is readable, and edits, replays and moves are refused', async (t) => {
  const env = await startEnv(t, [{ moref: 'vm-60', disks: THREE.slice(0, 2) }]);
  const master = crypto.randomBytes(32);
  const key = EncryptionKey.fromBytes(master);
  const keyFile = path.join(env.dir, 'key');
  fs.writeFileSync(keyFile, master.toString('hex'), { mode: 0o600 });
  fill(env, 'vm-60', 1);
  const diskId = (k: number) => `payroll-db-data-${k}`;
  await env.run({ encryption: key, diskId });
  env.sim.writeToVmDisk('vm-60', 2000, 0, crypto.randomBytes(64 * 1024));
  await env.run({ encryption: key, diskId });
  // A run that fails for one disk: its record of the other disk's point names disk ids too, and is sealed alike.
  env.sim.writeToVmDisk('vm-60', 2000, 0, crypto.randomBytes(4096));
  env.sim.writeToVmDisk('vm-60', 2001, 0, crypto.randomBytes(4096));
  env.sim.dummyExtra = ['dummy.failReadPath=vm-60_1:13'];
  env.sim.writeDummyConfig();
  await t.rejects(env.run({ encryption: key, diskId, diskParallelism: 2 }), { code: 'RNODE_VDDK_ERROR' }, 'a run fails for one disk');
  env.sim.dummyExtra = [];
  env.sim.writeDummyConfig();
  t.same(await listPartialVmRuns(env.store, 'vm-60'), [], 'its partial record is sealed: not listed without the key');
  t.match(await listPartialVmRuns(env.store, 'vm-60', key), [{ committed: [{ disk: 'payroll-db-data-2000' }] }], 'with the key it opens');

  const k2 = vmLayout.point('vm-60', 2);
  const original = await env.store.get(k2);
  const stored = JSON.parse(original.toString('utf8'));
  t.same(Object.keys(stored).sort(), ['format', 'keyId', 'sealed', 'seq', 'version', 'vm'], 'the stored VM point shows its number and key id only');
  t.equal(stored.keyId, key.keyId);
  const everything = fs
    .readdirSync(path.join(env.dir, 'store'), { recursive: true })
    .map(String)
    .filter((f) => fs.statSync(path.join(env.dir, 'store', f)).isFile())
    .map((f) => fs.readFileSync(path.join(env.dir, 'store', f)).toString('latin1'))
    .join('\n');
  t.notOk(everything.includes('payroll-db-data'), 'no object in the store names a disk id');
  t.notOk(everything.includes('.vmdk'), 'nor a VMDK path');

  const p2 = await loadVmPoint(env.store, 'vm-60', 2, key);
  t.match(
    p2,
    { vm: 'vm-60', seq: 2, disks: [{ disk: 'payroll-db-data-2000' }, { disk: 'payroll-db-data-2001' }] },
    'with the key, the VM point opens',
  );
  await t.rejects(loadVmPoint(env.store, 'vm-60', 2), { code: 'RNODE_KEY_REQUIRED', message: /key id/ }, 'without it: the key is required');
  await t.rejects(
    loadVmPoint(env.store, 'vm-60', 2, EncryptionKey.fromBytes(crypto.randomBytes(32))),
    { code: 'RNODE_KEY_MISMATCH' },
    'with another key: the wrong key',
  );
  const out = path.join(env.dir, 'restore');
  const ok = await recoverVm({ store: env.store, vm: 'vm-60', point: '2', outDir: out, encryption: key });
  t.equal(ok.disks.length, 2, 'the genuine VM point restores');
  fs.rmSync(out, { recursive: true });

  // Edited (a byte of the sealed body), replayed under another number, moved to another VM.
  const sealed = Buffer.from(stored.sealed, 'base64');
  sealed[sealed.length - 20] ^= 1;
  await env.store.put(k2, Buffer.from(JSON.stringify({ ...stored, sealed: sealed.toString('base64') })));
  await t.rejects(
    recoverVm({ store: env.store, vm: 'vm-60', point: '2', outDir: out, encryption: key }),
    { code: 'RNODE_METADATA_FORGED' },
    'an edited VM point is refused',
  );
  t.notOk(fs.existsSync(out), 'nothing was restored');
  const p1 = JSON.parse((await env.store.get(vmLayout.point('vm-60', 1))).toString('utf8'));
  await env.store.put(k2, Buffer.from(JSON.stringify({ ...p1, seq: 2 })));
  await t.rejects(loadVmPoint(env.store, 'vm-60', 2, key), { code: 'RNODE_METADATA_FORGED' }, 'VM point 1 replayed as point 2 is refused');
  await env.store.put(vmLayout.point('vm-61', 2), Buffer.from(JSON.stringify({ ...stored, vm: 'vm-61' })));
  await t.rejects(loadVmPoint(env.store, 'vm-61', 2, key), { code: 'RNODE_METADATA_FORGED' }, 'moved to another VM: refused');
  // A plain VM point put in its place (no seal, no MAC) while its disks are encrypted: forged.
  await env.store.put(k2, Buffer.from(JSON.stringify(p2)));
  await t.rejects(
    loadVmPoint(env.store, 'vm-60', 2, key),
    { code: 'RNODE_METADATA_FORGED', message: /not authenticated/ },
    'an unsealed one is refused',
  );
  await env.store.put(k2, original);
  t.ok(await loadVmPoint(env.store, 'vm-60', 2, key), 'the original opens again');

  // points --vm takes the key (it listed encrypted VM points without one only while they were readable).
  const storeDir = path.join(env.dir, 'store');
  const without = await runCli(['points', '--store', storeDir, '--vm', 'vm-60']);
  t.equal(without.code, 2, 'points --vm of an encrypted VM without the key: exit 2');
  t.match(without.stderr, /RNODE_KEY_REQUIRED/);
  const listed = await runCli(['points', '--store', storeDir, '--vm', 'vm-60', '--encryption-key-file', keyFile, '--json']);
  t.equal(listed.code, 0, `points --vm with the key: ${listed.stderr}`);
  t.same(
    JSON.parse(listed.stdout).vmPoints.map((p: { vmPoint: number }) => p.vmPoint),
    [1, 2],
    'lists both',
  );
});
