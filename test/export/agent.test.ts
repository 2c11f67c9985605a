// export.start / export.stop under a Management Server (the reference MS): the node reports export.started with
// the URL, which serves the disk; export.status carries bytes served and the cache hit ratio; a repeated start
// renews the lease; export.stop ends it with export.stopped and its counters; an unrenewed lease stops it; an
// export that cannot start reports export.stopped with reason failed and the error's code.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { codecWorkers } from '../../src/pipeline/codec-workers.js';
import { fsStore, snap, tmpDir } from '../helpers/images.js';
import { startAgent, startMs } from '../agent/helpers.js';
import { CHUNK, compare, haveTools, makeDisk } from './helpers.js';

t.setTimeout(120_000);
t.teardown(() => codecWorkers().close());

t.test('export.start / export.stop', { skip: !haveTools && 'tools missing' }, async (t) => {
  const dir = tmpDir(t, 'export-agent');
  const storeDir = path.join(dir, 'store');
  const image = path.join(dir, 'disk.img');
  makeDisk(image);
  await snap(fsStore(storeDir), image, 'vm', { chunkSize: CHUNK, lease: false });
  const ms = await startMs(t);
  const { agent, logs } = await startAgent(t, ms, dir);
  const nodeId = await ms.waitFor(() => [...ms.nodes.keys()][0], 10_000, 'registration');
  const socket = path.join(dir, 'x1.sock');
  const exportStart = (spec: Record<string, unknown>) =>
    ms.send(nodeId, { type: 'export.start', export: { store: { url: storeDir }, disk: 'vm', ...spec } });

  exportStart({ exportId: 'x1', socket, leaseSeconds: 30 });
  const started = await ms.waitFor(() => ms.reportsOf('export.started', (m) => m.exportId === 'x1')[0], 10_000, 'export.started');
  t.match(started.msg, { exportId: 'x1', url: `nbd+unix:///vm?socket=${socket}`, disk: 'vm', point: 1, writable: false });
  t.ok(typeof started.msg.leaseUntil === 'string', 'with its lease end');
  const r = await compare(image, String(started.msg.url));
  t.equal(r.code, 0, `the reported URL serves the point ${r.stderr}`);
  const status = await ms.waitFor(
    () => ms.progress.find((p) => p.msg.type === 'export.status' && (p.msg.counters as any).bytesServed > 0),
    10_000,
    'export.status',
  );
  t.match(status.msg.counters, { bytesServed: Number, cacheHitRatio: Number, connections: Number }, 'status: bytes served and cache hit ratio');

  exportStart({ exportId: 'x1', socket, leaseSeconds: 60 });
  await ms.waitFor(() => ms.reportsOf('export.started', (m) => m.exportId === 'x1').length === 2, 10_000, 'renewal');
  t.pass('a repeated export.start renews the lease and reports again');

  ms.send(nodeId, { type: 'export.stop', exportId: 'x1' });
  const stopped = await ms.waitFor(() => ms.reportsOf('export.stopped', (m) => m.exportId === 'x1')[0], 10_000, 'export.stopped');
  t.match(stopped.msg, { reason: 'requested', counters: { bytesServed: Number, cacheHitRatio: Number } });
  t.ok((stopped.msg.counters as any).bytesServed > 1024 * 1024, 'the data compare read is counted (qemu-img skips holes by block status)');

  exportStart({ exportId: 'x2', socket: path.join(dir, 'x2.sock'), leaseSeconds: 0.5 });
  const expired = await ms.waitFor(() => ms.reportsOf('export.stopped', (m) => m.exportId === 'x2')[0], 10_000, 'lease end');
  t.equal(expired.msg.reason, 'lease-expired', 'an unrenewed lease stops the export');

  exportStart({ exportId: 'x3', socket: path.join(dir, 'x3.sock'), disk: 'nope' });
  const failed = await ms.waitFor(() => ms.reportsOf('export.stopped', (m) => m.exportId === 'x3')[0], 10_000, 'failure');
  t.match(failed.msg, { reason: 'failed', code: 'RNODE_DISK_NOT_FOUND' });
  exportStart({ exportId: 'x4', listen: '0.0.0.0:0' });
  const insecure = await ms.waitFor(() => ms.reportsOf('export.stopped', (m) => m.exportId === 'x4')[0], 10_000, 'refusal');
  t.match(insecure.msg, { reason: 'failed', code: 'RNODE_EXPORT_INSECURE' }, 'off loopback without TLS: refused');

  // A read that fails (its packs deleted under the export) is a warning in the node's log, as `rnode export` logs it:
  // the agent logged request-failed as info, so an operator watching warnings never saw why a VM's reads failed.
  for (const f of fs.readdirSync(storeDir, { recursive: true, withFileTypes: true }))
    if (f.isFile() && f.parentPath.includes(`${path.sep}packs`)) fs.rmSync(path.join(f.parentPath, f.name));
  const x5 = path.join(dir, 'x5.sock');
  exportStart({ exportId: 'x5', socket: x5, leaseSeconds: 30 });
  await ms.waitFor(() => ms.reportsOf('export.started', (m) => m.exportId === 'x5')[0], 10_000, 'export.started x5');
  t.not((await compare(image, `nbd+unix:///vm?socket=${x5}`)).code, 0, 'reads of the deleted packs fail');
  const failedReads = logs.map((l) => JSON.parse(l)).filter((e) => e.msg === 'request-failed');
  t.ok(failedReads.length > 0, 'request-failed is logged');
  t.ok(
    failedReads.every((e) => e.level === 'warn'),
    `as a warning: ${[...new Set(failedReads.map((e) => e.level))].join(', ')}`,
  );
  ms.send(nodeId, { type: 'export.stop', exportId: 'x5' });
  await ms.waitFor(() => ms.reportsOf('export.stopped', (m) => m.exportId === 'x5')[0], 10_000, 'export.stopped x5');

  // A lease longer than the longest timer (2^31 - 1 ms) ended as the export started (Node fires such a timer after
  // 1 ms), and 1e306 s failed with RNODE_INTERNAL (an invalid date).
  for (const [id, leaseSeconds] of [
    ['x6', 3_000_000],
    ['x7', 1e306],
  ] as const) {
    exportStart({ exportId: id, socket: path.join(dir, `${id}.sock`), leaseSeconds });
    const up = await ms.waitFor(() => ms.reportsOf('export.started', (m) => m.exportId === id)[0], 10_000, `export.started ${id}`);
    t.ok(Number.isFinite(Date.parse(String(up.msg.leaseUntil))), `${id}: leaseUntil is a date: ${String(up.msg.leaseUntil)}`);
    await new Promise((r) => setTimeout(r, 300));
    t.same(
      ms.reportsOf('export.stopped', (m) => m.exportId === id),
      [],
      `${id}: a lease of ${leaseSeconds} s is still running`,
    );
    ms.send(nodeId, { type: 'export.stop', exportId: id });
    const end = await ms.waitFor(() => ms.reportsOf('export.stopped', (m) => m.exportId === id)[0], 10_000, `export.stopped ${id}`);
    t.equal(end.msg.reason, 'requested', `${id}: stopped when asked`);
  }

  ms.send(nodeId, { type: 'export.stop', exportId: 'nope' });
  await ms.waitFor(() => ms.errors.find((e) => e.msg.code === 'RNODE_AGENT_UNKNOWN_JOB'), 10_000, 'refusal of an unknown export');
  t.pass('export.stop of an unknown export is refused');
  t.equal(agent.exports.count, 0, 'nothing left running');
});

// An export's TLS key from a file: secret the group or others may read was used, while `rnode export --tls-key` with
// that mode is refused (as key and token files are): whoever reads it can pose as the node.
t.test('export.start with a TLS key secret the group or others may read fails with RNODE_AGENT_SECRET', async (t) => {
  const dir = tmpDir(t, 'export-agent-tls-key');
  const ms = await startMs(t);
  const { stateDir } = await startAgent(t, ms, dir);
  const nodeId = await ms.waitFor(() => [...ms.nodes.keys()][0], 10_000, 'registration');
  fs.writeFileSync(path.join(stateDir, 'secrets', 'tls-cert'), '-----BEGIN CERTIFICATE-----\n');
  const key = path.join(stateDir, 'secrets', 'tls-key');
  fs.writeFileSync(key, '-----BEGIN PRIVATE KEY-----\n');
  fs.chmodSync(key, 0o644);
  const tls = { cert: { secretRef: 'file:tls-cert' }, key: { secretRef: 'file:tls-key' } };
  ms.send(nodeId, {
    type: 'export.start',
    export: { exportId: 'k1', store: { url: path.join(dir, 'store') }, disk: 'vm', listen: '127.0.0.1:0', tls },
  });
  const failed = await ms.waitFor(() => ms.reportsOf('export.stopped', (m) => m.exportId === 'k1')[0], 10_000, 'export.stopped k1');
  t.match(failed.msg, { reason: 'failed', code: 'RNODE_AGENT_SECRET' });
  t.match(JSON.stringify(failed.msg), /readable or writable by group or others \(mode 0644\).*chmod 600/, 'says what to do');
});
