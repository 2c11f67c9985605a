// SIGTERM to a replicate of an NBD source. Three ways it went wrong: a signal while the NBD handshake waited (a busy
// server) killed the process with no RNODE_CANCELLED line and no JSON error; the reader, waiting for a buffer when the
// signal came, sent one more READ when the buffer came back (a slow server's stop took twice as long); and the stop
// said "the chunks stored so far are checkpointed: run the same command again to resume", though an NBD source is
// never resumed (it cannot show its data is still the data read), so the next run read the whole point again. A slow
// server also holds a first stop long enough to test the second signal's exit at once.
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { spawnCli } from '../helpers/cli.js';
import { MiB, randomData, tmpDir } from '../helpers/images.js';

function spawnReplicate(t: Test, source: string, store: string) {
  return spawnCli(t, ['replicate', '--source', source, '--target', store, '--disk', 'd', '--json']);
}

async function until(what: string, ok: () => boolean, ms = 20_000): Promise<void> {
  for (const deadline = Date.now() + ms; !ok();) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

t.test('SIGTERM while the NBD handshake waits: exit 143 with RNODE_CANCELLED, at once', async (t) => {
  const dir = tmpDir(t, 'nbd-stop-handshake');
  const socket = path.join(dir, 'mute.sock');
  // A server that accepts and never says a word: the handshake waits (up to 30 s) for its greeting.
  const held: net.Socket[] = [];
  const mute = net.createServer((s) => void held.push(s));
  await new Promise<void>((r) => mute.listen(socket, () => r()));
  t.teardown(() => {
    for (const s of held) s.destroy();
    mute.close();
  });
  const { child, out, exited } = spawnReplicate(t, `nbd+unix:///?socket=${socket}`, path.join(dir, 'store'));
  await until('the connection', () => held.length > 0);
  const signalled = Date.now();
  child.kill('SIGTERM');
  t.equal(await exited, 143, out.stderr);
  t.ok(Date.now() - signalled < 10_000, 'it did not wait for the handshake timeout');
  t.match(JSON.parse(out.stdout), { error: { code: 'RNODE_CANCELLED', message: /replicate stopped by SIGTERM/ } });
  t.match(out.stderr, /RNODE_CANCELLED: replicate stopped by SIGTERM/);
});

/**
 * A replicate of a random image of `size` from nbdkit, every READ answered after `delay`, running once `readsFirst`
 * READs were sent; reads() counts the READs nbdkit logged.
 */
async function slowReplicate(t: Test, tag: string, size: number, delay: string, readsFirst: number) {
  const dir = tmpDir(t, tag);
  const image = path.join(dir, 'disk.raw');
  fs.writeFileSync(image, randomData(size, 9));
  const socket = path.join(dir, 'k.sock');
  const log = path.join(dir, 'nbd.log');
  const server = spawn('nbdkit', ['-f', '-r', '-U', socket, '--filter=log', '--filter=delay', 'file', image, `rdelay=${delay}`, `logfile=${log}`], {
    stdio: 'ignore',
  });
  t.teardown(() => {
    server.kill('SIGKILL');
  });
  await until('nbdkit', () => fs.existsSync(socket));
  const reads = () => (fs.existsSync(log) ? (fs.readFileSync(log, 'utf8').match(/ Read id=\d+ /g)?.length ?? 0) : 0);
  const run = spawnReplicate(t, `nbd+unix:///?socket=${socket}`, path.join(dir, 'store'));
  await until('reads', () => reads() >= readsFirst);
  return { ...run, reads };
}

t.test('SIGTERM to an NBD replicate: no read after it, and the message says the next run reads the point again', async (t) => {
  // Every READ answered after 1.5 s: the run's buffers are all waiting on the server most of the time.
  const { child, out, exited, reads } = await slowReplicate(t, 'nbd-stop-reads', 64 * MiB, '1500ms', 4);
  child.kill('SIGTERM');
  // A READ sent as the signal arrives is logged a moment later; the one this test is about was sent once a read in
  // flight came back (a buffer freed), up to 1.5 s after the signal.
  await new Promise((r) => setTimeout(r, 300));
  const atSignal = reads();
  t.equal(await exited, 143, out.stderr);
  t.equal(reads(), atSignal, `no READ was sent once the signal was in (${atSignal} before)`);
  const err = JSON.parse(out.stdout).error;
  t.equal(err.code, 'RNODE_CANCELLED');
  t.match(err.message, /the source \(nbd\) cannot show that its data is still the data read, so the next run reads the point again/);
  t.notMatch(err.message, /resume/);
});

// A second signal exits at once; with --json its error was on stderr only, and stdout was empty: a caller reading the
// one JSON document the command promises got nothing to parse. (The first stop waits here for the READs in flight.)
t.test('a second SIGINT exits at once, and with --json says so as the one JSON document on stdout', async (t) => {
  const { child, out, exited } = await slowReplicate(t, 'nbd-second-signal', 16 * MiB, '5', 2);
  child.kill('SIGINT');
  // The second once the first is in: two sent before a loaded machine ran the process were one pending signal.
  await until('the first stop', () => out.stderr.includes('send it again to stop at once'));
  child.kill('SIGINT');
  t.equal(await exited, 130, 'exit 130 (128 + SIGINT)');
  t.match(
    JSON.parse(out.stdout),
    { error: { code: 'RNODE_CANCELLED', message: /replicate stopped at once by a second SIGINT/ } },
    'one JSON document',
  );
});
