// Runs jobs (from the server or the scheduler) on the library: a fixed number of slots, one run per disk at a
// time on this node (the store lease keeps it to one across nodes), cancellation, progress, metrics and the
// reports that say how each job ended.
import { setMaxListeners } from 'node:events';
import type { EncryptionKey } from '../crypto/keys.js';
import { coded, ErrorCodes, RnodeError, isRnodeError } from '../errors.js';
import { codecByName } from '../format/codecs.js';
import { prune, retentionWarning, SweepPacer } from '../jobs/prune-v2.js';
import { replicate, SOURCE_CHANGED_WARNING, type ReplicateProgress, type ReplicateResult } from '../jobs/replicate.js';
import { recover } from '../jobs/restore.js';
import { leaseBindsForMs } from '../repository/lease.js';
import { verify } from '../jobs/verify.js';
import { replicateVm } from '../jobs/replicate-vm.js';
import { isCloudOutput } from '../output/index.js';
import { parseOutUrl } from '../output/url.js';
import { openSource } from '../source/index.js';
import type { BlockSource } from '../source/types.js';
import { VmwareSession, vmDiskId, vmwareConfigFor, type VmwareSourceConfig } from '../source/vmware/index.js';
import type { WrappedStore } from '../store/index.js';
import { readRegularFile } from '../regular-file.js';
import { Semaphore } from '../semaphore.js';
import { TokenBucket } from '../throttle.js';
import type { Logger } from '../log.js';
import type { AgentMetrics } from './metrics.js';
import {
  ProtoErrors,
  type AgentReport,
  type DiskResult,
  type DiskSource,
  type Job,
  type JobProgress,
  type ReplicateJob,
  type StoreDef,
  type VmJobResult,
} from './protocol.js';
import { refuseKeyAsCredential, resolveEncryptionKey, storeEnv } from './secrets.js';
import { openStoreOf } from './stores.js';
import { drained, type AcceptedJob, type StateDir } from './state.js';
import { abortableSleep, cancelled, countedSource } from './throttle.js';

export interface JobContext {
  scheduled?: boolean;
  group?: string;
  /** Scheduled replicate runs prune to this many points after committing. */
  retentionKeep?: number;
  /** The grace period of that retention's sweeps (default DEFAULT_GRACE_MS). */
  retentionGraceMs?: number;
}

export interface RunnerOptions {
  nodeName: string;
  slots: number;
  /** Node-wide bytes/s sent to targets by all runs together; 0: unlimited. */
  bandwidth: number;
  state: StateDir;
  log: Logger;
  metrics: AgentMetrics;
  report: (r: AgentReport) => void;
  progress: (p: JobProgress) => void;
  progressMs?: number;
  /** Whether the report queue holds the end (job.completed or job.failed) of this attempt of the job. */
  hasEnd?: (jobId: string, attempt: number | undefined) => boolean;
  /** Called after every committed point (the scheduler records it). */
  onPoint?: (group: string | undefined, storeUrl: string, result: ReplicateResult, startedAt: Date) => void;
}

interface Running {
  job: Job;
  controller: AbortController;
  ctx: JobContext;
  /** Settles when the run has ended (its last report made), never rejects. */
  ended: Promise<void>;
}

/** One run per disk on this node: a per-key chain of holders. */
export class DiskLocks {
  private readonly held = new Map<string, Promise<void>>();
  isBusy(key: string): boolean {
    return this.held.has(key);
  }
  async acquire(key: string, signal: AbortSignal): Promise<() => void> {
    for (;;) {
      const cur = this.held.get(key);
      if (!cur) break;
      await Promise.race([
        cur,
        new Promise((_, reject) => {
          if (signal.aborted) reject(cancelled());
          signal.addEventListener('abort', () => reject(cancelled()), { once: true });
        }),
      ]);
    }
    let release!: () => void;
    this.held.set(
      key,
      new Promise<void>((r) => {
        release = r;
      }),
    );
    return () => {
      this.held.delete(key);
      release();
    };
  }
}

/** Buffers of data on its way to the store (pack buffers) all runs of a node hold together; see ReplicateOptions.bufferBytes. */
const NODE_CHUNK_BUFFER_BYTES = 24 * 1024 * 1024;

export const diskKey = (store: StoreDef, disk: string) => `${store.url}#${disk}`;

/** The bytes put into each job store already counted in rnode_bytes_sent_total. */
const bytesCounted = new WeakMap<object, number>();

export class JobRunner {
  private readonly slots: Semaphore;
  readonly locks = new DiskLocks();
  private readonly running = new Map<string, Running>();
  /** The node is stopping (cancelAll(true)): the jobs it ends are the node's doing, not the server's. */
  private stopping = false;
  private readonly nodeBucket: TokenBucket | undefined;
  /** Retention runs after every replicate; the domain sweeps it would start are paced (see SweepPacer). */
  private readonly sweeps = new SweepPacer();
  private savingAccepted: Promise<void> = Promise.resolve();

  /**
   * Pack buffers of one run: the node's budget split over its slots, so memory stays bounded by the node, not by how
   * many runs it has (3 slots: 8 MiB each, two packs of 3.75 MiB).
   */
  private get runBufferBytes(): number {
    return Math.floor(NODE_CHUNK_BUFFER_BYTES / this.slots.size);
  }

  constructor(private readonly o: RunnerOptions) {
    this.slots = new Semaphore(o.slots);
    this.nodeBucket = o.bandwidth > 0 ? new TokenBucket(o.bandwidth) : undefined;
  }

  get inFlight(): number {
    return this.slots.inUse;
  }
  get queued(): number {
    return this.running.size - this.slots.inUse < 0 ? 0 : this.running.size - this.slots.inUse;
  }
  get capacity(): number {
    return this.slots.size;
  }
  has(jobId: string): boolean {
    return this.running.has(jobId);
  }

  /**
   * True from the moment a job of the disk is accepted, not only once it holds the disk lock: a job first resolves
   * its key (file I/O), and a policy arriving in between must not start a second run of the disk beside it (a
   * re-dispatched job, sent before the policy sync, is there to continue the killed run's checkpoint).
   */
  holdsDisk(key: string): boolean {
    if (this.locks.isBusy(key)) return true;
    for (const { job } of this.running.values()) {
      const disks = job.kind === 'replicate' ? job.disks.map((d) => d.disk) : [job.disk];
      if (disks.some((d) => diskKey(job.store, d) === key)) return true;
    }
    return false;
  }
  jobIds(): string[] {
    return [...this.running.keys()];
  }

  /** Starts a job in the background; job.accepted now, job.completed/failed at the end. */
  start(job: Job, ctx: JobContext = {}): Promise<void> {
    checkJobFields(job);
    const previous = this.running.get(job.jobId);
    // A server that cancels an attempt and sends the next one to this node at once (as after a network blip) finds the
    // cancelled one still stopping: the new attempt waits for it instead of being refused and never run.
    const supersedes = previous !== undefined && previous.controller.signal.aborted && attemptNumber(job) > attemptNumber(previous.job);
    if (previous && !supersedes) {
      throw new RnodeError(ProtoErrors.DUPLICATE_JOB, `job ${job.jobId} is already running on this node`);
    }
    const controller = new AbortController();
    // A job that arrives while the node stops is not run: it ends at once as the running ones do (RNODE_AGENT_RESTARTED,
    // retryable), for the server to run elsewhere. Run, it held the node's shutdown until it finished.
    if (this.stopping) controller.abort(cancelled());
    // Every put in flight (packs, tables, checkpoints) waits on this signal while a bandwidth limit paces it.
    setMaxListeners(256, controller.signal);
    const entry: Running = { job, controller, ctx, ended: Promise.resolve() };
    this.running.set(job.jobId, entry);
    this.updateGauges();
    const disks = job.kind === 'replicate' ? job.disks.map((d) => d.disk) : [job.disk];
    // In jobs.json before the server hears of it: a node killed in between would restart without the job the server
    // holds as accepted, and nothing would ever end it.
    const accepted = this.persistAccepted().then(() =>
      this.o.report({ type: 'job.accepted', jobId: job.jobId, kind: job.kind, ...attemptOf(job), ...ctxFields(ctx), disks }),
    );
    const execute = () => this.execute(job, ctx, controller.signal);
    const run = accepted
      .then(() => (previous ? previous.ended.then(execute) : execute()))
      .finally(() => {
        if (this.running.get(job.jobId) === entry) this.running.delete(job.jobId);
        this.updateGauges();
        void this.persistAccepted();
      });
    entry.ended = run.catch(() => undefined);
    return run;
  }

  /**
   * Ends, with job.failed, the jobs a previous run of the node accepted and never ended (it was killed): without it the
   * server would wait for them forever. Call once at start, after the report queue is loaded and before the node
   * connects (a job the server sends again at registration is then accepted after this attempt's end). An attempt
   * running again on this node is skipped: it ends on its own.
   */
  async endInterrupted(): Promise<void> {
    for (const j of await this.o.state.loadAcceptedJobs(this.o.log)) {
      const attempt = j.attempt ?? 1;
      // Its end may be queued already: the node died after queueing it and before jobs.json said so.
      if (this.o.hasEnd?.(j.jobId, j.attempt)) continue;
      // That attempt runs again here (started since): it will end on its own, and must not be reported failed.
      const running = this.running.get(j.jobId);
      if (running && attemptNumber(running.job) === attempt) continue;
      this.o.log.warn('a job was still running when the node last stopped; reporting it failed', { jobId: j.jobId, attempt });
      this.o.metrics.jobs.inc({ kind: j.kind, result: 'failed' });
      this.o.metrics.errors.inc({ code: ProtoErrors.RESTARTED });
      this.o.report({
        type: 'job.failed',
        jobId: j.jobId,
        kind: j.kind,
        ...(j.attempt ? { attempt: j.attempt } : {}),
        ...ctxFields(j),
        code: ProtoErrors.RESTARTED,
        message: `the node restarted while attempt ${attempt} of job ${j.jobId} ran, and did not finish it; the server may dispatch the job again`,
        cancelled: false,
        retryable: true,
      });
    }
    void this.persistAccepted();
  }

  /** Resolves once the running jobs handed to the state dir so far are on disk. */
  async flushed(): Promise<void> {
    await drained(() => this.savingAccepted);
  }

  /** Hands the running jobs to jobs.json; resolves once written (or its failure logged). */
  private persistAccepted(): Promise<void> {
    const snapshot: AcceptedJob[] = [...this.running.values()].map(({ job, ctx }) => ({
      jobId: job.jobId,
      kind: job.kind,
      ...attemptOf(job),
      ...ctxFields(ctx),
    }));
    this.savingAccepted = this.savingAccepted
      .then(() => this.o.state.saveAcceptedJobs(snapshot))
      .catch((err) => this.o.log.error('could not persist the running jobs', { err }));
    return this.savingAccepted;
  }

  cancel(jobId: string): boolean {
    const r = this.running.get(jobId);
    if (!r) return false;
    r.controller.abort(cancelled());
    return true;
  }

  /** Cancels everything and waits for the runs to stop (shutdown). */
  /**
   * Ends every running job. stopping: the node itself is stopping (SIGTERM), not the server cancelling: the jobs end as
   * RNODE_AGENT_RESTARTED, retryable, as a killed node's do, so the server may run them again (they ended "cancelled",
   * not retryable, and a server never sent them again after an upgrade's restart).
   */
  async cancelAll(stopping = false): Promise<void> {
    if (stopping) this.stopping = true;
    for (const r of this.running.values()) r.controller.abort(cancelled());
    while (this.running.size > 0) await new Promise((r) => setTimeout(r, 20));
  }

  private updateGauges(): void {
    this.o.metrics.jobsInFlight.set({}, this.slots.inUse);
    this.o.metrics.jobsQueued.set({}, Math.max(0, this.running.size - this.slots.inUse));
  }

  private async execute(job: Job, ctx: JobContext, signal: AbortSignal): Promise<void> {
    const log = this.o.log.child({ jobId: job.jobId, kind: job.kind, ...(ctx.group ? { group: ctx.group } : {}) });
    const started = performance.now();
    const results: DiskResult[] = [];
    let vmDone: { vm: VmJobResult } | undefined;
    const warnings: string[] = [];
    let failure: { err: unknown; disk?: string } | undefined;
    try {
      signal.throwIfAborted();
      // Resolved once per job, on this node; prune of an encrypted disk needs it too (it rewrites authenticated tables).
      const key = await resolveEncryptionKey(job.encryption, this.o.state, log);
      if (job.kind === 'replicate' && isVmwareVmJob(job)) {
        const disks = job.disks.map((d) => d.disk);
        try {
          const out = await this.lockedAll(job, disks, signal, () => this.replicateVmJob(job, ctx, signal, log, key));
          results.push(...out.results);
          vmDone = { vm: out.vm };
          warnings.push(...out.warnings);
        } catch (err) {
          if (isRnodeError(err) && Array.isArray(err.details.results)) results.push(...(err.details.results as DiskResult[]));
          throw err;
        }
      }
      const units: { disk: string; run: () => Promise<DiskResult> }[] = vmDone
        ? []
        : job.kind === 'replicate'
          ? job.disks.map((ds) => ({
              disk: ds.disk,
              run: () => this.replicateDisk(job, ds, ctx, signal, log.child({ disk: ds.disk }), key, (w) => warnings.push(w)),
            }))
          : [{ disk: job.disk, run: () => this.otherJob(job, signal, log.child({ disk: job.disk }), key) }];
      // The disks of a VM run one after another, each under its disk lock and in a slot of its own.
      for (const u of units) {
        if (signal.aborted) {
          failure ??= { err: cancelled(), disk: u.disk };
          break;
        }
        try {
          results.push(await this.locked(job, u.disk, signal, u.run));
        } catch (err) {
          failure ??= { err, disk: u.disk };
          if (isRnodeError(err, ErrorCodes.CANCELLED)) break;
          if (units.length > 1) log.warn('disk failed; continuing with the other disks of the job', { disk: u.disk, err });
        }
      }
    } catch (err) {
      failure = { err };
    }
    const seconds = (performance.now() - started) / 1000;
    this.o.metrics.jobDuration.observe({ kind: job.kind }, seconds);
    if (!failure) {
      this.o.metrics.jobs.inc({ kind: job.kind, result: 'completed' });
      log.info('job completed', { seconds: round(seconds), results });
      this.o.report({
        type: 'job.completed',
        jobId: job.jobId,
        kind: job.kind,
        ...attemptOf(job),
        ...ctxFields(ctx),
        seconds,
        results,
        ...(vmDone ? { vm: vmDone.vm } : {}),
        ...(warnings.length ? { warnings } : {}),
      });
      return;
    }
    const err = coded(failure.err);
    const stoppedByNode = this.stopping && isRnodeError(err, ErrorCodes.CANCELLED);
    const code = stoppedByNode ? ProtoErrors.RESTARTED : isRnodeError(err) ? err.code : ErrorCodes.INTERNAL;
    const isCancel = code === ErrorCodes.CANCELLED;
    const message = err instanceof Error ? err.message : String(err);
    this.o.metrics.jobs.inc({ kind: job.kind, result: isCancel ? 'cancelled' : 'failed' });
    this.o.metrics.errors.inc({ code });
    log[isCancel ? 'info' : 'error'](isCancel ? 'job cancelled' : 'job failed', { code, err: message, disk: failure.disk });
    this.o.report({
      type: 'job.failed',
      jobId: job.jobId,
      kind: job.kind,
      ...attemptOf(job),
      ...ctxFields(ctx),
      ...(failure.disk ? { disk: failure.disk } : {}),
      code,
      message:
        (stoppedByNode ? `the node stopped while the job ran (${message}); the server may dispatch the job again` : message).slice(0, 4000) || code,
      cancelled: isCancel,
      retryable: stoppedByNode || (isRnodeError(err) ? err.retryable : false),
      ...(results.length ? { results } : {}),
    });
  }

  /** Disk lock, then a slot: a job waiting for its disk does not hold a slot others could use. */
  private async locked<T>(job: Job, disk: string, signal: AbortSignal, fn: () => Promise<T>): Promise<T> {
    const key = diskKey(job.store, disk);
    // Checked right before each wait: jobs that arrive together take their slots only after their keys resolve.
    const waitsForDisk = this.locks.isBusy(key);
    if (waitsForDisk) this.o.progress({ jobId: job.jobId, disk, phase: 'queued' });
    const unlock = await this.locks.acquire(key, signal);
    try {
      // acquire() takes a free slot at once: full now, this job waits.
      if (!waitsForDisk && this.slots.inUse >= this.slots.size) this.o.progress({ jobId: job.jobId, disk, phase: 'queued' });
      await this.slots.acquire(signal).catch(() => {
        throw cancelled();
      }); // only an abort rejects it
      this.updateGauges();
      try {
        return await fn();
      } finally {
        this.slots.release();
        this.updateGauges();
      }
    } finally {
      unlock();
    }
  }

  /** The disk locks of every disk (in one order, so two VM jobs cannot deadlock), then one slot. */
  private async lockedAll<T>(job: Job, disks: string[], signal: AbortSignal, fn: () => Promise<T>): Promise<T> {
    const [first, ...rest] = [...new Set(disks)].sort();
    if (rest.length === 0) return this.locked(job, first, signal, fn);
    const unlock = await this.locks.acquire(diskKey(job.store, first), signal);
    try {
      return await this.lockedAll(job, rest, signal, fn);
    } finally {
      unlock();
    }
  }

  /**
   * A replicate job's target: the same bandwidth limit `rnode replicate --bandwidth` applies (src/store/wrap.ts), the
   * job's own and the node's shared one, on the bytes put to the store; lease traffic passes free.
   */
  private async openTarget(job: ReplicateJob, signal: AbortSignal, log: Logger): Promise<WrappedStore> {
    return openStoreOf(job.store, this.o.state, log, {
      ...(job.bandwidth ? { bandwidth: job.bandwidth } : {}),
      ...(this.nodeBucket ? { sharedBandwidth: this.nodeBucket } : {}),
      signal,
    });
  }

  /**
   * One replicate of a disk under its lease. Another writer (a node that died, whose lease has not expired yet) holds
   * the disk: wait for it, abortably, up to a few lease lifetimes.
   */
  private async replicateLeased(
    job: ReplicateJob,
    ds: DiskSource,
    o: {
      store: WrappedStore;
      source: BlockSource;
      signal: AbortSignal;
      onProgress: (p: ReplicateProgress) => void;
      encryption: EncryptionKey | undefined;
      inVm: VmDiskRun | undefined;
      ttlMs: number;
      log: Logger;
    },
  ): Promise<ReplicateResult> {
    const { store, source, signal, onProgress, encryption, inVm, ttlMs, log } = o;
    const deadline = Date.now() + 3 * ttlMs + 5000;
    let leaseRetries = 2;
    for (;;) {
      try {
        return await replicate({
          store,
          source,
          disk: ds.disk,
          chunkSize: job.chunkSize,
          concurrency: job.concurrency ?? inVm?.concurrency,
          bufferBytes: this.runBufferBytes,
          signal,
          onProgress,
          codec: job.compression ? codecByName(job.compression) : undefined,
          encryption,
          forceFull: job.forceFull || inVm?.forceFull,
          checkpointMillis: job.checkpointSeconds !== undefined ? job.checkpointSeconds * 1000 : undefined,
          lease: { holder: this.o.nodeName, ttlMs, waitMs: 0 },
          changeHashDir: this.o.state.cacheDir,
        });
      } catch (err) {
        // LEASE_LOST: renewals of src/repository/lease.ts can race each other under load and drop a lease
        // nobody else took. Trying again is safe: the lease is re-acquired through conditional puts (a real
        // new holder shows up as LEASE_HELD) and the point continues from its checkpoint.
        if (isRnodeError(err, ErrorCodes.LEASE_LOST) && leaseRetries-- > 0 && !signal.aborted) {
          log.warn('lost the disk lease mid-run; acquiring it again and continuing from the checkpoint', { err: err.message });
          continue;
        }
        if (!isRnodeError(err, ErrorCodes.LEASE_HELD) || Date.now() > deadline) throw err;
        this.o.progress({ jobId: job.jobId, disk: ds.disk, phase: 'lease' });
        log.info('disk is leased by another writer; waiting', { holder: err.details.holder, expiresAt: err.details.expiresAt });
        await abortableSleep(Math.min(1000, ttlMs / 4), signal);
      }
    }
  }

  private async replicateDisk(
    job: ReplicateJob,
    ds: DiskSource,
    ctx: JobContext,
    signal: AbortSignal,
    log: Logger,
    encryption: EncryptionKey | undefined,
    warn: (warning: string) => void,
    inVm?: VmDiskRun,
  ): Promise<DiskResult> {
    const startedAt = new Date();
    const store = inVm?.store ?? (await this.openTarget(job, signal, log));
    const m = this.o.metrics;
    const labels = { disk: ds.disk };
    // Counted once per store: a VM job's disks share one, and each counted all of its bytes (3 disks: 3x).
    const sent = () => {
      const b = store.metrics().ops.put.bytes;
      const before = bytesCounted.get(store) ?? 0;
      if (b > before) m.bytesSent.inc({}, b - before);
      bytesCounted.set(store, Math.max(b, before));
    };
    try {
      if (!inVm && /^vddk:\/\//i.test(ds.source.location)) {
        await this.refuseKeyAsVcenterPassword(vmwareConfigFor(ds.source.location, ds.source.options ?? {}), log);
      }
      const raw = inVm?.source ?? (await openSource(ds.source.location, ds.source.options ?? {}));
      try {
        const source = countedSource(raw, signal);
        const ttlMs = (job.leaseTtlSeconds ?? 60) * 1000;
        const t0 = performance.now();
        // Bytes this run read from its source (a resumed point's figures count the earlier runs' too).
        let readCounted = 0;
        const countRead = () => {
          m.bytesRead.inc({}, Math.max(0, source.bytesRead - readCounted));
          readCounted = Math.max(readCounted, source.bytesRead);
        };
        // The first progress goes at once: performance.now() starts at 0 with the process, and a job begun in the
        // node's first second had its first report dropped.
        let lastSent = -Infinity;
        let firstPosition: number | undefined;
        const onProgress = (p: ReplicateProgress) => {
          countRead();
          firstPosition ??= p.position;
          const now = performance.now();
          if (now - lastSent < (this.o.progressMs ?? 1000) && p.phase === 'scan') return;
          lastSent = now;
          sent();
          const elapsed = (now - t0) / 1000;
          const rate = elapsed > 0 ? (p.position - firstPosition) / elapsed : 0;
          this.o.progress({
            jobId: job.jobId,
            disk: ds.disk,
            phase: p.phase,
            bytesRead: p.bytesRead,
            bytesWritten: p.bytesWritten,
            diskSize: p.diskSize,
            position: p.position,
            rate: round(rate),
            etaSeconds: rate > 0 ? round((p.diskSize - p.position) / rate) : null,
          });
        };
        const r = await this.replicateLeased(job, ds, { store, source, signal, onProgress, encryption, inVm, ttlMs, log });
        countRead();
        sent();
        m.bytesStored.inc({}, r.bytesWritten);
        m.chunksStored.inc({}, r.chunksChanged);
        m.chunksZero.inc({}, r.chunksZero);
        if (r.bytesWritten > 0) m.compressionRatio.set(labels, round(Math.min(r.chunksChanged * r.chunkSize, r.diskSize) / r.bytesWritten));
        m.throughput.set(labels, round(r.diskSize / Math.max(r.seconds, 1e-6)));
        const point = await pointMarker(store, ds.disk, r.point);
        log.info('point committed', {
          point: r.point,
          parent: r.parent,
          resumed: r.resumed,
          bytesRead: r.bytesRead,
          bytesWritten: r.bytesWritten,
          seconds: round(r.seconds),
        });
        this.o.onPoint?.(ctx.group, job.store.url, r, startedAt);
        inVm?.onResult(r);
        const result: DiskResult = {
          disk: ds.disk,
          point: r.point,
          parent: r.parent,
          full: r.full,
          ...(r.rebasedFrom !== undefined ? { rebasedFrom: r.rebasedFrom } : {}),
          resumed: r.resumed,
          ...(r.comparedBy ? { comparedBy: r.comparedBy } : {}),
          marker: point,
          diskSize: r.diskSize,
          bytesRead: r.bytesRead,
          sourceBytesRead: source.bytesRead,
          bytesWritten: r.bytesWritten,
          chunksChanged: r.chunksChanged,
          chunksZero: r.chunksZero,
          seconds: round(r.seconds),
          ...(r.encryption ? { keyId: r.encryption.keyId } : {}),
        };
        if (r.sourceChangedWhileRead) {
          const warning = `point ${r.point} of disk ${ds.disk}: ${SOURCE_CHANGED_WARNING}`;
          log.warn(warning);
          warn(warning);
        }
        if (ctx.retentionKeep && !inVm) {
          // a VM keeps whole VM points (replicateVm). The point is committed: a retention that fails after it is a
          // warning of the job (the next run's retention tries again), not its failure, which hid the point from the MS.
          try {
            const pr = await prune({
              store,
              disk: ds.disk,
              keep: ctx.retentionKeep,
              graceMs: ctx.retentionGraceMs,
              encryption,
              lease: { holder: this.o.nodeName, ttlMs, waitMs: leaseBindsForMs(ttlMs) },
              pacer: this.sweeps,
            });
            if (pr.deleted.length) log.info('retention pruned points', { deleted: pr.deleted, kept: pr.kept.length });
            result.deleted = pr.deleted;
          } catch (err) {
            const warning = retentionWarning(`point ${r.point} of disk ${ds.disk}`, err);
            log.warn(warning, { code: isRnodeError(err) ? err.code : ErrorCodes.INTERNAL });
            warn(warning);
          }
        }
        return result;
      } finally {
        if (!inVm) await raw.close();
      }
    } finally {
      if (!inVm) await store.close();
    }
  }

  /**
   * The vCenter password goes to the host the job names: a job naming one of this node's key files as its passwordFile
   * (and a host of the server's choosing) had the node send that key there. Refused as a store credential is
   * (secrets.ts); a file that cannot be read is left to the session's own error.
   */
  private async refuseKeyAsVcenterPassword(config: VmwareSourceConfig, log: Logger): Promise<void> {
    let data: Buffer;
    try {
      data = readRegularFile(config.passwordFile).data;
    } catch {
      return;
    }
    try {
      await refuseKeyAsCredential(data, `the vCenter password file ${config.passwordFile} (passwordFile)`, this.o.state, log);
    } finally {
      data.fill(0);
    }
  }

  /**
   * A VM job over vddk:// sources: one snapshot for all its disks, read in parallel, and a VM point (src/jobs/
   * replicate-vm.ts). Every disk of the VM is locked and the job takes one slot.
   */
  private async replicateVmJob(
    job: ReplicateJob,
    ctx: JobContext,
    signal: AbortSignal,
    log: Logger,
    encryption: EncryptionKey | undefined,
  ): Promise<{ results: DiskResult[]; vm: VmJobResult; warnings: string[] }> {
    const { config, diskIds, keys } = vmJobConfig(job);
    await this.refuseKeyAsVcenterPassword(config, log);
    const store = await this.openTarget(job, signal, log);
    try {
      const session = await VmwareSession.open(config, { log: (line) => log.info(line) });
      const results: DiskResult[] = [];
      try {
        const ttlMs = (job.leaseTtlSeconds ?? 60) * 1000;
        const r = await replicateVm({
          session,
          store,
          signal,
          encryption,
          ...(keys ? { disks: keys } : {}),
          diskId: (k) => diskIds.get(k) ?? vmDiskId(config.vm, k),
          ...(job.diskParallelism ? { diskParallelism: job.diskParallelism } : {}),
          quiesce: job.quiesce ?? config.quiesce,
          quiesceFallback: job.quiesceFallback ?? config.quiesceFallback,
          unsupportedDisks: job.unsupportedDisks ?? config.unsupportedDisks,
          retentionKeep: ctx.retentionKeep,
          retentionGraceMs: ctx.retentionGraceMs,
          pacer: this.sweeps,
          lease: { holder: this.o.nodeName, ttlMs, waitMs: leaseBindsForMs(ttlMs) },
          replicateDisk: async (a) => {
            let r: ReplicateResult | undefined;
            const ds = job.disks.find((d) => d.disk === a.disk) ?? {
              disk: a.disk,
              source: { location: `vddk://${config.host}/${config.vm}?disk=${a.key}` },
            };
            results.push(
              await this.replicateDisk(job, ds, ctx, signal, log.child({ disk: a.disk }), encryption, () => undefined, {
                source: a.source,
                store,
                forceFull: a.forceFull,
                concurrency: a.concurrency,
                onResult: (x) => {
                  r = x;
                },
              }),
            );
            return r!;
          },
        });
        for (const w of r.warnings) log.warn(w);
        const vm: VmJobResult = {
          vm: r.vm,
          vmPoint: r.vmPoint,
          snapshot: r.snapshot,
          consistency: r.consistency,
          ...(r.consistencyReason ? { consistencyReason: r.consistencyReason } : {}),
          disks: r.disks.map((d) => ({
            key: d.deviceKey,
            disk: d.disk,
            point: d.point,
            transport: d.transportMode,
            ...(d.fullReason ? { fullReason: d.fullReason } : {}),
          })),
          skipped: r.skipped,
          removed: r.removed,
          added: r.added,
          staleSnapshotsRemoved: r.staleSnapshotsRemoved,
          ...(r.prunedVmPoints ? { prunedVmPoints: r.prunedVmPoints } : {}),
        };
        const order = new Map(r.disks.map((d, i) => [d.disk, i]));
        return { results: results.sort((a, b) => (order.get(a.disk) ?? 0) - (order.get(b.disk) ?? 0)), vm, warnings: r.warnings };
      } catch (err) {
        if (isRnodeError(err)) err.details.results ??= results;
        throw err;
      } finally {
        await session.close().catch((err) => log.warn('logging out of vSphere failed', { err: (err as Error).message }));
      }
    } finally {
      await store.close();
    }
  }

  private async otherJob(
    job: Exclude<Job, ReplicateJob>,
    signal: AbortSignal,
    log: Logger,
    encryption: EncryptionKey | undefined,
  ): Promise<DiskResult> {
    if (signal.aborted) throw cancelled();
    const store = await openStoreOf(job.store, this.o.state, log);
    try {
      this.o.progress({ jobId: job.jobId, disk: job.disk, phase: job.kind });
      switch (job.kind) {
        case 'recover': {
          // A cloud out takes its credentials from outEnv, resolved like store.env (secrets by reference).
          const env = await storeEnv({ url: job.out, env: job.outEnv }, this.o.state, log, 'outEnv');
          const r = await recover({ store, disk: job.disk, point: job.point, out: job.out, encryption, env });
          return { disk: job.disk, point: r.point, diskSize: r.diskSize, bytesWritten: r.bytesWritten, seconds: round(r.seconds), out: r.out };
        }
        case 'verify': {
          const r = await verify({ store, disk: job.disk, point: job.point, encryption });
          if (!r.ok) {
            throw new RnodeError(r.problems[0].code, `verify found ${r.problems.length} problem(s); first: ${r.problems[0].message}`);
          }
          if (r.checked === 'stored-bytes') log.warn('encrypted disk verified without its key: stored bytes only, contents not checked');
          return { disk: job.disk, ok: r.ok, problems: r.problems.length, checked: r.checked, seconds: round(r.seconds) };
        }
        case 'prune': {
          const r = await prune({
            store,
            disk: job.disk,
            keep: job.keep,
            encryption,
            lease: { holder: this.o.nodeName, ttlMs: 60_000, waitMs: 60_000 },
          });
          return { disk: job.disk, kept: r.kept, deleted: r.deleted, seconds: round(r.seconds) };
        }
      }
    } finally {
      await store.close();
    }
  }
}

/**
 * What the schema cannot check of a job, refused before it is accepted (RNODE_PROTO_INVALID), naming the message's
 * field: the library's own checks would name the CLI's flags (--out).
 */
function checkJobFields(job: Job): void {
  if (job.kind === 'replicate') checkReplicateDisks(job);
  if (job.kind !== 'recover' || !isCloudOutput(job.out)) return;
  try {
    parseOutUrl(job.out);
  } catch (err) {
    if (!isRnodeError(err, ErrorCodes.BAD_OUTPUT)) throw err;
    throw new RnodeError(ProtoErrors.INVALID, `job.out ${String(err.details.out)} ${String(err.details.why)}`);
  }
}

/**
 * A disk id names one disk of a job: two sources under one id made points of one disk from both (a VM point of one
 * VMware VM listed it twice, and its restore wrote one device over the other). A job with `vm` and a vddk:// disk is
 * one VMware VM: a disk of another kind beside them made the job run disk by disk, each vddk:// disk from a snapshot
 * of its own, and report success without a VM point.
 */
function checkReplicateDisks(job: ReplicateJob): void {
  const ids = new Set<string>();
  for (const d of job.disks) {
    if (ids.has(d.disk)) {
      throw new RnodeError(ProtoErrors.INVALID, `job ${job.jobId} names disk ${d.disk} twice: each source of a job is a disk of its own id`);
    }
    ids.add(d.disk);
  }
  const other = job.vm !== undefined && job.disks.some((d) => isVddk(d.source.location)) && job.disks.find((d) => !isVddk(d.source.location));
  if (other) {
    throw new RnodeError(
      ProtoErrors.INVALID,
      `job ${job.jobId} replicates VMware VM ${job.vm}, and its disk ${other.disk} is not a vddk:// source: a VM job's disks are all disks of that VM (vddk://<host>/<vm>?disk=<key>); send the other disks in a job of their own`,
    );
  }
}

const isVddk = (location: string) => /^vddk:\/\//i.test(location);

async function pointMarker(store: WrappedStore, disk: string, point: number): Promise<string | null> {
  const { loadPoint } = await import('../repository/points.js');
  const m = await loadPoint(store, disk, point).catch(() => undefined);
  return m?.source.marker ?? null;
}

/** A replicate job naming a VM whose disks are all vddk:// sources: it runs as one VM (one snapshot, a VM point). */
export function isVmwareVmJob(job: ReplicateJob): boolean {
  return job.vm !== undefined && job.disks.length > 0 && job.disks.every((d) => isVddk(d.source.location));
}

/** The VM's config from the job's disk sources: one VM, one host; each disk names its device key (or one names none: all). */
function vmJobConfig(job: ReplicateJob): { config: VmwareSourceConfig; diskIds: Map<number, string>; keys?: number[] } {
  const configs = job.disks.map((d) => ({ d, c: vmwareConfigFor(d.source.location, d.source.options ?? {}) }));
  const first = configs[0].c;
  if (job.vm !== first.vm) {
    throw new RnodeError(
      ErrorCodes.BAD_SOURCE,
      `VM job ${job.jobId} names VM ${job.vm}, and its vddk:// disks are of ${first.vm}; name the VM the disks belong to`,
    );
  }
  const diskIds = new Map<number, string>();
  let all = false;
  for (const { d, c } of configs) {
    if (c.vm !== first.vm || c.host !== first.host) {
      throw new RnodeError(
        ErrorCodes.BAD_SOURCE,
        `VM job ${job.jobId}: disk ${d.disk} is on ${c.host}/${c.vm}, not ${first.host}/${first.vm}; one job replicates one VM`,
      );
    }
    if (!c.disks) {
      all = true;
      continue;
    }
    if (c.disks.length !== 1)
      throw new RnodeError(ErrorCodes.BAD_SOURCE, `VM job ${job.jobId}: disk ${d.disk} must name one device key (?disk=<key>)`);
    // A second disk of the same device replaced the first: the first was never read, and the job said it completed.
    const earlier = diskIds.get(c.disks[0]);
    if (earlier !== undefined) {
      throw new RnodeError(
        ErrorCodes.BAD_SOURCE,
        `VM job ${job.jobId}: disks ${earlier} and ${d.disk} both name device key ${c.disks[0]} of ${first.vm}; each disk of the job names a device of its own`,
      );
    }
    diskIds.set(c.disks[0], d.disk);
  }
  return { config: first, diskIds, ...(all ? {} : { keys: [...diskIds.keys()] }) };
}

/** A disk of a VM job: its source is a disk of the VM's snapshot, the store is the job's. */
interface VmDiskRun {
  source: BlockSource;
  store: WrappedStore;
  forceFull: boolean;
  concurrency: number;
  onResult: (r: ReplicateResult) => void;
}

const attemptNumber = (job: Job) => job.attempt ?? 1;
const attemptOf = (job: Job) => (job.attempt ? { attempt: job.attempt } : {});
const ctxFields = (ctx: Pick<JobContext, 'scheduled' | 'group'>) => ({
  ...(ctx.scheduled !== undefined ? { scheduled: ctx.scheduled } : {}),
  ...(ctx.group ? { group: ctx.group } : {}),
});
const round = (n: number) => Math.round(n * 1000) / 1000;
