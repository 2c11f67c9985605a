// The exports a Management Server asks this node to serve (export.start / export.stop): each is the same
// startExport `rnode export` runs, with its store and secrets resolved like a job's, a lease, and counters.
import { isRnodeError, ErrorCodes, RnodeError } from '../errors.js';
import { assertOverlayOutsideStore, EXPORT_WARN_EVENTS, startExport, type ExportStats, type RunningExport } from '../export/index.js';
import type { WrappedStore } from '../store/index.js';
import type { Logger } from '../log.js';
import { ProtoErrors, type AgentReport, type ExportCounters, type ExportSpec } from './protocol.js';
import { resolveEncryptionKey, resolveSecret } from './secrets.js';
import { openStoreOf } from './stores.js';
import { drained, type StateDir } from './state.js';
import { timerDelay } from '../timer-delay.js';
import { parseListen } from '../metrics/listen.js';

export interface ExportManagerOptions {
  state: StateDir;
  log: Logger;
  report: (r: AgentReport) => void;
  status: (m: { exportId: string; counters: ExportCounters }) => void;
  statusMs?: number;
  /** Exports running at once on this node. */
  max?: number;
}

interface Entry {
  spec: ExportSpec;
  exp?: RunningExport;
  store?: WrappedStore;
  lease?: NodeJS.Timeout;
  starting?: Promise<void>;
}

export class ExportManager {
  private readonly running = new Map<string, Entry>();
  private readonly timer: NodeJS.Timeout;
  private closed = false;
  private saving: Promise<void> = Promise.resolve();

  constructor(private readonly o: ExportManagerOptions) {
    this.timer = setInterval(() => this.tick(), o.statusMs ?? 5000);
    this.timer.unref();
  }

  get count(): number {
    return this.running.size;
  }

  /** Starts an export, or renews the lease of the running one with that id. Refusals throw (the agent answers error). */
  start(spec: ExportSpec): void {
    // The node is stopping (stopAll): an export started now would be served past the shutdown, and never ended.
    if (this.closed)
      throw new RnodeError(ProtoErrors.RESTARTED, `the node is stopping; export ${spec.exportId} was not started: start it on another node`);
    const have = this.running.get(spec.exportId);
    if (have) {
      if (have.spec.disk !== spec.disk || have.spec.store.url !== spec.store.url) {
        throw new RnodeError(
          ProtoErrors.DUPLICATE_JOB,
          `export ${spec.exportId} is already serving disk ${have.spec.disk}; stop it first or use another exportId`,
        );
      }
      have.spec.leaseSeconds = spec.leaseSeconds;
      this.arm(have);
      if (have.exp) this.started(have);
      return;
    }
    if (this.running.size >= (this.o.max ?? 16)) {
      throw new RnodeError(ProtoErrors.UNSUPPORTED, `this node already serves ${this.running.size} exports; stop one first`);
    }
    const e: Entry = { spec: { ...spec } };
    this.running.set(spec.exportId, e);
    this.persist();
    e.starting = this.open(e).catch((err) => {
      this.running.delete(spec.exportId);
      this.persist();
      clearTimeout(e.lease);
      this.o.log.error('export failed to start', { exportId: spec.exportId, code: isRnodeError(err) ? err.code : undefined, err });
      this.o.report({
        type: 'export.stopped',
        exportId: spec.exportId,
        reason: 'failed',
        code: isRnodeError(err) ? err.code : ErrorCodes.INTERNAL,
        message: ((err as Error).message || 'failed').slice(0, 4096),
      });
    });
  }

  private async open(e: Entry): Promise<void> {
    const { spec } = e;
    const log = this.o.log.child({ exportId: spec.exportId, disk: spec.disk });
    const where = listenOf(spec);
    if (spec.overlay) assertOverlayOutsideStore(spec.overlay, spec.store.url);
    const encryption = await resolveEncryptionKey(spec.encryption, this.o.state, log);
    const tls = spec.tls
      ? {
          cert: await resolveSecret(spec.tls.cert, this.o.state, log),
          key: await resolveSecret(spec.tls.key, this.o.state, log, { privateKey: true }),
        }
      : undefined;
    e.store = await openStoreOf(spec.store, this.o.state, log);
    try {
      e.exp = await startExport({
        store: e.store,
        disk: spec.disk,
        point: spec.point,
        encryption,
        ...where,
        writable: spec.writable,
        overlay: spec.overlay,
        cacheBytes: spec.cacheBytes,
        tls,
        log: (event, fields) => (EXPORT_WARN_EVENTS.has(event) ? log.warn(event, fields) : log.info(event, fields)),
      });
    } catch (err) {
      await e.store.close();
      throw err;
    }
    if (!this.running.has(spec.exportId)) {
      await this.close(e);
      return;
    } // stopped while starting
    log.info('export serving', { url: e.exp.url, point: e.exp.point });
    this.arm(e);
    this.started(e);
  }

  private started(e: Entry): void {
    const s = e.exp!.stats();
    // Never past the longest timer (a lease of 1e306 s made an invalid date: RNODE_INTERNAL).
    const leaseUntil = e.spec.leaseSeconds ? new Date(Date.now() + timerDelay(e.spec.leaseSeconds * 1000)).toISOString() : undefined;
    this.o.report({
      type: 'export.started',
      exportId: e.spec.exportId,
      url: s.url,
      disk: s.disk,
      point: s.point,
      writable: s.writable,
      ...(leaseUntil ? { leaseUntil } : {}),
    });
  }

  /** (Re)starts the lease timer: without a renewal the export stops when it runs out. */
  private arm(e: Entry): void {
    clearTimeout(e.lease);
    if (!e.spec.leaseSeconds) return;
    e.lease = setTimeout(
      () => {
        this.stop(e.spec.exportId, 'lease-expired').catch(() => undefined);
      },
      timerDelay(e.spec.leaseSeconds * 1000),
    );
    e.lease.unref();
  }

  /** Stops an export; false when none has that id. */
  async stop(exportId: string, reason: 'requested' | 'lease-expired' | 'shutdown' = 'requested'): Promise<boolean> {
    const e = this.running.get(exportId);
    if (!e) return false;
    this.running.delete(exportId);
    this.persist();
    clearTimeout(e.lease);
    await e.starting;
    if (!e.exp) return true; // it failed to start and has reported so
    const counters = countersOf(e.exp.stats());
    await this.close(e);
    this.o.log.info('export stopped', { exportId, reason, ...counters });
    this.o.report({ type: 'export.stopped', exportId, reason, counters });
    return true;
  }

  private async close(e: Entry): Promise<void> {
    await e.exp?.close().catch((err) => this.o.log.error('closing an export failed', { exportId: e.spec.exportId, err }));
    await e.store?.close().catch(() => undefined);
  }

  private tick(): void {
    for (const e of this.running.values()) if (e.exp) this.o.status({ exportId: e.spec.exportId, counters: countersOf(e.exp.stats()) });
  }

  /**
   * Ends, with export.stopped, the exports a previous run of the node served and never ended (it was killed): the
   * server held them as served for ever. Called once at start, as JobRunner.endInterrupted.
   */
  async endInterrupted(): Promise<void> {
    for (const { exportId } of await this.o.state.loadServedExports(this.o.log)) {
      if (this.running.has(exportId)) continue; // started again since: it ends on its own
      this.o.log.warn('an export was served when the node last stopped; reporting it stopped', { exportId });
      this.o.report({
        type: 'export.stopped',
        exportId,
        reason: 'failed',
        code: ProtoErrors.RESTARTED,
        message: `the node restarted while it served export ${exportId}, which is no longer served; start it again (on this node or another)`,
      });
    }
    this.persist();
  }

  /** Resolves once the exports handed to the state dir so far are on disk. */
  async flushed(): Promise<void> {
    await drained(() => this.saving);
  }

  /** Hands the exports served (or starting) to exports.json. */
  private persist(): void {
    const snapshot = [...this.running.keys()].map((exportId) => ({ exportId }));
    this.saving = this.saving
      .then(() => this.o.state.saveServedExports(snapshot))
      .catch((err) => this.o.log.error('could not persist the exports served', { err }));
  }

  async stopAll(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    await Promise.all([...this.running.keys()].map((id) => this.stop(id, 'shutdown')));
  }
}

function countersOf(s: ExportStats): ExportCounters {
  return {
    bytesServed: s.bytesServed,
    bytesFetched: s.bytesFetched,
    cacheHitRatio: Math.round(s.cacheHitRatio * 1000) / 1000,
    cachedBytes: s.cachedBytes,
    connections: s.connections,
    activeConnections: s.activeConnections,
    chunkErrors: s.chunkErrors,
  };
}

function listenOf(spec: ExportSpec): { socket?: string; host?: string; port?: number } {
  if (spec.socket !== undefined && spec.listen !== undefined) throw new RnodeError(ErrorCodes.USAGE, 'an export takes socket or listen, not both');
  if (spec.socket !== undefined) return { socket: spec.socket };
  if (spec.listen === undefined) throw new RnodeError(ErrorCodes.USAGE, 'an export needs socket (a unix socket path) or listen (host:port)');
  return parseListen(spec.listen); // the schema's pattern admits only what this takes
}
