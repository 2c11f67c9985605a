// An export's unix socket path: a live socket of another process (qemu-nbd, another export) or anything that is not a
// socket is never replaced, only a stale socket is; and on stop the path goes only while it is still this export's.
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { listenRefused } from './policy.js';

/** sun_path holds 108 bytes with its NUL; libuv silently cuts a longer path short. */
const MAX_SOCKET_PATH = 107;

/**
 * Makes server listen at file and returns what removes file on stop. libuv unlinks the path a server listened on
 * when it closes, whatever is there by then, so the server listens on a private name beside file that is hard-linked
 * to it: link never replaces anything, and closing the server removes only the private name (already gone).
 */
export async function listenUnix(server: net.Server, file: string): Promise<() => void> {
  const dir = path.dirname(file);
  const spare = path.join(dir, `.rnode-${crypto.randomBytes(4).toString('hex')}`);
  if (Buffer.byteLength(file) > MAX_SOCKET_PATH || Buffer.byteLength(spare) > MAX_SOCKET_PATH) {
    const why = `ENAMETOOLONG: a unix socket path has at most ${MAX_SOCKET_PATH} bytes, its folder at most ${MAX_SOCKET_PATH - 15}`;
    throw listenRefused(file, why, 'pick a shorter socket path');
  }
  await removeStale(file, dir);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(spare, () => {
      server.off('error', reject);
      resolve();
    });
  });
  let mine: fs.BigIntStats;
  try {
    fs.chmodSync(spare, 0o600);
    fs.linkSync(spare, file);
    mine = fs.lstatSync(file, { bigint: true });
  } catch (err) {
    server.close();
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    throw listenRefused(file, code === 'EEXIST' ? 'EADDRINUSE: another process took the path just now' : code);
  } finally {
    fs.rmSync(spare, { force: true });
  }
  return () => {
    try {
      const now = fs.lstatSync(file, { bigint: true });
      if (now.dev === mine.dev && now.ino === mine.ino) fs.unlinkSync(file);
    } catch {
      // already gone
    }
  };
}

/** Removes file if it is a socket nothing listens on; refuses anything else that is there. */
async function removeStale(file: string, dir: string): Promise<void> {
  let st: fs.BigIntStats;
  try {
    st = fs.lstatSync(file, { bigint: true });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT' && code !== 'ENOTDIR') throw err;
    // libuv reports a missing folder as EACCES, which sends the user after permissions.
    if (!fs.existsSync(dir)) throw listenRefused(file, `ENOENT: there is no folder ${dir}`, 'create the folder or pick another socket path');
    if (!fs.statSync(dir).isDirectory()) throw listenRefused(file, `ENOTDIR: ${dir} is not a folder`, 'pick another socket path');
    return;
  }
  if (!st.isSocket()) throw listenRefused(file, 'EEXIST: it is not a socket, and is never replaced', 'pick another socket path');
  const answer = await connectCode(file);
  if (answer === 'ENOENT') return;
  if (answer !== 'ECONNREFUSED') {
    const why = answer === 'connected' ? 'EADDRINUSE: another process serves on it' : `EADDRINUSE: a socket there may be in use (${answer})`;
    throw listenRefused(file, why);
  }
  // Stale: nothing listens. Only the socket just probed is removed, not one another export bound meanwhile.
  const now = fs.lstatSync(file, { bigint: true, throwIfNoEntry: false });
  if (now && now.dev === st.dev && now.ino === st.ino) fs.rmSync(file, { force: true });
}

function connectCode(file: string): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect(file);
    s.once('connect', () => {
      s.destroy();
      resolve('connected');
    });
    s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'));
  });
}
