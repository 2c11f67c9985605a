// The VMware source end to end against the vSphere simulator and the stand-in VDDK: first full sync of
// allocated areas, incrementals that read only CBT's changed extents, paging, CBT reset, a VDDK failure
// mid-read, bad credentials, a VM with several disks, and byte-exact restores of every point.
import t from 'tap';
import { createCipheriv, createHash } from 'node:crypto';
import fs from 'node:fs';
import { listPointSeqs, loadPoint } from '../../src/repository/points.js';
import { recover } from '../../src/jobs/restore.js';
import { vmDiskId } from '../../src/source/vmware/index.js';
import { KiB, MiB, PASSWORD, expectRestores, startEnv } from './harness.js';

const CHUNK = 64 * KiB;

function randomData(length: number, seed: number): Buffer {
  const key = createHash('sha256').update(`rnode-vmware-${seed}`).digest().subarray(0, 16);
  return createCipheriv('aes-128-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(length));
}

/** Distinct 64 KiB chunks touched by writes. */
function chunksTouched(writes: Array<[number, number]>): number {
  const s = new Set<number>();
  for (const [off, len] of writes) for (let c = Math.floor(off / CHUNK); c <= Math.floor((off + len - 1) / CHUNK); c++) s.add(c);
  return s.size;
}

t.test('first full sync reads allocated areas only; incrementals read only the changed extents; every point restores', async (t) => {
  const size = 32 * MiB;
  const env = await startEnv(t, [{ moref: 'vm-42', disks: [{ key: 2000, size }] }]);
  const { sim } = env;
  // Initial data: a few areas, one straddling a chunk boundary; the rest of the disk is never written.
  const initial: Array<[number, number]> = [
    [0, 256 * KiB],
    [5 * MiB + 4096, 300 * KiB],
    [17 * MiB - 8192, 16 * KiB],
    [size - 64 * KiB, 64 * KiB],
  ];
  initial.forEach(([off, len], i) => sim.writeToVmDisk('vm-42', 2000, off, randomData(len, i)));
  const allocated = initial.reduce((n, [, len]) => n + len, 0);

  const r1 = await env.run();
  const d1 = r1.disks[0];
  t.equal(d1.disk, 'vm-42-disk-2000');
  t.equal(d1.full, true, 'the first point is full');
  t.equal(d1.rescanReason, undefined);
  t.ok(
    d1.bytesRead >= allocated && d1.bytesRead <= chunksTouched(initial) * CHUNK,
    `first sync read ${d1.bytesRead} bytes for ${allocated} allocated bytes of a ${size} byte disk`,
  );
  t.equal(env.vddkBytes(), d1.bytesRead, 'VDDK delivered exactly the bytes the pipeline read');
  t.ok(d1.changeId && /\/1$/.test(d1.changeId), `the point carries the snapshot disk's changeId (${d1.changeId})`);
  t.equal((await loadPoint(env.store, d1.disk, d1.point)).source.marker, d1.changeId, 'the manifest saves the changeId as the marker');
  t.equal(sim.vms.get('vm-42')!.snapshots.length, 0, 'the snapshot is removed after the run');
  const ops = env.calls().map((c) => c.op);
  t.same(
    [ops[0], ops.includes('PrepareForAccess'), ops.includes('EndAccess')],
    ['InitEx', true, true],
    'InitEx, PrepareForAccess, EndAccess were called',
  );
  const connect = env.calls().find((c) => c.op === 'ConnectEx')!;
  t.equal(connect.fields.transports, 'nbdssl:nbd');
  t.equal(connect.fields.readOnly, '1', 'connected read-only');
  t.match(connect.fields.snapshot, /^snapshot-/, 'connected to the snapshot');

  // ~1% scattered writes.
  const writes: Array<[number, number]> = [];
  for (let i = 0; i < 40; i++) writes.push([((i * 797 + 13) % 500) * CHUNK + (i % 7) * 4096, 4096]);
  writes.forEach(([off, len], i) => sim.writeToVmDisk('vm-42', 2000, off, randomData(len, 100 + i)));
  env.clearLog();
  const r2 = await env.run();
  const d2 = r2.disks[0];
  t.equal(d2.full, false, 'the second point is incremental');
  t.equal(d2.rescanReason, undefined, 'CBT was used');
  t.equal(d2.bytesRead, chunksTouched(writes) * CHUNK, `read only the ${chunksTouched(writes)} changed chunks (${d2.bytesRead} bytes)`);
  t.equal(env.vddkBytes(), d2.bytesRead, 'VDDK delivered only those bytes');
  t.ok(d2.bytesRead < size / 10, 'far less than the disk');

  // Nothing changed: nothing to read.
  env.clearLog();
  const r3 = await env.run();
  t.equal(r3.disks[0].bytesRead, 0, 'an idle VM costs no reads');
  t.equal(r3.disks[0].chunksChanged, 0);

  await expectRestores(t, env, [r1, r2, r3]);
});

t.test('paging: QueryChangedDiskAreas answers of at most 500 extents, across thousands of extents', async (t) => {
  const size = 32 * MiB;
  const env = await startEnv(t, [{ moref: 'vm-7', disks: [{ key: 2000, size }] }], { maxExtentsPerAnswer: 500, cbtBlock: 4096 });
  const { sim } = env;
  for (let i = 0; i < 3000; i++) sim.writeToVmDisk('vm-7', 2000, i * 8 * KiB + 1024, randomData(512, i));
  const before = sim.calls.length;
  const r1 = await env.run();
  const pages1 = sim.calls.slice(before).filter((m) => m === 'QueryChangedDiskAreas').length;
  t.ok(pages1 >= 6, `the first sync paged through 3000 allocated extents (${pages1} answers)`);
  t.equal(r1.disks[0].bytesRead, Math.ceil((2999 * 8 * KiB + 4096) / CHUNK) * CHUNK, 'every chunk with data was read');

  // 1800 scattered changes, every other 8 KiB slot: 1800 CBT extents, merged into the chunks that hold them.
  const writes: Array<[number, number]> = [];
  for (let i = 0; i < 1800; i++) writes.push([(i * 2 + 1) * 8 * KiB + 100, 200]);
  writes.forEach(([off, len], i) => sim.writeToVmDisk('vm-7', 2000, off, randomData(len, 5000 + i)));
  const mark = sim.calls.length;
  const r2 = await env.run();
  const pages2 = sim.calls.slice(mark).filter((m) => m === 'QueryChangedDiskAreas').length;
  t.equal(pages2, 4, '1800 changed extents came in 4 answers of at most 500');
  t.equal(r2.disks[0].rescanReason, undefined);
  t.equal(r2.disks[0].bytesRead, chunksTouched(writes) * CHUNK, 'read exactly the chunks the changed extents touch');
  await expectRestores(t, env, [r1, r2]);
});

t.test('CBT reset or a rejected changeId: a full resync of allocated areas, recorded, never silent', async (t) => {
  const size = 16 * MiB;
  const env = await startEnv(t, [{ moref: 'vm-9', disks: [{ key: 2000, size }] }]);
  const { sim } = env;
  sim.writeToVmDisk('vm-9', 2000, 1 * MiB, randomData(512 * KiB, 1));
  sim.writeToVmDisk('vm-9', 2000, 9 * MiB, randomData(256 * KiB, 2));
  const r1 = await env.run();

  sim.resetCbt('vm-9');
  sim.writeToVmDisk('vm-9', 2000, 12 * MiB, randomData(4096, 3));
  const log: string[] = [];
  const r2 = await env.run({ log });
  const d2 = r2.disks[0];
  t.equal(d2.full, false, 'the table is still a delta on the previous point');
  t.match(d2.rescanReason, /CBT of disk 2000 was reset/, `the reason is recorded: ${d2.rescanReason}`);
  t.equal(d2.bytesRead, 512 * KiB + 256 * KiB + CHUNK, 'read all allocated areas, not the whole disk');
  t.match((await loadPoint(env.store, d2.disk, d2.point)).source.rescanReason, /reset/, 'and saved in the manifest');
  t.ok(
    log.some((l) => /read all allocated areas/.test(l)),
    'and logged',
  );

  // vSphere itself rejects a changeId (FileFault on the ctk file): the same fallback.
  sim.writeToVmDisk('vm-9', 2000, 3 * MiB, randomData(4096, 4));
  sim.injectFault('QueryChangedDiskAreas', 'FileFault', 'Error caused by file /vmfs/volumes/datastore1/vm-9/vm-9-ctk.vmdk');
  const r3 = await env.run();
  t.match(r3.disks[0].rescanReason, /FileFault/, `a FileFault forces a rescan: ${r3.disks[0].rescanReason}`);

  // And the next run is incremental again, against the new epoch.
  sim.writeToVmDisk('vm-9', 2000, 5 * MiB, randomData(4096, 5));
  const r4 = await env.run();
  t.equal(r4.disks[0].rescanReason, undefined);
  t.equal(r4.disks[0].bytesRead, CHUNK, 'incremental after the resync');
  await expectRestores(t, env, [r1, r2, r3, r4]);
});

// A clone can carry its original's CBT history (the same changeId epoch): the epoch alone does not say whose disk a
// changeId is. Two VMs fed into one disk id (a job's disk ids mixed up) gave the first VM's data with the second's
// changes since the changeId's sequence number, which here are none.
t.test("another VM's changeId of the same CBT epoch is never trusted: a rescan, exact", async (t) => {
  const size = 8 * MiB;
  const env = await startEnv(t, [
    { moref: 'vm-42', disks: [{ key: 2000, size }] },
    { moref: 'vm-43', disks: [{ key: 2000, size }] },
  ]);
  const { sim } = env;
  sim.disk('vm-43', 2000).cbt = structuredClone(sim.disk('vm-42', 2000).cbt);
  sim.writeToVmDisk('vm-42', 2000, 0, randomData(size, 1));
  sim.writeToVmDisk('vm-43', 2000, 1 * MiB, randomData(64 * KiB, 2));
  const shared = { diskId: () => 'shared' };
  const r1 = await env.run(shared);
  const r2 = await env.run({ ...shared, config: { vm: 'vm-43' } });
  const d2 = r2.disks[0];
  t.equal(d2.changeId?.split('/')[0], r1.disks[0].changeId?.split('/')[0], 'both disks report the same CBT epoch');
  t.match(d2.rescanReason, /previous point was read from vddk:\/\/127\.0\.0\.1\/vm-42\/disk-2000@/, `a rescan, and why: ${d2.rescanReason}`);
  t.equal(d2.bytesRead, 64 * KiB, "every allocated chunk of vm-43's disk was read");
  for (const [r, vm] of [
    [r1, 'vm-42'],
    [r2, 'vm-43'],
  ] as const) {
    const want = sim.history.find((h) => h.snapshot === r.snapshot)!.disks.get(2000)!;
    const out = `${env.dir}/restore-${r.disks[0].point}.img`;
    await recover({ store: env.store, disk: 'shared', point: String(r.disks[0].point), out });
    t.equal(
      createHash('sha256').update(fs.readFileSync(out)).digest('hex'),
      want.sha256,
      `point ${r.disks[0].point} restores ${vm}'s disk byte-exact`,
    );
  }
});

t.test('a VDDK error mid-read: clear error, snapshot removed, no point committed, the next run succeeds', async (t) => {
  const env = await startEnv(t, [{ moref: 'vm-5', disks: [{ key: 2000, size: 8 * MiB }] }]);
  const { sim } = env;
  sim.writeToVmDisk('vm-5', 2000, 0, randomData(4 * MiB, 1));
  const r1 = await env.run();
  sim.writeToVmDisk('vm-5', 2000, 1 * MiB, randomData(2 * MiB, 2));

  sim.dummyExtra = ['dummy.failRead=5:13', 'dummy.delayRead=4:50'];
  sim.writeDummyConfig();
  const err = await env.run().then(
    () => undefined,
    (e: unknown) => e as Error & { code: string; vddkText: string; details: Record<string, unknown> },
  );
  t.ok(err, 'the run fails');
  t.equal(err?.code, 'RNODE_VDDK_ERROR', 'with a stable code');
  t.match(
    err?.message,
    /reading disk 2000 of VM vm-5 through VDDK \(nbdssl\) failed at offset \d+: dummy-vddk: injected failure of Read #5/,
    "naming the disk, the offset and VDDK's own text",
  );
  t.match(err?.details.snapshot, /^snapshot-/, 'and the snapshot it was reading');
  t.equal(sim.vms.get('vm-5')!.snapshots.length, 0, 'the snapshot was removed anyway');
  t.same(await listPointSeqs(env.store, vmDiskId('vm-5', 2000)), [1], 'no point was committed');

  sim.dummyExtra = [];
  sim.writeDummyConfig();
  const r2 = await env.run();
  t.equal(r2.disks[0].point, 2, 'the next run commits point 2');
  t.equal(r2.disks[0].resumed, false, 'a new snapshot does not continue the failed one');
  t.equal(r2.disks[0].bytesRead, 2 * MiB, 'reading only what changed since point 1');
  await expectRestores(t, env, [r1, r2]);
});

t.test('wrong thumbprint, wrong password, unknown VM: clear errors, no snapshot, no password anywhere', async (t) => {
  const env = await startEnv(t, [{ moref: 'vm-3', disks: [{ key: 2000, size: 4 * MiB }] }]);
  const { sim } = env;
  const wrongTp = sim.thumbprint.replace(/^../, sim.thumbprint.startsWith('00') ? '11' : '00');
  const e1 = await env.run({ config: { thumbprint: wrongTp } }).then(
    () => undefined,
    (e: Error & { code: string }) => e,
  );
  t.equal(e1?.code, 'RNODE_VSPHERE_TLS', 'a thumbprint mismatch is refused');
  t.match(e1?.message, /has thumbprint .* not the .* configured/);
  t.equal(sim.calls.length, 0, 'nothing was sent to a server with the wrong certificate');

  const bad = `${env.dir}/bad-password`;
  fs.writeFileSync(bad, 'not-the-password\n', { mode: 0o600 });
  const e2 = await env.run({ config: { passwordFile: bad } }).then(
    () => undefined,
    (e: Error & { code: string }) => e,
  );
  t.equal(e2?.code, 'RNODE_VSPHERE_LOGIN', 'a wrong password is a login error');
  t.match(e2?.message, /InvalidLogin.*check the user name and the password file/);
  t.notOk(e2?.message.includes('not-the-password'), 'the password is not in the message');

  const e3 = await env.run({ config: { vm: 'vm-404' } }).then(
    () => undefined,
    (e: Error & { code: string }) => e,
  );
  t.equal(e3?.code, 'RNODE_VSPHERE_NOT_FOUND');
  t.equal(sim.history.length, 0, 'no snapshot was ever taken');

  await env.run();
  const log = fs.readFileSync(env.dummyLog, 'utf8');
  t.notOk(log.includes(PASSWORD), 'the password never reaches the VDDK call log');
  t.match(log, /password=<set>/);
});

t.test('a VM with three disks: one snapshot per run, one point per disk, CBT turned on by policy', async (t) => {
  const env = await startEnv(t, [
    {
      moref: 'vm-77',
      cbt: false,
      disks: [
        { key: 2000, size: 8 * MiB },
        { key: 2001, size: 4 * MiB },
        { key: 2016, size: 6 * MiB + 512 },
      ],
    },
  ]);
  const { sim } = env;
  sim.writeToVmDisk('vm-77', 2000, 0, randomData(1 * MiB, 1));
  sim.writeToVmDisk('vm-77', 2001, 2 * MiB, randomData(64 * KiB, 2));
  sim.writeToVmDisk('vm-77', 2016, 6 * MiB - 4096, randomData(4096 + 512, 3));
  const log: string[] = [];
  const r1 = await env.run({ log });
  t.equal(r1.cbtEnabledNow, true, 'CBT was off and the run turned it on');
  t.ok(sim.calls.includes('ReconfigVM_Task'));
  t.ok(log.some((l) => /turned it on/.test(l)));
  t.same(
    r1.disks.map((d) => d.disk),
    ['vm-77-disk-2000', 'vm-77-disk-2001', 'vm-77-disk-2016'],
  );
  t.equal(sim.calls.filter((m) => m === 'CreateSnapshot_Task').length, 1, 'one snapshot for all disks');
  t.ok(
    r1.disks.every((d) => d.changeId),
    'the snapshot taken after enabling CBT carries change ids',
  );
  t.equal(r1.disks[2].diskSize, 6 * MiB + 512, 'a disk whose size is not a multiple of the chunk size');

  sim.writeToVmDisk('vm-77', 2001, 100 * KiB, randomData(10, 4));
  sim.writeToVmDisk('vm-77', 2016, 6 * MiB, randomData(512, 5));
  const r2 = await env.run();
  t.equal(sim.calls.filter((m) => m === 'CreateSnapshot_Task').length, 2);
  t.same(
    r2.disks.map((d) => [d.deviceKey, d.full, d.bytesRead]),
    [
      [2000, false, 0],
      [2001, false, CHUNK],
      [2016, false, 512],
    ],
    'each disk reads only its own changes (the last chunk of 2016 is 512 bytes)',
  );

  const only = await env.run({ config: { disks: [2001] } });
  t.same(
    only.disks.map((d) => d.deviceKey),
    [2001],
    'a subset of disks can be chosen',
  );
  await expectRestores(t, env, [r1, r2, only]);
});

t.test('CBT off and not allowed on: every run reads allocated blocks (QueryAllocatedBlocks), restores still exact', async (t) => {
  const env = await startEnv(t, [{ moref: 'vm-8', cbt: false, disks: [{ key: 2000, size: 8 * MiB }] }]);
  const { sim } = env;
  sim.writeToVmDisk('vm-8', 2000, 3 * MiB, randomData(100 * KiB, 1));
  const log: string[] = [];
  const r1 = await env.run({ config: { enableCbt: false }, log });
  t.equal(r1.cbtEnabledNow, false);
  t.notOk(sim.calls.includes('ReconfigVM_Task'), 'the policy forbids turning CBT on');
  t.equal(r1.disks[0].changeId, undefined);
  t.ok(
    env.calls().some((c) => c.op === 'QueryAllocatedBlocks'),
    'allocation came from VDDK',
  );
  t.equal(r1.disks[0].bytesRead, 2 * CHUNK, 'only the two allocated chunks were read');
  sim.writeToVmDisk('vm-8', 2000, 7 * MiB, randomData(4096, 2));
  const r2 = await env.run({ config: { enableCbt: false } });
  t.equal(r2.disks[0].full, false);
  t.equal(r2.disks[0].chunksChanged, 1, 'compared by content, one chunk changed');
  await expectRestores(t, env, [r1, r2]);
});
