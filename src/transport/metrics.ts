// The receiving node's metrics and readiness (`rnode serve --metrics`): its ServerStats read at each scrape into
// the shared prom-client registry (process and runtime metrics included), and what /readyz checks. Names follow the
// agent's (rnode_ prefix, base units, _total for counters, src/agent/metrics.ts); changing one breaks dashboards.
import { Counter, Gauge, type Registry } from 'prom-client';
import type { Readiness } from '../metrics/http.js';
import { createRegistry } from '../metrics/registry.js';
import type { ObjectStore } from '../store/types.js';
import type { ReplicationServer } from './server.js';

type Labels = Record<string, string>;

export class ServeMetrics {
  readonly registry: Registry = createRegistry();

  constructor(server: ReplicationServer, version: string) {
    const registers = [this.registry];
    const s = server.stats;
    // Counters mirror the server's own tallies: reset and set at each scrape, never counted twice.
    const counter = (name: string, help: string, labelNames: string[], read: () => Array<[Labels, number]>) =>
      new Counter({
        name,
        help,
        labelNames,
        registers,
        collect() {
          this.reset();
          for (const [l, v] of read()) this.inc(l, v);
        },
      });
    const total = (name: string, help: string, read: () => number) => counter(name, help, [], () => [[{}, read()]]);
    const gauge = (name: string, help: string, read: () => number) =>
      new Gauge({
        name,
        help,
        registers,
        collect() {
          this.set(read());
        },
      });

    new Gauge({ name: 'rnode_node_info', help: 'Always 1; labels carry the node name and version', labelNames: ['name', 'version'], registers }).set(
      { name: server.name, version },
      1,
    );
    gauge('rnode_serve_connections_open', 'TCP connections open now (accepted, upgraded or not)', () => s.connectionsOpen);
    total('rnode_serve_connections_accepted_total', 'TCP connections accepted', () => s.connectionsAccepted);
    counter('rnode_serve_connections_refused_total', 'Connections and hellos refused, by reason', ['reason'], () => [
      [{ reason: 'max-connections-per-address' }, s.refusedPerAddress],
      [{ reason: 'max-sessions' }, s.busyRefusals],
      [{ reason: 'auth' }, s.authFailures],
      [{ reason: 'handshake-timeout' }, s.handshakeTimeouts],
    ]);
    gauge('rnode_serve_sessions_open', 'Authenticated sessions now', () => s.sessions);
    total('rnode_serve_sessions_total', 'Sessions accepted (hello with a valid token)', () => s.sessionsTotal);
    total('rnode_serve_received_objects_total', 'Whole objects received in PUTs, whatever became of them', () => s.receivedObjects);
    total('rnode_serve_received_bytes_total', 'Bytes of the objects received in PUTs', () => s.receivedBytes);
    counter('rnode_serve_puts_total', 'PUTs by result: stored, rejected (failed validation), failed (the store failed)', ['result'], () => [
      [{ result: 'stored' }, s.puts],
      [{ result: 'rejected' }, s.rejected],
      [{ result: 'failed' }, s.putFailures],
    ]);
    total('rnode_serve_stored_bytes_total', 'Bytes of the objects stored', () => s.putBytes);
    counter('rnode_serve_put_errors_total', 'Rejected and failed PUTs by stable error code and object kind', ['code', 'kind'], () =>
      [...s.putErrors.values()].map((e) => [{ code: e.code, kind: e.kind }, e.count]),
    );
    total('rnode_serve_gets_total', 'Objects (or ranges) read by peers', () => s.gets);
    total('rnode_serve_sent_bytes_total', 'Bytes of objects sent to peers', () => s.getBytes);
    total('rnode_serve_protocol_errors_total', 'Sessions closed for breaking the peer protocol', () => s.protocolErrors);
    gauge('rnode_serve_window_bytes', 'PUT bytes one session may hold unacknowledged (--window)', () => server.windowBytes);
    gauge('rnode_serve_held_bytes', 'PUT bytes all sessions hold now, not yet stored (back-pressure: near sessions x window, peers wait)', () =>
      server.heldBytes(),
    );
    gauge('rnode_serve_session_held_peak_bytes', 'Most PUT bytes one session held at once since the start', () => s.peakSessionBytes);
  }

  /** The text exposition format, as /metrics serves it. */
  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}

/** How long /readyz waits for the store to answer before it calls it unreachable. */
const STORE_CHECK_MS = 3000;

/**
 * Ready: the listener accepts connections and the store answers a listing (its first key) within STORE_CHECK_MS.
 * A listing reads, never writes: a cloud store is asked one LIST per probe, and nothing is left in the store.
 */
export async function serveReadiness(server: ReplicationServer): Promise<Readiness> {
  if (!server.listening)
    return { ready: false, checks: { listening: false, store: false }, reason: 'the peer listener is not accepting connections' };
  const store = server.opts.store;
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${STORE_CHECK_MS / 1000} s`)), STORE_CHECK_MS);
  });
  try {
    await Promise.race([firstKey(store), timeout]);
    return { ready: true, checks: { listening: true, store: true } };
  } catch (err) {
    return { ready: false, checks: { listening: true, store: false }, reason: `store ${store.location} unreachable: ${(err as Error).message}` };
  } finally {
    clearTimeout(timer);
  }
}

async function firstKey(store: ObjectStore): Promise<void> {
  const it = store.list('')[Symbol.asyncIterator]();
  try {
    await it.next();
  } finally {
    await it.return?.();
  }
}
