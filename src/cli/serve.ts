// `rnode serve`: the receiving node. Accepts points from peers into its store and serves recovery reads
// until SIGINT/SIGTERM, then closes the sessions and the store. With --metrics it also serves /metrics, /healthz
// and /readyz, like the agent.
import { ErrorCodes, listenAddressProblem, RnodeError } from '../errors.js';
import type { Logger } from '../log.js';
import type { HttpEndpoint } from '../metrics/http.js';
import type { ReplicationServer } from '../transport/index.js';
import { VERSION } from '../version.js';
import { parseSize } from '../pipeline/grid.js';
import { required, str } from './args.js';
import type { Command } from './command.js';
import { logFormat, logLevel, metricsListen, SERVICE_OPTIONS, SERVICE_USAGE } from './service-flags.js';
import { assertStoreFolder, assertWritableFolder } from './store-flags.js';

/** Freed heap a receiving node keeps for reuse: a few messages' worth (parts are 8 MiB). */
const KEEP_FREED_HEAP_BYTES = 32 * 1024 * 1024;

function parseListen(text: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new RnodeError(ErrorCodes.USAGE, `--listen must be host:port, e.g. 0.0.0.0:7070 or 127.0.0.1:0 (got "${text}")`);
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port };
}

function positive(text: string | undefined, flag: string): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(n) || n < 1)
    throw new RnodeError(ErrorCodes.USAGE, `--${flag} must be a whole number of at least 1 (got "${text}")`);
  return n;
}

export const serveCmd: Command = {
  summary: 'run the receiving node: accept points from peers and serve recovery reads',
  usage: `rnode serve --listen <host:port> --store <store> [--token-file <f>] [--tls-cert <f> --tls-key <f>] [--max-sessions <n>] [--max-connections-per-address <n>] [--handshake-timeout <seconds>] [--bandwidth <bytes/s>] [--window <bytes>] ${SERVICE_USAGE} [--json]`,
  options: {
    listen: { type: 'string' },
    store: { type: 'string' },
    'token-file': { type: 'string' },
    'tls-cert': { type: 'string' },
    'tls-key': { type: 'string' },
    'max-sessions': { type: 'string' },
    bandwidth: { type: 'string' },
    window: { type: 'string' },
    'max-connections-per-address': { type: 'string' },
    'handshake-timeout': { type: 'string' },
    ...SERVICE_OPTIONS,
  },
  async run(v, io) {
    required(v, 'serve', 'listen', 'store');
    // Loaded when serve runs, not when any command starts (see commands.ts).
    const [
      { certificateFingerprint, parseBandwidth, readPemFile, readTokenFile, ReplicationServer, SERVE_WARN_EVENTS },
      { openStore },
      { ObjectValidator },
    ] = await Promise.all([import('../transport/index.js'), import('../store/index.js'), import('../serve/index.js')]);
    const { host, port } = parseListen(str(v, 'listen')!);
    if ((v['tls-cert'] === undefined) !== (v['tls-key'] === undefined)) {
      throw new RnodeError(ErrorCodes.USAGE, 'TLS needs both --tls-cert and --tls-key');
    }
    const tls =
      v['tls-cert'] !== undefined
        ? { cert: readPemFile(str(v, 'tls-cert')!, 'TLS certificate'), key: readPemFile(str(v, 'tls-key')!, 'TLS key', { privateKey: true }) }
        : undefined;
    const token = v['token-file'] !== undefined ? readTokenFile(str(v, 'token-file')!) : undefined;
    const bandwidth = v.bandwidth !== undefined ? parseBandwidth(str(v, 'bandwidth')!) : undefined;
    const windowText = str(v, 'window');
    const windowBytes = windowText !== undefined ? parseWindow(windowText) : undefined;
    const maxSessions = positive(str(v, 'max-sessions'), 'max-sessions');
    const maxConnectionsPerAddress = positive(str(v, 'max-connections-per-address'), 'max-connections-per-address');
    const handshakeSeconds = positive(str(v, 'handshake-timeout'), 'handshake-timeout');
    const handshakeMs = handshakeSeconds !== undefined ? handshakeSeconds * 1000 : undefined;
    const json = v.json === true;
    const metrics = metricsListen(v);
    // Today's lines unless told: text, or JSON with --json.
    const format = logFormat(v, json ? 'json' : 'text');
    const level = logLevel(v);
    // Loaded here, not at the top: pino (and prom-client) would cost every other command their start-up.
    const { Logger } = await import('../log.js');
    const logger = Logger.create({ format, level, sink: { write: (line) => io.err(line.replace(/\n$/, '')) } });
    logger.addSecret(token);
    const log = (event: string, fields: Record<string, unknown> = {}) => logger.log(SERVE_WARN_EVENTS.has(event) ? 'warn' : 'info', event, fields);
    // A receiving node takes and frees a buffer for every socket read and message: its heap keeps what it freed for the
    // next ones instead of handing it back and faulting it in again (native keepFreedHeap has the figures).
    (await import('../native/index.js')).keepFreedHeap(KEEP_FREED_HEAP_BYTES);
    assertStoreFolder(str(v, 'store')!, true); // a file there: refused now, not blamed on each sender later
    assertWritableFolder(str(v, 'store')!); // and so is a read-only one: the node came up "storing into" it
    const store = await openStore(str(v, 'store')!);
    let server: ReplicationServer;
    try {
      server = await ReplicationServer.start({
        store,
        checks: new ObjectValidator(store),
        host,
        port,
        token,
        tls,
        maxSessions,
        maxConnectionsPerAddress,
        handshakeMs,
        bandwidth,
        windowBytes,
        log,
      });
    } catch (err) {
      await store.close();
      const e = err as NodeJS.ErrnoException;
      const problem = listenAddressProblem(err);
      if (problem) throw new RnodeError(ErrorCodes.USAGE, `cannot listen on ${host}:${port} (${problem}); pick another --listen address or port`);
      if (tls && /key|cert|pem|asn1/i.test(e.message ?? '')) {
        throw new RnodeError('RNODE_TRANSPORT_TLS', `cannot use the TLS certificate/key: ${e.message}; pass a PEM certificate and its private key`);
      }
      throw err;
    }
    let http: HttpEndpoint | undefined;
    try {
      if (metrics) http = await serveMetrics(metrics, server, logger);
    } catch (err) {
      await server.close();
      await store.close();
      throw err;
    }
    const info = {
      listening: server.url,
      store: store.location,
      tls: !!tls,
      auth: token !== undefined,
      ...(tls ? { fingerprint: certificateFingerprint(tls.cert) } : {}),
      // The address actually bound (--metrics 127.0.0.1:0 picks a free port): scrapers need it.
      ...(http ? { metrics: `${http.host.includes(':') ? `[${http.host}]` : http.host}:${http.port}` } : {}),
    };
    if (json) io.out(JSON.stringify(info));
    else {
      io.out(`listening on ${info.listening}, storing into ${info.store}${token ? ', token required' : ', NO token required'}`);
      if (info.metrics) io.out(`  metrics on http://${info.metrics}/metrics`);
      if (info.fingerprint) io.out(`  certificate SHA-256 ${info.fingerprint} (clients: --pin-sha256 ${info.fingerprint})`);
    }
    // SIGTERM/SIGINT: stop accepting, let the puts in flight land, close the store, exit 0 (a requested stop of
    // a service is a success). A second signal finds no handler and ends the process at once.
    const signal = await new Promise<string>((resolve) => {
      const stop = (sig: string) => {
        process.off('SIGINT', onInt);
        process.off('SIGTERM', onTerm);
        resolve(sig);
      };
      const onInt = () => stop('SIGINT');
      const onTerm = () => stop('SIGTERM');
      process.on('SIGINT', onInt);
      process.on('SIGTERM', onTerm);
    });
    log('stopping', { signal, sessions: server.stats.sessions });
    await http?.close();
    await server.close();
    await store.close();
    return 0;
  },
};

/** /metrics, /healthz and /readyz of the receiving node on `listen`. */
async function serveMetrics(listen: { host: string; port: number }, server: ReplicationServer, log: Logger): Promise<HttpEndpoint> {
  const [{ metricsListenError, serveHttp }, { ServeMetrics, serveReadiness }] = await Promise.all([
    import('../metrics/http.js'),
    import('../transport/metrics.js'),
  ]);
  const metrics = new ServeMetrics(server, VERSION);
  let http: HttpEndpoint;
  try {
    http = await serveHttp(listen, { metrics: () => metrics.render(), readiness: () => serveReadiness(server) });
  } catch (err) {
    throw metricsListenError(err, listen);
  }
  log.info('serving /metrics, /healthz, /readyz', { listen: `${http.host}:${http.port}` });
  return http;
}

/** --window: bytes a session may have in flight, at least 64 KiB (the node's smallest frame window). */
function parseWindow(text: string): number {
  const n = parseSize(text);
  if (n === undefined || n < 64 * 1024) {
    throw new RnodeError(ErrorCodes.USAGE, `--window must be a size of at least 64KiB, e.g. 64MiB (got "${text}")`);
  }
  return n;
}
