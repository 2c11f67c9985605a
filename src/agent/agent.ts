// The control agent: a node under a Management Server. It registers, runs the jobs the server sends, runs the
// policies it holds on their schedule (also while the server is away), reports what happened, and serves
// /metrics, /healthz and /readyz. `rnode agent` is a thin wrapper around Agent.start().
import os from 'node:os';
import { ENCRYPTION_MODES } from '../crypto/keys.js';
import { isRnodeError, usageError } from '../errors.js';
import { CODEC_NAMES } from '../format/codecs.js';
import { readRegularFile } from '../regular-file.js';
import { registeredSchemes } from '../store/index.js';
import { metricsListenError, serveHttp, type HttpEndpoint } from '../metrics/http.js';
import { ExportManager } from './exports.js';
import { JobRunner } from './jobs.js';
import { ServerLink } from './link.js';
import { Logger, type Level, type LogFormat } from '../log.js';
import { AgentMetrics } from './metrics.js';
import type { AgentReport, Health, JobProgress, ServerMessage } from './protocol.js';
import { nodeNameProblem, ProtoErrors } from './protocol.js';
import { VERSION } from '../version.js';
import { Scheduler } from './scheduler.js';
import { StateDir } from './state.js';
import { codecWorkers } from '../pipeline/codec-workers.js';

export interface AgentOptions {
  /** ws:// or wss:// URL of the Management Server. */
  server: string;
  tokenFile: string;
  /** PEM file of the CA that signed the server's certificate. */
  caFile?: string;
  nodeName?: string;
  stateDir: string;
  /** host:port for /metrics, /healthz, /readyz (port 0: any free port). */
  metrics?: { host: string; port: number };
  slots?: number;
  /** Node-wide source bytes/s over all runs; 0: unlimited. */
  bandwidth?: number;
  log?: Logger;
  logLevel?: Level;
  /** Lines of the logger made when `log` is not given (default json). */
  logFormat?: LogFormat;
  backoff?: { initialMs?: number; maxMs?: number };
  progressMs?: number;
  tickMs?: number;
}

/** The version the agent reports in its hello and metrics: the package's (src/version.ts). */
export const AGENT_VERSION = VERSION;

export class Agent {
  readonly metrics: AgentMetrics;
  private http: HttpEndpoint | undefined;
  private readonly startedAt = Date.now();
  /** The last RSS read: reading it opens /proc/self/stat, which fails while the process is out of descriptors. */
  private rssBytes: number | undefined;

  private constructor(
    readonly opts: AgentOptions,
    readonly nodeId: string,
    readonly nodeName: string,
    readonly log: Logger,
    readonly state: StateDir,
    readonly link: ServerLink,
    readonly runner: JobRunner,
    readonly scheduler: Scheduler,
    metrics: AgentMetrics,
    readonly exports: ExportManager,
  ) {
    this.metrics = metrics;
  }

  static async start(opts: AgentOptions): Promise<Agent> {
    checkServerUrl(opts.server);
    // Checked here, not when the hello is built: that happens only once the server answers.
    const nameProblem = opts.nodeName !== undefined ? nodeNameProblem(opts.nodeName) : undefined;
    if (nameProblem) throw usageError(`--node-name ${nameProblem}; leave it out to use the host name`);
    // An unset variable in a unit file: '' made ./secrets in the working folder, then failed with RNODE_INTERNAL.
    if (opts.stateDir === '')
      throw usageError('--state-dir is empty; name the folder the node keeps its state in, or leave the flag out for the default');
    const state = await StateDir.open(opts.stateDir);
    try {
      return await Agent.startOn(state, opts);
    } catch (err) {
      state.close(); // an agent that did not start holds no state folder
      throw err;
    }
  }

  private static async startOn(state: StateDir, opts: AgentOptions): Promise<Agent> {
    const { nodeId } = await state.identity();
    // The codec workers start before the node registers, so its first job does not wait for them (~50 ms from dist/,
    // seconds where a test runner compiles their TypeScript: the first scheduled run then missed a 4 s RPO).
    await codecWorkers().ready();
    const nodeName = opts.nodeName ?? os.hostname();
    const log = (opts.log ?? Logger.create({ level: opts.logLevel, format: opts.logFormat })).child({ nodeId, node: nodeName });
    let scheduler: Scheduler | undefined;
    const metrics = new AgentMetrics(() => scheduler?.lags() ?? []);
    metrics.info.set({ node_id: nodeId, name: nodeName, version: AGENT_VERSION }, 1);
    const slots = opts.slots ?? 2;
    const link = new ServerLink({
      url: opts.server,
      tokenFile: opts.tokenFile,
      ca: opts.caFile ? readCaFile(opts.caFile) : undefined,
      state,
      log,
      metrics,
      backoff: opts.backoff,
      hello: () => ({
        node: { id: nodeId, name: nodeName, version: AGENT_VERSION, hostname: os.hostname(), pid: process.pid },
        capabilities: {
          // Registered source schemes are not listable yet (src/source/index.ts keeps them private).
          sources: ['raw', 'file'],
          stores: ['dir', ...registeredSchemes()],
          codecs: Object.values(CODEC_NAMES),
          jobs: ['replicate', 'recover', 'verify', 'prune'],
          encryption: [...ENCRYPTION_MODES],
        },
        capacity: { slots, bandwidth: opts.bandwidth ?? 0 },
      }),
    });
    const report = (r: AgentReport) => link.report(r);
    const progress = (p: JobProgress) => {
      link.send({ type: 'job.progress', ...p });
    };
    const runner = new JobRunner({
      nodeName,
      slots,
      bandwidth: opts.bandwidth ?? 0,
      state,
      log,
      metrics,
      report,
      progress,
      progressMs: opts.progressMs,
      onPoint: (group, storeUrl, r, at) => scheduler?.recordPoint(group, storeUrl, r, at),
      hasEnd: (jobId, attempt) =>
        link.holdsReport((m) => (m.type === 'job.completed' || m.type === 'job.failed') && m.jobId === jobId && m.attempt === attempt),
    });
    scheduler = new Scheduler({ state, runner, log, metrics, report, tickMs: opts.tickMs });
    await scheduler.load();
    const exports = new ExportManager({
      state,
      log,
      report,
      statusMs: opts.progressMs,
      status: (m) => {
        link.send({ type: 'export.status', ...m });
      },
    });
    const agent = new Agent(opts, nodeId, nodeName, log, state, link, runner, scheduler, metrics, exports);
    link.heartbeat = () => agent.health();
    link.on('message', (m: ServerMessage) => {
      agent.onMessage(m).catch((err) => log.error('message handling failed', { err }));
    });
    if (opts.metrics) {
      agent.http = await serveHttp(opts.metrics, {
        metrics: () => metrics.render(),
        readiness: () => agent.readiness(),
      }).catch((err: unknown) => {
        state.close();
        throw metricsListenError(err, opts.metrics!);
      });
      log.info('serving /metrics, /healthz, /readyz', { listen: `${agent.http.host}:${agent.http.port}` });
    }
    log.info('agent starting', { server: opts.server, stateDir: opts.stateDir, slots, policies: scheduler.list().length, version: AGENT_VERSION });
    // Reports wait for the queue to be loaded (link.start): one queued before would be lost with the empty queue.
    // The jobs a kill interrupted end before the node connects: a job.start the server sends at registration (the
    // same job again) is then taken after their job.failed, never reported failed while it runs.
    await link.start(async () => {
      await runner.endInterrupted();
      await exports.endInterrupted();
    });
    scheduler.start();
    return agent;
  }

  get metricsPort(): number | undefined {
    return this.http?.port;
  }

  readiness(): { ready: boolean; checks: Record<string, boolean> } {
    const checks = { registered: this.link.wasRegistered, connected: this.link.isRegistered, stateWritable: this.state.writable() };
    return { ready: checks.registered && checks.stateWritable, checks };
  }

  health(): Health {
    return {
      ready: this.readiness().ready,
      inFlight: this.runner.inFlight,
      queued: this.runner.queued,
      slots: this.runner.capacity,
      load1: os.loadavg()[0],
      rssBytes: this.rss(),
      uptimeSeconds: (Date.now() - this.startedAt) / 1000,
      reportsQueued: this.link.queuedReports,
      policies: this.scheduler.list().length,
      disks: this.scheduler.diskCount,
    };
  }

  /** The RSS now, else the last one read (left out if none was); a heartbeat must not throw from its timer. */
  private rss(): number | undefined {
    try {
      this.rssBytes = process.memoryUsage.rss();
    } catch {
      // EMFILE: the node degrades (not ready, as its state cannot be written) and goes on; it does not die.
    }
    return this.rssBytes;
  }

  private async onMessage(m: ServerMessage): Promise<void> {
    switch (m.type) {
      case 'policy.update':
        return this.scheduler.update(m.policy);
      case 'policy.remove':
        return this.scheduler.remove(m.group);
      case 'policy.sync':
        return this.scheduler.sync(m.policies);
      case 'job.start': {
        try {
          this.log.info('job received', { jobId: m.job.jobId, kind: m.job.kind, attempt: m.job.attempt });
          this.runner.start(m.job).catch((err) => this.log.error('job crashed', { jobId: m.job.jobId, err }));
        } catch (err) {
          this.link.refuse(m.id, isRnodeError(err) ? err.code : ProtoErrors.INVALID, (err as Error).message);
        }
        return;
      }
      case 'job.cancel':
        if (!this.runner.cancel(m.jobId)) this.link.refuse(m.id, ProtoErrors.UNKNOWN_JOB, `job ${m.jobId} is not running on this node`);
        else this.log.info('job cancel requested', { jobId: m.jobId });
        return;
      case 'export.start':
        try {
          this.log.info('export requested', { exportId: m.export.exportId, disk: m.export.disk });
          this.exports.start(m.export);
        } catch (err) {
          this.link.refuse(m.id, isRnodeError(err) ? err.code : ProtoErrors.INVALID, (err as Error).message);
        }
        return;
      case 'export.stop':
        if (!(await this.exports.stop(m.exportId)))
          this.link.refuse(m.id, ProtoErrors.UNKNOWN_JOB, `export ${m.exportId} is not running on this node`);
        return;
      case 'error':
        this.metrics.protocolErrors.inc({ direction: 'out', code: m.code });
        this.log.warn('the server refused a message of this node', { code: m.code, message: m.message, replyTo: m.replyTo });
        return;
      default:
        return;
    }
  }

  /** Stops scheduling, cancels running jobs (nothing half-committed), says goodbye, closes the endpoints. */
  async stop(): Promise<void> {
    this.scheduler.stop();
    await this.exports.stopAll();
    await this.exports.flushed();
    await this.runner.cancelAll(true);
    await this.runner.flushed();
    await this.link.stop();
    // A policy or point recorded while stopping may still be on its way to the state dir; the caller may remove it next.
    await this.scheduler.flushed();
    await this.http?.close();
    this.state.close();
    this.log.info('agent stopped');
  }
}

/**
 * The server URL is logged and carries nothing secret: a password or a query (?token=...) is refused, like the
 * credentials of a ws:// store location. Errors never echo it, since it may hold one.
 */
function checkServerUrl(text: string): void {
  let url: URL | undefined;
  try {
    url = new URL(text);
  } catch {
    url = undefined;
  }
  if (!url || (url.protocol !== 'ws:' && url.protocol !== 'wss:') || !url.hostname) {
    throw usageError(`--server must be a ws:// or wss:// URL such as wss://ms.example.com:5000${url ? `, not ${url.protocol}//` : ''}`);
  }
  if (url.username || url.password) throw usageError("--server must not carry credentials; put the node's token in --token-file");
  if (url.search || url.hash) throw usageError("--server must not carry a query or fragment; put the node's token in --token-file");
}

/** The CA certificate(s) caFile names, read once at start: a path that is no regular file is refused, not waited on. */
function readCaFile(file: string): Buffer {
  try {
    return readRegularFile(file).data;
  } catch (err) {
    const why = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    throw usageError(`cannot read the CA file ${file} (${why}); pass the PEM file of the CA that signed the server's certificate`);
  }
}
