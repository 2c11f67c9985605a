// Helpers for the transport tests: a receiving node in this process (the same ReplicationServer `rnode serve`
// runs) over a throwaway fs store, RemoteStores that close with the test, and a TCP proxy that cuts connections.
import net from 'node:net';
import path from 'node:path';
import { ObjectValidator } from '../../src/serve/index.js';
import type { ObjectStore } from '../../src/store/index.js';
import { RemoteStore, ReplicationServer, type RemoteStoreOptions, type ServeOptions } from '../../src/transport/index.js';
import { fsStore } from '../helpers/images.js';
import { plainNode } from '../helpers/cli.js';

interface Teardown {
  teardown(fn: () => void | Promise<void>): void;
}

export async function startNode(
  t: Teardown,
  dir: string,
  opts: Partial<ServeOptions> & { store?: ObjectStore } = {},
): Promise<{ server: ReplicationServer; storeDir: string; store: ObjectStore; url: string }> {
  const storeDir = path.join(dir, 'recv');
  const store = opts.store ?? fsStore(storeDir);
  const server = await ReplicationServer.start({ host: '127.0.0.1', port: 0, checks: new ObjectValidator(store), ...opts, store });
  t.teardown(() => server.close());
  return { server, storeDir, store, url: server.url };
}

export function remote(t: Teardown, url: string, opts: Partial<RemoteStoreOptions> = {}): RemoteStore {
  const r = new RemoteStore({ url, initialBudgetMs: 2000, backoffBaseMs: 20, backoffMaxMs: 200, ...opts });
  t.teardown(() => r.close());
  return r;
}

/** Client bytes past which a connection carries PUTs: more than the upgrade, hello and first requests take. */
const PUTS_BEGUN_BYTES = 64 * 1024;

/**
 * A TCP proxy to target that cuts each connection (both sides destroyed) once `cutAfter(n)` bytes went from the
 * client to the server on it; n counts connections from 0. Undefined: never cut that connection.
 * halfDead: a cut takes the client's side only; the node's stays open and silent.
 * cutAtAck(n): connection n is cut instead at the node's first answer once the client's PUTs began (it has sent
 * more than PUTS_BEGUN_BYTES): that answer never arrives, and the node has stored the PUT it answers, however slowly
 * the client sends.
 */
export async function cuttingProxy(
  t: Teardown,
  targetPort: number | (() => number),
  cutAfter: (n: number) => number | undefined,
  opts: { halfDead?: boolean; cutAtAck?: (n: number) => boolean } = {},
): Promise<{ port: number; cuts: number; connections: number; bytes: number }> {
  const state = { port: 0, cuts: 0, connections: 0, bytes: 0 };
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const atAck = opts.cutAtAck?.(state.connections) ?? false;
    const limit = cutAfter(state.connections++);
    // A getter lets the target move (a restarted server on another port) under connections made later.
    const upstream = net.connect(typeof targetPort === 'number' ? targetPort : targetPort(), '127.0.0.1');
    sockets.add(client);
    sockets.add(upstream);
    let seen = 0;
    let done = false;
    // halfDead: the client's side goes, the node's stays open and silent (a link lost where the node does not see it).
    const cut = () => {
      client.destroy();
      if (!opts.halfDead || !done) upstream.destroy();
    };
    client.on('data', (b: Buffer) => {
      if (done) return;
      state.bytes += b.length;
      if (limit !== undefined && seen + b.length >= limit) {
        const part = b.subarray(0, Math.max(0, limit - seen));
        seen = limit;
        done = true;
        state.cuts++;
        if (part.length) upstream.write(part);
        setImmediate(cut);
        return;
      }
      seen += b.length;
      if (!upstream.write(b)) {
        client.pause();
        upstream.once('drain', () => client.resume());
      }
    });
    upstream.on('data', (b: Buffer) => {
      if (done && opts.halfDead) return;
      if (atAck && !done && seen > PUTS_BEGUN_BYTES) {
        done = true;
        state.cuts++;
        setImmediate(cut);
        return;
      }
      if (!client.write(b)) {
        upstream.pause();
        client.once('drain', () => upstream.resume());
      }
    });
    client.on('error', cut);
    upstream.on('error', cut);
    client.on('close', cut);
    upstream.on('close', cut);
    client.on('close', () => sockets.delete(client));
    upstream.on('close', () => sockets.delete(upstream));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  state.port = (server.address() as net.AddressInfo).port;
  t.teardown(
    () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  );
  return state;
}

/** `node dist/bin/rnode.js serve ... --json` as a child; resolves once it listens. The caller must build dist first. */
export async function spawnServe(
  t: Teardown,
  cli: string,
  args: string[],
): Promise<{ child: import('node:child_process').ChildProcess; url: string; info: Record<string, unknown>; log: () => string }> {
  const { spawn } = await import('node:child_process');
  const child = spawn(...plainNode([cli, 'serve', '--json', ...args]), { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let err = '';
  child.stderr!.on('data', (b) => {
    err += b;
  });
  const line = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (b) => {
      out += b;
      if (out.includes('\n')) resolve(out.split('\n')[0]);
    });
    child.on('exit', (c, s) => reject(new Error(`serve exited (${c ?? s}) before listening: ${err}`)));
  });
  const info = JSON.parse(line) as Record<string, unknown>;
  return { child, url: info.listening as string, info, log: () => err };
}

/** Polls until fn() is true (or throws after ms). */
export async function until(fn: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
