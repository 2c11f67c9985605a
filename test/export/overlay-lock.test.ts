// Two writable exports on one overlay file: each kept its own allocation bitmap, so writes one of them had
// acknowledged (flushed) were lost when the other wrote its bitmap. An overlay is now held by one export for its whole
// life: a second one is refused at start (one RNODE_USAGE line, exit 2), and the hold goes with the export, also when
// its process is killed.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { CLI, CLI_NODE_FLAGS, ensureBuilt, runCli, plainNode } from '../helpers/cli.js';
import { fsStore, snap, stopCodecWorkersAtEnd, tmpDir } from '../helpers/images.js';
import { CHUNK, haveTools, makeDisk, run, serveExport, unixUrl } from './helpers.js';

t.setTimeout(120_000);
stopCodecWorkersAtEnd(t);

/** qemu-io commands against an export; ok when every command succeeded (a failed -P check prints "failed"). */
async function qemuIo(socket: string, ...cmds: string[]): Promise<boolean> {
  const r = await run('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), unixUrl(socket, 'vm')]);
  return r.code === 0 && !/fail|error/i.test(r.stdout + r.stderr);
}

async function setup(t: Parameters<typeof tmpDir>[0]) {
  const dir = tmpDir(t, 'export-lock');
  const storeDir = path.join(dir, 'store');
  const image = path.join(dir, 'disk.img');
  makeDisk(image);
  await snap(fsStore(storeDir), image, 'vm', { chunkSize: CHUNK, lease: false });
  return { dir, storeDir, overlay: path.join(dir, 'vm.overlay') };
}

t.test('a second export on a held overlay is refused; the first keeps its writes', { skip: !haveTools && 'tools missing' }, async (t) => {
  const { dir, storeDir, overlay } = await setup(t);
  const store = fsStore(storeDir);
  const first = await serveExport(t, dir, { store, disk: 'vm', writable: true, overlay, tag: 'w1' });
  t.ok(await qemuIo(first.socket, 'write -P 0x11 0 65536', 'flush'), 'the first export takes a write');

  await t.rejects(
    serveExport(t, dir, { store, disk: 'vm', writable: true, overlay, tag: 'w2' }),
    { code: 'RNODE_USAGE', message: /overlay .*vm\.overlay is in use by another running export/ },
    'refused while the first runs',
  );
  t.notOk(fs.existsSync(path.join(dir, 'w2.sock')), 'refused before it listens');
  t.ok(await qemuIo(first.socket, 'write -P 0x22 1048576 65536', 'flush'), 'the first export still writes');
  await first.close();

  const again = await serveExport(t, dir, { store, disk: 'vm', writable: true, overlay, tag: 'w3' });
  t.ok(await qemuIo(again.socket, 'read -P 0x11 0 65536', 'read -P 0x22 1048576 65536'), 'after it stops, the overlay opens again with every write');
});

t.test('rnode export: one line and exit 2 for a held overlay; a killed export holds nothing', { skip: !haveTools && 'tools missing' }, async (t) => {
  ensureBuilt();
  const { dir, storeDir, overlay } = await setup(t);
  const args = (tag: string) => [
    'export',
    '--store',
    storeDir,
    '--disk',
    'vm',
    '--writable',
    '--overlay',
    overlay,
    '--socket',
    path.join(dir, `${tag}.sock`),
  ];
  const child = spawn(...plainNode([...CLI_NODE_FLAGS, CLI, ...args('p1')]), { stdio: ['ignore', 'pipe', 'ignore'] });
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => d.includes('serving') && resolve());
    child.once('exit', (code) => reject(new Error(`the first export exited ${code}`)));
  });

  const second = await runCli(args('p2'), { timeoutMs: 20_000 });
  t.equal(second.code, 2, 'exit 2');
  t.equal(second.stdout, '');
  t.match(second.stderr, /^rnode: RNODE_USAGE: overlay \S+vm\.overlay is in use by another running export; [^\n]+\n$/, 'one RNODE_ line');

  child.kill('SIGKILL');
  await new Promise((resolve) => child.once('exit', resolve));
  const store = fsStore(storeDir);
  const next = await serveExport(t, dir, { store, disk: 'vm', writable: true, overlay, tag: 'p3' });
  t.ok(await qemuIo(next.socket, 'read 0 4096'), 'the kernel dropped the killed export hold: the overlay opens at once');
});
