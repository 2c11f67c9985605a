// A long-running command's local HTTP endpoints (agent and serve alike): /metrics (Prometheus text), /healthz
// (the process answers) and /readyz (the command's own checks; 503 with a short reason while one fails).
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { ErrorCodes, listenAddressProblem, RnodeError } from '../errors.js';

export interface HttpHandlers {
  /** The exposition and its content type (the Prometheus text format). */
  metrics(): Promise<{ contentType: string; body: string }>;
  /** Asked at each /readyz; reason: a short sentence on what is not ready (default: the failed checks). */
  readiness(): Readiness | Promise<Readiness>;
}

export interface Readiness {
  ready: boolean;
  checks: Record<string, boolean>;
  reason?: string;
}

export interface HttpEndpoint {
  server: http.Server;
  host: string;
  port: number;
  close(): Promise<void>;
}

/**
 * Connections served at once. A scraper uses one; past this, a connection is closed as soon as it is accepted, so that
 * anyone who can reach the port cannot use up the process's file descriptors with idle connections.
 */
export const MAX_CONNECTIONS = 64;

/**
 * A scraper sends its request as soon as it connects, and Prometheus gives up after its scrape_timeout (10 s by
 * default): a connection without a whole request by then is idle or slow on purpose, and is closed (408). Node's
 * defaults (60 s for the headers, checked every 30 s) let such a connection hold its descriptor for up to 90 s.
 */
const TIMEOUTS = { headersTimeout: 10_000, requestTimeout: 30_000, keepAliveTimeout: 5_000, connectionsCheckingInterval: 1_000 };

export async function serveHttp(listen: { host: string; port: number }, h: HttpHandlers): Promise<HttpEndpoint> {
  const server = http.createServer(TIMEOUTS, (req, res) => {
    const url = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (url === '/metrics') {
      h.metrics().then(
        (m) => {
          res.writeHead(200, { 'content-type': m.contentType }).end(m.body);
        },
        (err: unknown) => {
          res.writeHead(500, { 'content-type': 'text/plain' }).end(`metrics failed: ${String(err)}\n`);
        },
      );
    } else if (url === '/healthz') {
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"ok"}\n');
    } else if (url === '/readyz') {
      Promise.resolve()
        .then(() => h.readiness())
        .then(
          (r) => {
            const reason = r.ready
              ? undefined
              : (r.reason ??
                `failed: ${Object.keys(r.checks)
                  .filter((k) => !r.checks[k])
                  .join(', ')}`);
            res
              .writeHead(r.ready ? 200 : 503, { 'content-type': 'application/json' })
              .end(JSON.stringify({ status: r.ready ? 'ready' : 'not ready', checks: r.checks, ...(reason ? { reason } : {}) }) + '\n');
          },
          (err: unknown) => {
            res
              .writeHead(503, { 'content-type': 'application/json' })
              .end(JSON.stringify({ status: 'not ready', checks: {}, reason: `readiness check failed: ${String(err)}` }) + '\n');
          },
        );
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /metrics, /healthz or /readyz\n');
    }
  });
  server.maxConnections = MAX_CONNECTIONS;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(listen.port, listen.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const addr = server.address() as AddressInfo;
  return {
    server,
    host: addr.address,
    port: addr.port,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

/** A --metrics address that cannot be served (taken, not this machine's, not resolvable) as a usage error. */
export function metricsListenError(err: unknown, listen: { host: string; port: number }): unknown {
  const problem = listenAddressProblem(err);
  return problem
    ? new RnodeError(ErrorCodes.USAGE, `cannot serve --metrics on ${listen.host}:${listen.port} (${problem}); pick another address or port`)
    : err;
}
