// qemu-nbd serving an image read-only on a unix socket, for the sections that read through it (nbd: a qcow2 with
// its dirty bitmaps; instant-recovery: the raw image, the NBD path's own cost).
import { spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import net from 'node:net';
import path from 'node:path';

export interface QemuNbd {
  url: (query?: string) => string;
  stop: () => Promise<void>;
}

async function canConnect(socket: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(socket);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

/**
 * qemu-nbd -r -t -e 4 on a unix socket in dir (a new one unless named: a disk's runs need the same one, or rnode
 * rescans, another server to it), exporting the given bitmaps; resolves once it listens.
 */
export async function startQemuNbd(
  dir: string,
  img: string,
  opts: { format: 'raw' | 'qcow2'; bitmaps?: string[]; socket?: string },
): Promise<QemuNbd> {
  const socket = path.join(dir, opts.socket ?? `nbd-${crypto.randomBytes(4).toString('hex')}.sock`);
  const args = ['-r', '-t', '-e', '4', '-f', opts.format, `--socket=${socket}`, ...(opts.bitmaps ?? []).flatMap((b) => ['-B', b]), img];
  // Its stderr is kept for a failure only: the readiness probe below connects and leaves, which it reports.
  const child: ChildProcess = spawn('qemu-nbd', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  let spawnError: Error | undefined;
  child.once('error', (err) => (spawnError = err));
  child.stderr!.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-2000);
  });
  const deadline = Date.now() + 10_000;
  while (!(await canConnect(socket))) {
    if (spawnError || child.exitCode !== null || Date.now() > deadline) {
      if (!spawnError && child.exitCode === null) child.kill('SIGKILL');
      throw new Error(`qemu-nbd ${args.join(' ')} did not start: ${spawnError?.message ?? stderr}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    url: (q) => `nbd+unix:///?socket=${socket}${q ? `&${q}` : ''}`,
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    },
  };
}
