// The NBD server: listens on a unix socket or TCP, runs one session per connection (handshake with a deadline,
// then transmission) and keeps the counters an operator sees. Policy on where it may listen lives in policy.ts.
import net from 'node:net';
import tls from 'node:tls';
import { negotiate, type ExportCatalog } from './handshake.js';
import { SocketIo } from './io.js';
import { transmit } from './transmission.js';
import { listenUnix } from './unix-socket.js';
import { timerDelay } from '../timer-delay.js';

export interface ExportServerOptions {
  catalog: ExportCatalog;
  /** Unix socket path, or host + port. */
  socket?: string;
  host?: string;
  port?: number;
  /** PEM certificate and key: STARTTLS offered and required. */
  tls?: { cert: string | Buffer; key: string | Buffer };
  maxConnections?: number;
  handshakeTimeoutMs?: number;
  maxBlock?: number;
  maxInFlight?: number;
  maxInFlightBytes?: number;
  log?: (event: string, fields: Record<string, unknown>) => void;
}

export interface ServerStats {
  connections: number;
  activeConnections: number;
  bytesServed: number;
  refused: number;
  protocolErrors: number;
}

export const MAX_BLOCK = 32 * 1024 * 1024;
/**
 * Sessions at once. With at most MAX_BLOCK bytes of requests being served per session and 4 MiB of replies queued
 * on its socket (io.ts), the memory requests can pin beyond the cache is bounded by MAX_CONNECTIONS * 36 MiB
 * (576 MiB), whatever the clients do.
 */
export const MAX_CONNECTIONS = 16;

export class ExportServer {
  readonly stats: ServerStats = { connections: 0, activeConnections: 0, bytesServed: 0, refused: 0, protocolErrors: 0 };
  private readonly sessions = new Set<SocketIo>();
  private readonly done = new Set<Promise<void>>();
  private readonly tlsContext?: tls.SecureContext;
  private removeSocket?: () => void;

  private constructor(
    private readonly server: net.Server,
    private readonly opts: ExportServerOptions,
  ) {
    if (opts.tls) this.tlsContext = tls.createSecureContext({ cert: opts.tls.cert, key: opts.tls.key, minVersion: 'TLSv1.2' });
    server.on('connection', (s) => this.accept(s));
  }

  static async start(opts: ExportServerOptions): Promise<ExportServer> {
    const server = net.createServer({ pauseOnConnect: true });
    const self = new ExportServer(server, opts);
    if (opts.socket) {
      self.removeSocket = await listenUnix(server, opts.socket);
      return self;
    }
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(opts.port ?? 10809, opts.host ?? '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    return self;
  }

  /** The TCP port actually bound (for port 0), or undefined on a unix socket. */
  get port(): number | undefined {
    const a = this.server.address();
    return a && typeof a === 'object' ? a.port : undefined;
  }

  private accept(socket: net.Socket): void {
    const log = this.opts.log;
    if (this.sessions.size >= (this.opts.maxConnections ?? MAX_CONNECTIONS)) {
      this.stats.refused++;
      log?.('connection-refused', { reason: 'too many connections' });
      socket.destroy();
      return;
    }
    socket.setNoDelay?.(true);
    // A TCP peer that vanished without a FIN (half-open) would hold its slot forever: keepalive finds it.
    if (socket.remoteAddress !== undefined) socket.setKeepAlive(true, 30_000);
    const io = new SocketIo(socket, this.tlsContext);
    this.sessions.add(io);
    this.stats.connections++;
    this.stats.activeConnections++;
    const p = this.session(io).finally(() => {
      this.sessions.delete(io);
      this.stats.activeConnections--;
      this.done.delete(p);
      io.close();
    });
    this.done.add(p);
  }

  private async session(io: SocketIo): Promise<void> {
    const o = this.opts;
    const maxBlock = o.maxBlock ?? MAX_BLOCK;
    // A client that connects and then stalls (half-open, slowloris) is dropped once the handshake deadline passes.
    const timer = setTimeout(
      () => {
        o.log?.('handshake-timeout', {});
        io.close();
      },
      timerDelay(o.handshakeTimeoutMs ?? 10_000),
    );
    let chosen;
    try {
      chosen = await negotiate(io, o.catalog, { tls: o.tls ? 'require' : 'off', tlsAvailable: !!o.tls, maxBlock });
    } catch (err) {
      this.protocolError(err, 'handshake');
      return;
    } finally {
      clearTimeout(timer);
    }
    if (!chosen) return;
    o.log?.('client', { export: chosen.name, point: chosen.image.point, structured: chosen.structured, tls: io.encrypted });
    try {
      await transmit(io, chosen, {
        maxBlock,
        maxInFlight: o.maxInFlight ?? 64,
        maxInFlightBytes: o.maxInFlightBytes ?? MAX_BLOCK,
        onServed: (n) => {
          this.stats.bytesServed += n;
        },
        log: o.log,
      });
    } catch (err) {
      this.protocolError(err, 'transmission');
    }
  }

  private protocolError(err: unknown, phase: string): void {
    const message = (err as Error)?.message ?? String(err);
    // A client going away is normal; anything else is a client breaking the protocol.
    if (/closed|ECONNRESET|EPIPE/.test(message)) return;
    this.stats.protocolErrors++;
    this.opts.log?.('client-dropped', { phase, reason: message.slice(0, 200) });
  }

  async close(): Promise<void> {
    // First, while the path still names this server's socket (unless someone replaced it: then it is left alone).
    this.removeSocket?.();
    // net.Server.close waits for open connections: end the sessions first.
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const s of this.sessions) s.close();
    await Promise.allSettled([...this.done]);
    await closed;
  }
}
