// Graceful SIGTERM: a replicate stopped by SIGTERM lets the chunks in flight land, checkpoints them, says so in one
// line and exits 143; the same command run again resumes from the checkpoint and the point recovers byte-exact.
// Before, SIGTERM killed the process wherever it was (no checkpoint of the last batch, no message).
import t, { type Test } from 'tap';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { ErrorCodes, RnodeError, isRnodeError } from '../../src/errors.js';
import { Domain } from '../../src/repository/domain.js';
import { decodePendingV2 } from '../../src/repository/point-format.js';
import { ensureBuilt, json, runCli, spawnCli } from '../helpers/cli.js';
import { MiB, fsStore, randomData, snap, tmpDir } from '../helpers/images.js';
import { expectIntact, pruneArgs, setup } from '../helpers/prune-crash.js';

// v2: chunks land in packs (r2/plain/packs/<2 hex>/<id>); with --pack-size 512KiB each 256 KiB chunk closes its own
// pack, so the packs stored count the chunks stored.
function chunkFiles(store: string): number {
  const dir = path.join(store, 'r2', 'plain', 'packs');
  return fs.existsSync(dir) ? fs.readdirSync(dir).reduce((n, d) => n + fs.readdirSync(path.join(dir, d)).length, 0) : 0;
}

/**
 * A replicate of a new image (256 KiB chunks, each closing its own pack) throttled to 4 MiB/s, so a signal lands
 * mid-way: the child, its output so far, its exit code, and a wait until `packs` packs are stored.
 */
function throttledReplicate(t: Test, tag: string, size: number, extra: string[] = [], pace = { bandwidth: '4MiB', packSize: '512KiB' }) {
  const dir = tmpDir(t, tag);
  const image = path.join(dir, 'disk.img');
  fs.writeFileSync(image, randomData(size, 21));
  const store = path.join(dir, 'store');
  const args = ['replicate', '--source', image, '--target', store, '--disk', 'd', '--chunk-size', '256KiB', '--pack-size', pace.packSize, ...extra];
  const { child, out, exited } = spawnCli(t, [...args, '--bandwidth', pace.bandwidth]);
  const storing = async (packs: number) => {
    const deadline = Date.now() + 30_000;
    while (chunkFiles(store) < packs && Date.now() < deadline && child.exitCode === null) await new Promise((r) => setTimeout(r, 50));
    t.ok(chunkFiles(store) >= packs, 'chunks were being stored when the signal came');
  };
  return { dir, image, store, args, child, out, exited, storing };
}

t.test('replicate stopped by SIGTERM checkpoints, exits 143, and the next run resumes', async (t) => {
  // 32 MiB: the 128 chunks take ~8 s.
  const { dir, image, store, args, child, out, exited, storing } = throttledReplicate(t, 'sigterm', 32 * MiB);
  await storing(8);
  child.kill('SIGTERM');
  t.equal(await exited, 143, 'exit 143 (128 + SIGTERM)');
  t.match(
    out.stderr,
    /rnode: RNODE_CANCELLED: replicate stopped by SIGTERM; the chunks stored so far are checkpointed: run the same command again to resume/,
  );
  t.notMatch(out.stderr, /\n\s+at /, 'no stack trace');
  const diskDir = path.join(store, 'r2', 'plain', 'disks', 'd');
  t.ok(fs.existsSync(path.join(diskDir, 'pending', '0000000001')), 'a checkpoint was left');
  t.notOk(fs.existsSync(path.join(diskDir, 'points')) && fs.readdirSync(path.join(diskDir, 'points')).length > 0, 'nothing committed');
  t.notOk(fs.existsSync(path.join(store, 'disks', 'd', 'chunks')), 'no chunk written in the legacy layout');

  const again = await runCli(args);
  t.equal(again.code, 0, again.stderr);
  t.match(again.stdout, /^point 1 of disk d: full \(resumed\)/m, 'the next run resumed from the checkpoint');
  // Its figures are the whole point's: no throughput of the whole disk over this run's seconds.
  t.match(again.stdout, /read {5}32\.0 MiB of a 32\.0 MiB disk for the whole point, with the interrupted run's; this run took /);
  t.notMatch(again.stdout, /MB\/s of disk/);
  const restored = path.join(dir, 'out.img');
  const rec = await runCli(['recover', '--store', store, '--disk', 'd', '--out', restored, '--json']);
  t.equal(rec.code, 0, rec.stderr);
  t.ok(fs.readFileSync(restored).equals(fs.readFileSync(image)), 'byte-exact');
});

// A stop under a bandwidth limit: the packs still waiting for bandwidth (three of 4 MiB at 2 MiB/s: 6 s) were sent
// before the run stopped, so a slow link kept a stopped run going for minutes (past systemd's stop timeout, then
// SIGKILL). Now they are dropped, and the checkpoint covers the chunks stored before the first of them.
t.test('SIGTERM under --bandwidth drops the packs waiting for bandwidth and checkpoints the chunks already stored', async (t) => {
  const { dir, image, store, args, child, out, exited, storing } = throttledReplicate(t, 'sigterm-bandwidth', 48 * MiB, [], {
    bandwidth: '2MiB',
    packSize: '4MiB',
  });
  await storing(2);
  const atSignal = chunkFiles(store);
  child.kill('SIGTERM');
  t.equal(await exited, 143, out.stderr);
  t.match(out.stderr, /RNODE_CANCELLED: replicate stopped by SIGTERM; the chunks stored so far are checkpointed/);
  const atExit = chunkFiles(store);
  t.ok(atExit <= atSignal + 1, `${atExit} packs stored at the exit, ${atSignal} at the signal: at most the one being written went on`);
  // 16 chunks a pack: the checkpoint covers the stored packs' chunks (a few of a pack may be in the next one).
  const pending = decodePendingV2(
    fs.readFileSync(path.join(store, 'r2', 'plain', 'disks', 'd', 'pending', '0000000001')),
    Domain.of(undefined),
    'd',
    1,
  );
  t.ok(pending.nextIndex >= 16 * (atSignal - 1), `the checkpoint goes on to chunk ${pending.nextIndex} (${atExit} packs of 16 stored)`);
  t.ok(pending.nextIndex <= 16 * atExit, 'and not past the chunks stored');

  const again = await runCli([...args, '--bandwidth', '64MiB']);
  t.equal(again.code, 0, again.stderr);
  t.match(again.stdout, /^point 1 of disk d: full \(resumed\)/m);
  const rec = await runCli(['recover', '--store', store, '--disk', 'd', '--out', path.join(dir, 'out.img')]);
  t.equal(rec.code, 0, rec.stderr);
  t.ok(fs.readFileSync(path.join(dir, 'out.img')).equals(fs.readFileSync(image)), 'byte-exact');
});

// Stopped before its first pack was stored: it checkpointed no progress (the chunks before the first pack's), and the
// next run said "(resumed)" while it read and sent the whole point again.
t.test('SIGTERM before the first pack is stored: no checkpoint claimed, and the next run does not say it resumed', async (t) => {
  const { store, args, child, out, exited } = throttledReplicate(t, 'sigterm-first-pack', 16 * MiB, [], {
    bandwidth: '1MiB',
    packSize: '4MiB',
  });
  // Signalled once the run holds the disk's lease (its stop handler is in by then: a fixed 1.5 s after the spawn came
  // before it on a loaded machine, and the signal killed the process), well before its first 4 MiB pack (4 s at 1 MiB/s).
  const lease = path.join(store, 'disks', 'd', 'lease.json');
  for (const deadline = Date.now() + 30_000; !fs.existsSync(lease) && Date.now() < deadline;) await new Promise((r) => setTimeout(r, 20));
  await new Promise((r) => setTimeout(r, 300));
  child.kill('SIGTERM');
  t.equal(await exited, 143, out.stderr);
  t.equal(chunkFiles(store), 0, 'no pack was stored');
  t.match(out.stderr, /RNODE_CANCELLED: replicate stopped by SIGTERM; no checkpoint was written/);
  const again = await runCli([...args, '--bandwidth', '64MiB']);
  t.equal(again.code, 0, again.stderr);
  t.match(again.stdout, /^point 1 of disk d: full \(first point of the disk\)$/m, 'not "(resumed)"');
});

// The second signal's exit at once: test/nbd/stop.test.ts (a stop there waits for reads a slow server holds).

// Graceful SIGTERM of prune: it stops only where the repository is consistent (between deletes, between phases), exits
// 143 with RNODE_CANCELLED, `rnode check --read-data` finds nothing wrong and the next prune finishes the work. The
// signal is sent at an exact step (RNODE_FAILPOINT=<step>:SIGTERM). Before, prune had no graceful stop:
// the signal killed it wherever it was.
for (const step of ['prune-rebased', 'prune-pack-deleted']) {
  t.test(`prune stopped by SIGTERM at ${step}: exit 143, check is clean, the next prune completes`, async (t) => {
    const { dir, images } = await setup(t);
    const stopped = await runCli(pruneArgs(dir), { env: { RNODE_FAILPOINT: `${step}:SIGTERM` } });
    t.equal(stopped.code, 143, `exit 143 (128 + SIGTERM): ${stopped.stderr}`);
    t.match(
      stopped.stderr,
      /rnode: RNODE_CANCELLED: prune stopped by SIGTERM; the repository is consistent \(prune stops only between two steps\) .*run the same command again to continue/,
    );
    t.equal(json(stopped).error.code, 'RNODE_CANCELLED');
    t.notMatch(stopped.stderr, /\n\s+at /, 'no stack trace');
    await expectIntact(t, dir, images, `stopped at ${step}`);

    const again = await runCli(pruneArgs(dir));
    t.equal(again.code, 0, again.stderr);
    const r = json(again);
    t.ok(r.domains[0].packsRepacked > 0, `the next prune repacked what the stopped one had not reached (${r.domains[0].packsRepacked} packs)`);
    t.same(await expectIntact(t, dir, images, `the next prune after the stop at ${step}`), [5, 6], 'only the kept points are left');
  });
}

// A signal during a run that is failing on its own: a replicate to a ws:// node that drops every connection, SIGINT
// once it is trying. It used to end as RNODE_CANCELLED, exit 130, "the chunks stored so far are checkpointed":
// the operator (or a Management Server) read "cancelled" for "target unreachable", and nothing was checkpointed.
t.test('SIGINT to a replicate whose ws:// node is dead: the transport error and its exit code, no checkpoint claimed', async (t) => {
  ensureBuilt();
  const dir = tmpDir(t, 'sigint-dead-node');
  const image = path.join(dir, 'disk.img');
  fs.writeFileSync(image, randomData(MiB, 22));
  // A dead node behind a live port: every connection is closed before the handshake.
  let connections = 0;
  let sigint = () => undefined as unknown;
  const dead = net.createServer((s) => {
    // The first connection comes from inside the stoppable run (the store is opened there): the handler is in place.
    if (connections++ === 0) sigint();
    s.destroy();
  });
  await new Promise<void>((r) => dead.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => new Promise<void>((r) => dead.close(() => r())));
  const port = (dead.address() as net.AddressInfo).port;
  const r = await runCli(['replicate', '--source', image, '--target', `ws://127.0.0.1:${port}`, '--disk', 'd', '--json'], {
    onSpawn: (child) => {
      sigint = () => child.kill('SIGINT');
    },
  });
  const { code, stdout, stderr } = r;
  t.ok(connections > 0, `the run tried the node (${connections} connections)`);
  t.match(stderr, /rnode: SIGINT: stopping replicate/, 'the signal reached the run');
  t.equal(code, 1, `exit 1, the transport failure's (not 130): ${stderr}`);
  t.equal(JSON.parse(stdout).error.code, 'RNODE_TRANSPORT_UNREACHABLE', 'the run says what went wrong');
  t.notMatch(stdout + stderr, /checkpointed/, 'no checkpoint claimed');
});

// A replicate cancelled before it checkpointed anything says so: the next run starts the point over. The CLI used
// to say "the chunks stored so far are checkpointed" whatever the run had written.
t.test('a replicate cancelled before any checkpoint says it wrote none', async (t) => {
  const dir = tmpDir(t, 'cancel-no-checkpoint');
  const image = path.join(dir, 'disk.img');
  fs.writeFileSync(image, randomData(4 * MiB, 23));
  const store = path.join(dir, 'store');
  const signal = AbortSignal.abort(new RnodeError(ErrorCodes.CANCELLED, 'replicate stopped by SIGINT'));
  const err = await snap(fsStore(store), image, 'd', { chunkSize: 256 * 1024, signal }).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(isRnodeError(err, ErrorCodes.CANCELLED), `cancelled: ${String(err)}`);
  const e = err as RnodeError;
  t.equal(e.details.checkpoint, 'none', 'details.checkpoint says nothing was kept');
  t.match(e.message, /no checkpoint was written: the next run starts the point over/);
  t.notMatch(e.message, /checkpointed/);
  t.notOk(fs.existsSync(path.join(store, 'r2', 'plain', 'disks', 'd', 'pending', '0000000001')), 'indeed no checkpoint');
});
