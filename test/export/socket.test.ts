// `export --socket <path>` took over a live socket of another process: it unlinked the path and bound its own, and on
// stop removed the path even when it was no longer its own, so a running qemu-nbd became unreachable and reconnecting
// clients were handed another disk. Now a live socket, and anything that is not a socket, is refused; only a stale
// socket is replaced; on stop the path goes only while it is still this export's. A missing folder says so (it said
// EACCES).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { startExport } from '../../src/export/index.js';
import { runCli } from '../helpers/cli.js';
import { fsStore, snap, stopCodecWorkersAtEnd, tmpDir } from '../helpers/images.js';
import { CHUNK, haveTools, makeDisk, MiB, run, SIZE, unixUrl } from './helpers.js';

t.setTimeout(120_000);
stopCodecWorkersAtEnd(t);

/** The export size the server on socket reports, or undefined when nothing answers there. */
async function sizeAt(socket: string): Promise<number | undefined> {
  const r = await run('nbdinfo', ['--size', unixUrl(socket, '')]);
  return r.code === 0 ? Number(r.stdout.trim()) : undefined;
}

/** qemu-nbd serving a 1 MiB image on socket (another size than the test disk's), stopped with the test. */
async function qemuNbd(t: Parameters<typeof tmpDir>[0], socket: string): Promise<void> {
  const img = `${socket}.img`;
  fs.writeFileSync(img, Buffer.alloc(MiB));
  const q = spawn('qemu-nbd', ['--persistent', '-f', 'raw', `--socket=${socket}`, img], { stdio: 'ignore' });
  t.teardown(() => {
    q.kill('SIGKILL');
  });
  for (let i = 0; i < 100 && (await sizeAt(socket)) !== MiB; i++) await sleep(50);
}

t.test('export --socket never takes a path over', { skip: !haveTools && 'tools missing' }, async (t) => {
  const dir = tmpDir(t, 'export-socket');
  const storeDir = path.join(dir, 'store');
  const image = path.join(dir, 'disk.img');
  makeDisk(image);
  const store = fsStore(storeDir);
  await snap(store, image, 'vm', { chunkSize: CHUNK, lease: false });
  const serve = (socket: string) => startExport({ store, disk: 'vm', socket });

  t.test('a live socket of another process is refused, and it keeps serving', async (t) => {
    const socket = path.join(dir, 'q.sock');
    await qemuNbd(t, socket);
    await t.rejects(serve(socket), { code: 'RNODE_USAGE', message: /^cannot listen on \S+q\.sock \(EADDRINUSE: another process serves on it\)/ });
    t.equal(await sizeAt(socket), MiB, 'qemu-nbd still answers there');
    const link = path.join(dir, 'link.sock');
    fs.symlinkSync(socket, link);
    await t.rejects(serve(link), { code: 'RNODE_USAGE', message: /is not a socket/ }, 'a symlink to it too');
    t.ok(fs.lstatSync(link).isSymbolicLink(), 'the symlink is left alone');

    const cli = await runCli(['export', '--store', storeDir, '--disk', 'vm', '--socket', socket], { timeoutMs: 20_000 });
    t.equal(cli.code, 2, 'rnode export: exit 2');
    t.match(cli.stderr, /^rnode: RNODE_USAGE: cannot listen on \S+q\.sock \(EADDRINUSE[^\n]*\n$/, 'one RNODE_ line');
    t.equal(await sizeAt(socket), MiB, 'qemu-nbd still answers there');
  });

  t.test('a file that is not a socket is refused and left alone', async (t) => {
    const file = path.join(dir, 'notes.txt');
    fs.writeFileSync(file, 'keep me');
    await t.rejects(serve(file), { code: 'RNODE_USAGE', message: /notes\.txt \(EEXIST: it is not a socket, and is never replaced\)/ });
    t.equal(fs.readFileSync(file, 'utf8'), 'keep me');
  });

  t.test('a stale socket (nothing listens) is replaced', async (t) => {
    const socket = path.join(dir, 'stale.sock');
    // A socket file nothing listens on: a hard link outlives the server that bound it.
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(path.join(dir, 'gone.sock'), resolve));
    fs.linkSync(path.join(dir, 'gone.sock'), socket);
    await new Promise((resolve) => server.close(resolve));
    const exp = await serve(socket);
    t.equal(await sizeAt(socket), SIZE, 'the export serves there');
    await exp.close();
    t.notOk(fs.existsSync(socket), 'and removes its socket when it stops');
    t.same(
      fs.readdirSync(dir).filter((f) => f.startsWith('.rnode-')),
      [],
      'no private name is left behind',
    );
  });

  t.test('on stop, a path that is no longer its socket is left alone', async (t) => {
    const socket = path.join(dir, 's.sock');
    const exp = await serve(socket);
    fs.renameSync(socket, path.join(dir, 'moved.sock'));
    await qemuNbd(t, socket);
    await exp.close();
    t.equal(await sizeAt(socket), MiB, 'qemu-nbd, which now serves on the path, is still reachable');
  });

  t.test('a missing folder is named as the cause', async (t) => {
    await t.rejects(serve(path.join(dir, 'no', 'such', 's.sock')), {
      code: 'RNODE_USAGE',
      message: `cannot listen on ${path.join(dir, 'no', 'such', 's.sock')} (ENOENT: there is no folder ${path.join(dir, 'no', 'such')}); create the folder or pick another socket path`,
    });
    await t.rejects(serve(path.join(dir, 'notes.txt', 's.sock')), { code: 'RNODE_USAGE', message: /ENOTDIR: \S+notes\.txt is not a folder/ });
    await t.rejects(serve(path.join(dir, 'x'.repeat(110))), { code: 'RNODE_USAGE', message: /ENAMETOOLONG/ }, 'a path libuv would cut short');
  });
});
