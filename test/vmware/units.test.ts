// The pieces of the VMware source on their own: the SOAP XML reader/writer, source settings (URL and file,
// no passwords in either), the VDDK binding's edges (load failure, split reads, allocated blocks, closed
// handles), vddk:// through openSource, and the CLI entry point the replicate command calls.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { openSource } from '../../src/source/index.js';
import { loadVmwareConfig, parseVddkUrl } from '../../src/source/vmware/index.js';
import { connectVddk, initVddk, VddkError } from '../../src/source/vmware/index.js';
import { el, escapeText, parseXml, Raw, textOf, xmlToJson, xsiType, XmlError } from '../../src/source/vmware/vsphere/xml.js';
import { defaultDiskParallelism, unsupportedReason } from '../../src/jobs/replicate-vm.js';
import { execFileSync } from 'node:child_process';
import { isVmwareSource, replicateVmwareCommand } from '../../src/cli/vmware.js';
import { codecWorkers } from '../../src/pipeline/codec-workers.js';
import { buildDummyVddk, readDummyLog } from './build-dummy.js';
import { KiB, MiB, PASSWORD, startEnv } from './harness.js';

t.test('xml: parses SOAP shapes, entities, CDATA, namespaces; refuses DTDs and malformed input', async (t) => {
  const doc = parseXml(
    `<?xml version="1.0"?><!-- c --><s:Envelope xmlns:s="x" xmlns:xsi="i"><s:Body>` +
      `<R><returnval xsi:type="ArrayOfX" a='1 &amp; 2'>A &lt;b&gt; &#233;&#x41;<![CDATA[<raw>]]></returnval><e/></R></s:Body></s:Envelope>`,
  );
  t.equal(doc.local, 'Envelope');
  const rv = doc.children[0].children[0].children[0];
  t.equal(rv.text, 'A <b> éA<raw>');
  t.equal(rv.attrs.a, '1 & 2');
  t.equal(xsiType(rv), 'ArrayOfX');
  t.equal(textOf(doc, 'Body', 'R', 'e'), '');
  for (const bad of [
    '<a>',
    '<a></b>',
    '<a x="1" x="2"/>',
    '<!DOCTYPE a [<!ENTITY e "x">]><a>&e;</a>',
    '<a>&unknown;</a>',
    '<a/><b/>',
    'text',
    '<a b=c/>',
  ]) {
    t.throws(() => parseXml(bad), XmlError, `refuses ${JSON.stringify(bad)}`);
  }
  const tricky = 'p&ss<word>"\'';
  const x = el('password', tricky, { note: tricky }).xml;
  t.notOk(x.slice('<password'.length).includes('<word>'), 'markup in values is escaped');
  const back = parseXml(x);
  t.equal(back.text, tricky, 'text round-trips');
  t.equal(back.attrs.note, tricky, 'attributes round-trip');
  t.equal(escapeText('a\u0001b'), 'ab', 'control characters XML cannot carry are dropped');
  t.equal(el('x', [el('y', 1), new Raw('<z/>'), false]).xml, '<x><y>1</y><z/>false</x>');
  t.throws(() => el('bad name', 'v'));
});

t.test('settings: vddk:// URLs and config files, validated, never with a password', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rnode-vmcfg-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const tp = 'aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd';
  const c = parseVddkUrl(
    `vddk://backup%40vsphere.local@vc.example.com:8443/vm-42?disk=2000&transports=hotadd:nbdssl&thumbprint=${tp}&passwordFile=pw&libdir=/opt/vddk&quiesce=true`,
  );
  t.same(
    [c.host, c.port, c.user, c.vm, c.disks, c.transports, c.quiesce],
    ['vc.example.com', 8443, 'backup@vsphere.local', 'vm-42', [2000], ['hotadd', 'nbdssl'], true],
  );
  t.equal(c.thumbprint, tp.toUpperCase(), 'thumbprints are normalized');
  t.throws(() => parseVddkUrl('vddk://root:secret@vc/vm-1?thumbprint=' + tp), { code: 'RNODE_BAD_SOURCE', message: /must not contain a password/ });
  t.throws(() => parseVddkUrl('vddk://vc/vm-1?user=u&passwordFile=p&libdir=l'), { message: /thumbprint/ }, 'a thumbprint or CA is required');
  t.throws(() => parseVddkUrl(`vddk://vc/vm-1?user=u&passwordFile=p&libdir=l&thumbprint=${tp}&transports=warp`), {
    message: /transport mode "warp"/,
  });
  t.throws(() => parseVddkUrl(`vddk://vc/vm-1?user=u&passwordFile=p&libdir=l&thumbprint=${tp}&password=x`), {
    message: /unknown vddk:\/\/ URL parameter "password"/,
  });
  t.throws(() => parseVddkUrl(`vddk://vc/?user=u`), { message: /VM MoRef/ });

  const file = path.join(dir, 'vm.json');
  fs.writeFileSync(
    file,
    JSON.stringify({ host: 'vc', user: 'u', passwordFile: 'secret/pw', thumbprint: tp, vm: 'vm-7', disks: [2000, 2001], libdir: '../vddk' }),
  );
  const fc = loadVmwareConfig(file);
  t.equal(fc.passwordFile, path.join(dir, 'secret', 'pw'), 'paths in the file are relative to the file');
  t.same(fc.disks, [2000, 2001]);
  // Saved with a byte order mark (Windows editors): read alike. It was "not valid JSON".
  fs.writeFileSync(file, '\uFEFF' + fs.readFileSync(file, 'utf8'));
  t.same(loadVmwareConfig(file), fc, 'a UTF-8 byte order mark is skipped');
  fs.writeFileSync(file, JSON.stringify({ host: 'vc', user: 'u', password: 'hunter2', thumbprint: tp, vm: 'vm-7', libdir: 'l' }));
  t.throws(() => loadVmwareConfig(file), { message: /must not contain a password/ });
  t.notOk(messageOf(() => loadVmwareConfig(file)).includes('hunter2'), 'and does not echo it');
  fs.writeFileSync(file, '{nope');
  t.throws(() => loadVmwareConfig(file), { code: 'RNODE_BAD_SOURCE', message: /not valid JSON \(line 1, column 2\)/ });
  // A password or key file named where the config goes: JSON.parse's own message quoted its first characters, and
  // the error went to stderr, the agent's log and the Management Server.
  for (const secret of ['Hunter2-vc-pass\n', 'Qeo3wpLnrgQeo3wpLnrgQeo3wpLnrgQeo3wpLnrg123=\n', '{"user": "u",\n "password": Hunter2}']) {
    fs.writeFileSync(file, secret);
    const message = messageOf(() => loadVmwareConfig(file));
    t.match(message, /is not valid JSON.*; check --source-config$/, 'refused as no JSON');
    t.notOk(/Hunter|Qeo3/.test(message), `and quotes none of it: ${message}`);
  }
  t.ok(isVmwareSource({ source: 'vddk://vc/vm-1' }) && isVmwareSource({ 'source-config': 'x.json' }) && !isVmwareSource({ source: '/dev/sda' }));
});

t.test('VDDK binding: load failures, split reads, allocated blocks, closed handles, argument checks', async (t) => {
  // A library without the VDDK entry points is refused before anything is initialized.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rnode-vddkbind-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  await t.rejects(initVddk({ libdir: path.join(dir, 'nowhere') }), { code: 'RNODE_VDDK_LOAD', message: /dlopen/ });
  const libc = ['/lib/x86_64-linux-gnu/libc.so.6', '/usr/lib/x86_64-linux-gnu/libc.so.6'].find((p) => fs.existsSync(p));
  if (libc) await t.rejects(initVddk({ libdir: dir, libraryPath: libc }), { code: 'RNODE_VDDK_LOAD', message: /VixDiskLib_InitEx is missing/ });

  // The environment shared with the other tests of this process: its stand-in library and config.
  const env = await startEnv(t, [{ moref: 'vm-1', disks: [{ key: 2000, size: 4 * MiB }] }]);
  env.sim.writeToVmDisk('vm-1', 2000, 1 * MiB, Buffer.alloc(100 * KiB, 7));
  env.sim.writeToVmDisk('vm-1', 2000, 3 * MiB, Buffer.alloc(512, 9));
  // Take a snapshot through the simulator's own SOAP so the dummy serves it.
  const { VSphereClient } = await import('../../src/source/vmware/vsphere/client.js');
  const client = new VSphereClient({ host: '127.0.0.1', port: env.sim.port, thumbprint: env.sim.thumbprint });
  await client.login(env.config.user, PASSWORD);
  const snap = await client.createSnapshot('vm-1', 'unit');
  const [disk] = await client.snapshotDisks(snap);
  await initVddk({ libdir: env.config.libdir, configFile: env.config.vddkConfig });
  await t.rejects(
    connectVddk({
      vmMoref: 'vm-1',
      server: '127.0.0.1',
      user: env.config.user,
      password: Buffer.from('wrong'),
      thumbprint: env.sim.thumbprint,
      snapshotMoref: snap,
    }),
    { code: 'RNODE_VDDK_ERROR', message: /incorrect user name or password/ },
    "VDDK login errors carry VDDK's text",
  );
  const pw = Buffer.from(PASSWORD);
  const conn = await connectVddk({
    vmMoref: 'vm-1',
    server: '127.0.0.1',
    user: env.config.user,
    password: pw,
    thumbprint: env.sim.thumbprint,
    snapshotMoref: snap,
    transports: ['nbd'],
  });
  await t.rejects(conn.open('[datastore1] vm-1/missing.vmdk'), { code: 'RNODE_VDDK_FILE_NOT_FOUND' });
  const d = await conn.open(disk.fileName, { maxReadBytes: 64 * KiB });
  t.equal(d.capacity, 4 * MiB);
  t.same(
    await d.queryAllocated(0, d.capacity, 64 * KiB),
    [
      { offset: 1 * MiB, length: 128 * KiB },
      { offset: 3 * MiB, length: 64 * KiB },
    ],
    'QueryAllocatedBlocks gives chunk-aligned allocated areas',
  );
  env.clearLog();
  const buf = Buffer.alloc(1 * MiB);
  t.equal(await d.read(buf, 1 * MiB, buf.length), buf.length);
  t.equal(buf[0], 7);
  const reads = readDummyLog(env.dummyLog).filter((c) => c.op === 'Read');
  t.equal(reads.length, 16, 'a 1 MiB read became 16 VixDiskLib_Read calls of 64 KiB');
  t.ok(reads.every((r) => Number(r.fields.count) <= 128));
  t.equal(await d.read(buf, 4 * MiB - 4096, buf.length), 4096, 'short only at the end of the disk');
  await t.rejects(d.read(buf, 100, 512), RangeError, 'unaligned offsets are refused in TS');
  await t.rejects(d.read(buf, 0, 1000), RangeError);
  // Concurrent reads on one handle are serialized, not interleaved inside VDDK.
  const many = await Promise.all(Array.from({ length: 8 }, (_, i) => d.read(Buffer.alloc(64 * KiB), i * 64 * KiB)));
  t.same(many, Array(8).fill(64 * KiB));
  await d.close();
  await d.close();
  await t.rejects(d.read(buf, 0, 512), { code: 'RNODE_VDDK_CLOSED' }, 'a closed disk refuses reads');
  await conn.disconnect();
  t.same(
    [...pw].every((b) => b !== 0),
    true,
    "the caller's password buffer is the caller's to wipe",
  );
  await t.rejects(conn.open(disk.fileName), { code: 'RNODE_VDDK_CLOSED' });
  t.ok(
    readDummyLog(env.dummyLog).some((c) => c.op === 'EndAccess'),
    'disconnect ends access',
  );
  t.ok(new VddkError('RNODE_VDDK_ERROR', 'x', { op: 'Read', vddkText: 'x' }) instanceof Error);
  await client.removeSnapshot(snap);
  await client.logout();

  const native = (await import('../../src/native/index.js')).loadAddon() as Record<string, (o: unknown) => Promise<unknown>>;
  await t.rejects(
    native.vddkRead({ disk: {}, buffer: buf, startSector: 0, sectors: 1, maxSectorsPerCall: 1 }),
    TypeError,
    'native checks handle types',
  );
  await t.rejects(native.vddkConnect({ vmxSpec: 'moref=vm-1', identity: 'x', password: 'not-bytes', serverName: 'h', userName: 'u' }), TypeError);
});

t.test('vddk:// through openSource: one disk of a fresh snapshot; close removes the snapshot', async (t) => {
  const env = await startEnv(t, [
    {
      moref: 'vm-11',
      disks: [
        { key: 2000, size: 2 * MiB },
        { key: 2001, size: 1 * MiB },
      ],
    },
  ]);
  env.sim.writeToVmDisk('vm-11', 2001, 0, Buffer.alloc(4096, 1));
  const { config } = env;
  const url =
    `vddk://${encodeURIComponent(config.user)}@127.0.0.1:${config.port}/vm-11?disk=2001&thumbprint=${config.thumbprint}` +
    `&passwordFile=${encodeURIComponent(config.passwordFile)}&libdir=${encodeURIComponent(config.libdir)}&vddkConfig=${encodeURIComponent(config.vddkConfig!)}`;
  const src = await openSource(url);
  t.equal(src.kind, 'vddk');
  t.equal(src.size, 1 * MiB);
  t.equal(src.tracksChanges, true);
  t.match(src.location, /^vddk:\/\/127\.0\.0\.1\/vm-11\/disk-2001@snapshot-/);
  t.notOk(src.location.includes(PASSWORD));
  const ext = [];
  for await (const e of src.allocatedExtents()) ext.push(e);
  t.same(ext, [{ offset: 0, length: 4096 }]);
  t.equal(env.sim.vms.get('vm-11')!.snapshots.length, 1);
  await src.close();
  t.equal(env.sim.vms.get('vm-11')!.snapshots.length, 0, 'closing the source removed its snapshot');
  await t.rejects(openSource(url.replace('disk=2001&', '')), { code: 'RNODE_BAD_SOURCE', message: /has 2 disks/ });
  t.equal(env.sim.vms.get('vm-11')!.snapshots.length, 0, 'and a refused open leaves no snapshot');
});

t.test('CLI: replicateVmwareCommand with --source-config and a vddk:// override', async (t) => {
  // Through openStore's wrapped store a codec worker stays referenced after replicate() and keeps the process
  // alive (the raw `rnode replicate` shows it too); close the workers so this file can end.
  t.teardown(() => codecWorkers().close());
  const env = await startEnv(t, [
    {
      moref: 'vm-21',
      disks: [
        { key: 2000, size: 2 * MiB },
        { key: 2001, size: 1 * MiB },
      ],
    },
  ]);
  env.sim.writeToVmDisk('vm-21', 2000, 64 * KiB, Buffer.alloc(8192, 3));
  const cfgFile = path.join(env.dir, 'vm-21.json');
  fs.writeFileSync(cfgFile, JSON.stringify({ ...env.config, port: env.sim.port }));
  const out: string[] = [];
  const err: string[] = [];
  const io = { out: (l: string) => out.push(l), err: (l: string) => err.push(l) };
  const storeDir = path.join(env.dir, 'cli-store');
  t.equal(await replicateVmwareCommand({ 'source-config': cfgFile, target: storeDir, 'chunk-size': '64KiB' }, io), 0);
  t.match(out.join('\n'), /VM point 1 of vm-21 .*crash-consistent: 2 disks from snapshot snapshot-\d+ \(removed\)/);
  t.match(out.join('\n'), /point 1 of disk vm-21-disk-2000: full/);
  out.length = 0;
  t.equal(
    await replicateVmwareCommand(
      { 'source-config': cfgFile, source: `vddk://127.0.0.1:${env.sim.port}/vm-21?disk=2000`, target: storeDir, json: true },
      io,
    ),
    0,
  );
  const r = JSON.parse(out[0]);
  t.same(
    r.disks.map((d: { disk: string; point: number }) => [d.disk, d.point]),
    [['vm-21-disk-2000', 2]],
    'the URL narrowed the run to one disk',
  );
  t.notOk([...out, ...err].join('\n').includes(PASSWORD), 'no password in the output');
  await t.rejects(replicateVmwareCommand({ 'source-config': cfgFile, target: storeDir, disk: 'x' }, io), { code: 'RNODE_USAGE' });
  await t.rejects(replicateVmwareCommand({ 'source-config': cfgFile, source: '/dev/sda', target: storeDir }, io), { code: 'RNODE_USAGE' });
  t.ok(buildDummyVddk, 'the build helper is the one the harness uses');
});

t.test('the stand-in VDDK in strict mode refuses calls off the designated thread and a second InitEx', async (t) => {
  // A C driver that breaks VMware's threading advice on purpose, as the node did before: InitEx on one thread,
  // ConnectEx/Open on another, InitEx twice. The stand-in must refuse each (or the strict tests prove nothing).
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rnode-strict-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const lib = buildDummyVddk(path.join(dir, 'vddk'));
  const log = path.join(dir, 'calls.log');
  const conf = path.join(dir, 'vix.conf');
  fs.writeFileSync(conf, `dummy.log=${log}\n`);
  const driver = path.join(dir, 'driver.c');
  fs.writeFileSync(
    driver,
    `#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
typedef uint64_t (*InitEx)(uint32_t, uint32_t, void *, void *, void *, const char *, const char *);
typedef uint64_t (*ConnectEx)(const void *, char, const char *, const char *, void **);
typedef uint64_t (*Disconnect)(void *);
static ConnectEx connect_; static Disconnect disconnect_;
static char params[128];
static void *other(void *out) { void *c = 0; *(uint64_t *)out = connect_(params, 1, "snapshot-1", "nbd", &c); return 0; }
int main(int argc, char **argv) {
  void *dl = dlopen(argv[1], RTLD_NOW);
  InitEx init = (InitEx)dlsym(dl, "VixDiskLib_InitEx");
  connect_ = (ConnectEx)dlsym(dl, "VixDiskLib_ConnectEx");
  disconnect_ = (Disconnect)dlsym(dl, "VixDiskLib_Disconnect");
  uint64_t first = init(8, 0, 0, 0, 0, "/x", argv[2]);
  void *c = 0;
  uint64_t same = connect_(params, 1, "snapshot-1", "nbd", &c);
  if (same == 0) disconnect_(c);
  uint64_t off = 0; pthread_t th;
  pthread_create(&th, 0, other, &off); pthread_join(th, 0);
  uint64_t again = init(8, 0, 0, 0, 0, "/x", argv[2]);
  printf("%llu %llu %llu %llu\\n", (unsigned long long)first, (unsigned long long)same, (unsigned long long)off, (unsigned long long)again);
  return 0;
}
`,
  );
  const exe = path.join(dir, 'driver');
  execFileSync('gcc', ['-O1', '-pthread', '-o', exe, driver, '-ldl']);
  const run = (strict: string) =>
    execFileSync(exe, [lib, conf], { env: { ...process.env, RNODE_DUMMY_VDDK_STRICT: strict } })
      .toString()
      .trim()
      .split(' ')
      .map(Number);
  t.same(run('1'), [0, 0, 1, 1], 'strict: InitEx and ConnectEx on one thread pass; ConnectEx from another thread and a second InitEx fail');
  t.same(run('0'), [0, 0, 0, 0], 'not strict: all pass (the stand-in only logs thread ids)');
  const calls = readDummyLog(log);
  t.ok(
    calls.some((c) => c.op === 'ConnectEx' && c.raw.includes('strict-violation')),
    'the violation is in the call log',
  );
  t.ok(calls.some((c) => c.op === 'InitEx' && /once per process/.test(c.raw)));
});

t.test('VM helpers: config JSON as vSphere returned it, default disk parallelism, unsupported disks', async (t) => {
  const cfg = parseXml(
    '<val xmlns:xsi="i" xsi:type="VirtualMachineConfigInfo"><name>db</name><hardware><numCPU>4</numCPU>' +
      '<device xsi:type="VirtualDisk"><key>2000</key></device><device xsi:type="VirtualDisk"><key>2001</key></device></hardware>' +
      '<datastoreUrl><name>ds1</name></datastoreUrl><ref type="Datastore">datastore-11</ref><flag xsi:type="xsd:boolean">true</flag></val>',
  );
  t.same(xmlToJson(cfg), {
    _type: 'VirtualMachineConfigInfo',
    name: 'db',
    hardware: {
      numCPU: '4',
      device: [
        { _type: 'VirtualDisk', key: '2000' },
        { _type: 'VirtualDisk', key: '2001' },
      ],
    },
    datastoreUrl: { name: 'ds1' },
    ref: { _type: 'Datastore', _value: 'datastore-11' },
    flag: 'true',
  });
  t.equal(defaultDiskParallelism(1), 1, 'never more than the disks');
  t.ok(defaultDiskParallelism(64) >= 2 && defaultDiskParallelism(64) <= 4, 'bounded by cores and a quarter of the store concurrency');
  t.equal(defaultDiskParallelism(64, 4), 1, 'a store that takes 4 requests reads one disk at a time');
  const d = { key: 2000, label: 'Hard disk 1', capacityBytes: 1, fileName: 'x' };
  t.equal(unsupportedReason(d), undefined);
  t.match(unsupportedReason({ ...d, diskMode: 'independent_nonpersistent' }), /independent/);
  t.match(
    unsupportedReason({ ...d, backingType: 'VirtualDiskRawDiskMappingVer1BackingInfo', compatibilityMode: 'physicalMode' }),
    /physical-mode RDM/,
  );
  t.equal(
    unsupportedReason({ ...d, backingType: 'VirtualDiskRawDiskMappingVer1BackingInfo', compatibilityMode: 'virtualMode' }),
    undefined,
    'a virtual RDM is snapshot like a disk',
  );
});

/** The message fn throws ('' when it does not). */
function messageOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    return (e as Error).message;
  }
  return '';
}
