// SIGKILL mid-point, then completion. The sender (a child `rnode replicate` to ws://) killed mid-point: the next
// run resumes from the pending checkpoint on the node (resumed: true, far fewer chunks sent again). The node (a
// child `rnode serve`) killed mid-point and restarted on the same port: the sender's RemoteStore reconnects and
// the same replicate call completes, re-sending at most one credit window. Every point restores byte-exact.
import t from 'tap';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { CLI, ensureBuilt, json, runCli } from '../helpers/cli.js';
import { KiB, MiB, chunkObjects, expectRestore, fingerprint, fsStore, randomData, snap, tmpDir } from '../helpers/images.js';
import { remote, spawnServe, startNode, until } from './helpers.js';

const CHUNK = 64 * KiB;
const SIZE = 12 * MiB; // 192 chunks

t.test('SIGKILL of the sender mid-point: the next run resumes on the node and completes', async (t) => {
  ensureBuilt();
  const dir = tmpDir(t, 'ws-kill-sender');
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, randomData(SIZE, 21));
  const fp = fingerprint(img);
  const { server, storeDir, url } = await startNode(t, dir, { windowBytes: MiB });
  // Throttled so the kill lands mid-point, after a checkpoint (the CLI checkpoints every 64 chunks to ws://).
  const child = spawn(process.execPath, [CLI, 'replicate', '--source', img, '--target', url, '--disk', 'd', '--chunk-size', '64KiB',
    '--bandwidth', '6MiB', '--json'], { stdio: 'ignore' });
  t.teardown(() => { child.kill('SIGKILL'); });
  const pending = path.join(storeDir, 'disks/d/pending/0000000001.json');
  await until(() => fs.existsSync(pending) && chunkObjects(storeDir, 'd').length >= 80, 30_000, 'a checkpoint and 80 chunks on the node');
  child.kill('SIGKILL');
  await new Promise((r) => child.on('exit', r));
  const before = chunkObjects(storeDir, 'd').length;
  t.ok(before < SIZE / CHUNK, `killed mid-point (${before} of ${SIZE / CHUNK} chunks on the node)`);
  const putsBefore = server.stats.chunkPuts;
  const nextIndex: number = JSON.parse(fs.readFileSync(pending, 'utf8')).nextIndex;

  const args = ['replicate', '--source', img, '--target', url, '--disk', 'd', '--chunk-size', '64KiB', '--json'];
  let r = await runCli(args);
  if (r.code !== 0 && /RNODE_LEASE_HELD/.test(r.stderr)) {
    // The killed writer's lease is live until its TTL (the core crash tests own that behaviour): age it on the node.
    t.comment('the killed sender\'s lease was still live; aged on the node to go on');
    const file = path.join(storeDir, 'disks', 'd', 'lease.json');
    fs.writeFileSync(file, JSON.stringify({ ...JSON.parse(fs.readFileSync(file, 'utf8')), expiresAt: new Date(0).toISOString() }));
    r = await runCli(args);
  }
  t.equal(r.code, 0, r.stderr);
  const res = json(r);
  t.equal(res.resumed, true, 'the second run resumed the pending point');
  t.equal(res.point, 1);
  const chunkPuts = server.stats.chunkPuts - putsBefore;
  t.ok(nextIndex > 0, `the node held a checkpoint up to chunk ${nextIndex}`);
  t.equal(chunkPuts, SIZE / CHUNK - nextIndex, `the second run sent only the chunks after the checkpoint (${chunkPuts} of ${SIZE / CHUNK})`);
  await expectRestore(t, fsStore(storeDir), 'd', 1, fp, dir, 'point after a killed sender');
});

t.test('SIGKILL of the node mid-point: restarted on the same port, the sender reconnects and completes', async (t) => {
  ensureBuilt();
  const dir = tmpDir(t, 'ws-kill-node');
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, randomData(SIZE, 22));
  const fp = fingerprint(img);
  const storeDir = path.join(dir, 'recv');
  const WINDOW = MiB;
  const first = await spawnServe(t, CLI, ['--listen', '127.0.0.1:0', '--store', storeDir, '--window', String(WINDOW)]);
  const port = new URL(first.url).port;
  const rs = remote(t, first.url, { bandwidth: 6 * MiB, reconnectBudgetMs: 30_000, backoffMaxMs: 300 });
  const running = snap(rs, img, 'd', { chunkSize: CHUNK, checkpointRecords: 64 });
  running.catch(() => undefined);
  await until(() => chunkObjects(storeDir, 'd').length >= 60, 30_000, '60 chunks on the node');
  first.child.kill('SIGKILL');
  await new Promise((r) => first.child.on('exit', r));
  const atKill = chunkObjects(storeDir, 'd').length;
  await new Promise((r) => setTimeout(r, 300)); // the sender is now retrying against a closed port
  await spawnServe(t, CLI, ['--listen', `127.0.0.1:${port}`, '--store', storeDir, '--window', String(WINDOW)]);
  const r = await running;
  t.equal(r.point, 1);
  t.equal(r.resumed, false, 'the same run went on (nothing to resume from a checkpoint)');
  t.ok(atKill < SIZE / CHUNK, `killed mid-point (${atKill} chunks stored at the kill)`);
  t.ok(rs.counters.connects >= 2, `reconnected (${rs.counters.connects} sessions)`);
  t.ok(rs.counters.resentBytes <= WINDOW, `re-sent ${rs.counters.resentBytes} bytes <= one window (${WINDOW})`);
  await expectRestore(t, fsStore(storeDir), 'd', 1, fp, dir, 'point after a killed node');
});
