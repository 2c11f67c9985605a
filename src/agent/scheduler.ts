// Runs the policies a node holds on their schedule, whether or not the server is reachable: every disk of a
// group gets a point every intervalSeconds (default rpoSeconds / 2). A disk still busy when it falls due is
// skipped (never two runs of one disk), and a disk whose newest point is older than its RPO is reported once
// per miss. Policies and each disk's last point are persisted, so a restarted node keeps its schedule.
import type { ReplicateResult } from '../jobs/replicate.js';
import { diskKey, type JobRunner } from './jobs.js';
import type { Logger } from '../log.js';
import type { AgentMetrics } from './metrics.js';
import type { AgentReport, Policy } from './protocol.js';
import { drained, type DiskRecord, type StateDir } from './state.js';

/** How far ahead of the clock a recorded time may be before it counts as written under a wrong clock. */
const CLOCK_SKEW_MS = 60_000;

export interface SchedulerOptions {
  state: StateDir;
  runner: JobRunner;
  log: Logger;
  metrics: AgentMetrics;
  report: (r: AgentReport) => void;
  /** How often due disks are looked for (default 200 ms). */
  tickMs?: number;
  now?: () => number;
}

export class Scheduler {
  private policies = new Map<string, Policy>();
  private disks: Record<string, DiskRecord> = {};
  /** Disks with a scheduled run started and not yet finished. */
  private readonly active = new Set<string>();
  /** When each disk's last scheduled run started (memory only: after a restart, lastPointAt decides). */
  private readonly lastStart = new Map<string, number>();
  /** When the node first held each disk (the RPO clock of a disk without points). */
  private readonly since = new Map<string, number>();
  /** Disks whose overlap skip was already counted for the current due time. */
  private readonly skipNoted = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private saving: Promise<void> = Promise.resolve();
  private readonly now: () => number;

  constructor(private readonly o: SchedulerOptions) {
    this.now = o.now ?? Date.now;
  }

  async load(): Promise<void> {
    for (const p of await this.o.state.loadPolicies(this.o.log)) this.policies.set(p.group, p);
    this.disks = await this.o.state.loadDisks(this.o.log);
  }

  start(): void {
    this.timer = setInterval(() => this.tick(), this.o.tickMs ?? 200);
    this.timer.unref();
    this.tick();
  }

  /** No run starts after this: a policy that arrives while the node stops is kept (state dir), not run. */
  stop(): void {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Resolves once every policy and disk record handed to the state dir so far is on disk. */
  async flushed(): Promise<void> {
    await drained(() => this.saving);
  }

  list(): Policy[] {
    return [...this.policies.values()];
  }
  get diskCount(): number {
    return this.list().reduce((n, p) => n + p.disks.length, 0);
  }

  async update(p: Policy): Promise<void> {
    const old = this.policies.get(p.group);
    if (old && old.revision > p.revision) {
      this.o.log.warn('ignored an older policy revision', { group: p.group, held: old.revision, got: p.revision });
      return;
    }
    const before = this.list();
    this.policies.set(p.group, p);
    this.dropSeriesOf(before);
    this.o.log.info('policy applied', { group: p.group, revision: p.revision, rpoSeconds: p.rpoSeconds, disks: p.disks.map((d) => d.disk) });
    await this.persistPolicies();
    this.tick();
  }

  async remove(group: string): Promise<void> {
    const before = this.list();
    if (!this.policies.delete(group)) return;
    this.dropSeriesOf(before);
    this.o.log.info('policy removed', { group });
    await this.persistPolicies();
  }

  async sync(list: Policy[]): Promise<void> {
    const keep = new Set(list.map((p) => p.group));
    const before = this.list();
    for (const g of [...this.policies.keys()]) if (!keep.has(g)) this.policies.delete(g);
    for (const p of list) this.policies.set(p.group, p);
    this.dropSeriesOf(before);
    this.o.log.info('policies synchronised', { groups: [...keep] });
    await this.persistPolicies();
    this.tick();
  }

  private holds(group: string, disk: string): boolean {
    return this.policies.get(group)?.disks.some((d) => d.disk === disk) ?? false;
  }

  /** The series of disks this node no longer schedules: /metrics kept a removed group's RPO and last point for ever. */
  private dropSeriesOf(before: Policy[]): void {
    for (const p of before) {
      for (const d of p.disks) {
        if (this.holds(p.group, d.disk)) continue;
        this.o.metrics.rpoTarget.remove({ group: p.group, disk: d.disk });
        this.o.metrics.lastPoint.remove({ group: p.group, disk: d.disk });
      }
    }
  }

  private persistPolicies(): Promise<void> {
    const snapshot = this.list();
    this.saving = this.saving.then(() => this.o.state.savePolicies(snapshot)).catch((err) => this.o.log.error('could not persist policies', { err }));
    return this.saving;
  }

  private persistDisks(): void {
    const snapshot = JSON.parse(JSON.stringify(this.disks));
    this.saving = this.saving
      .then(() => this.o.state.saveDisks(snapshot))
      .catch((err) => this.o.log.error('could not persist disk records', { err }));
  }

  /** Called by the runner after any committed point (scheduled or not): it restarts that disk's RPO clock. */
  recordPoint(group: string | undefined, storeUrl: string, r: ReplicateResult, startedAt: Date): void {
    const key = diskKey({ url: storeUrl }, r.disk);
    const rec = (this.disks[key] ??= {});
    if (rec.lastPointAt && Date.parse(rec.lastPointAt) > startedAt.getTime()) return;
    rec.lastPointAt = startedAt.toISOString();
    rec.lastPoint = r.point;
    delete rec.missedReportedAt;
    // A run of a group removed while it ran records its point, but its series stays gone.
    if (group === undefined || this.holds(group, r.disk))
      this.o.metrics.lastPoint.set({ group: group ?? '', disk: r.disk }, startedAt.getTime() / 1000);
    this.persistDisks();
  }

  /** Lag of every scheduled disk, for the rnode_rpo_lag_seconds gauge. */
  lags(): { group: string; disk: string; lag: number; rpo: number }[] {
    const now = this.now();
    const out: { group: string; disk: string; lag: number; rpo: number }[] = [];
    for (const p of this.policies.values()) {
      for (const d of p.disks) {
        const key = diskKey(p.store, d.disk);
        const last = this.disks[key]?.lastPointAt;
        const from = last ? Date.parse(last) : (this.since.get(key) ?? now);
        out.push({ group: p.group, disk: d.disk, lag: Math.max(0, (now - from) / 1000), rpo: p.rpoSeconds });
      }
    }
    return out;
  }

  tick(): void {
    if (this.stopped) return;
    const now = this.now();
    for (const p of this.policies.values()) {
      const interval = (p.intervalSeconds ?? p.rpoSeconds / 2) * 1000;
      let vmLaunched = false; // a VM policy runs all its disks as one job (one snapshot)
      for (const d of p.disks) {
        const key = diskKey(p.store, d.disk);
        if (!this.since.has(key)) this.since.set(key, now);
        const rec = (this.disks[key] ??= {});
        this.dropFutureTime(p, d.disk, key, rec, now);
        this.o.metrics.rpoTarget.set({ group: p.group, disk: d.disk }, p.rpoSeconds);
        this.checkRpo(p, d.disk, key, rec, now);
        if (p.paused || vmLaunched) continue;
        const lastPoint = rec.lastPointAt ? Date.parse(rec.lastPointAt) : undefined;
        const last = Math.max(this.lastStart.get(key) ?? -Infinity, lastPoint ?? -Infinity);
        if (now < last + interval) continue;
        if (this.active.has(key) || this.o.runner.holdsDisk(key)) {
          if (!this.skipNoted.has(key)) {
            this.skipNoted.add(key);
            this.o.metrics.overlapSkipped.inc({ group: p.group, disk: d.disk, reason: 'busy' });
            this.o.log.warn('scheduled run skipped: the disk is still busy with an earlier run', { group: p.group, disk: d.disk });
          }
          continue;
        }
        this.skipNoted.delete(key);
        this.launch(p, d.disk, key, now);
        vmLaunched = p.vm !== undefined;
      }
    }
  }

  private launch(p: Policy, disk: string, key: string, now: number): void {
    const ds = p.disks.find((x) => x.disk === disk)!;
    const keys = p.vm !== undefined ? p.disks.map((d) => diskKey(p.store, d.disk)) : [key];
    for (const k of keys) {
      this.active.add(k);
      this.lastStart.set(k, now);
    }
    const jobId = `s:${p.group}:${disk}:${now.toString(36)}`.slice(0, 128);
    let run: Promise<void>;
    try {
      run = this.o.runner.start(
        {
          jobId,
          kind: 'replicate',
          group: p.group,
          store: p.store,
          disks: p.vm !== undefined ? p.disks : [ds],
          bandwidth: p.bandwidth,
          concurrency: p.concurrency,
          compression: p.compression,
          encryption: p.encryption,
          chunkSize: p.chunkSize,
          checkpointSeconds: p.checkpointSeconds,
          leaseTtlSeconds: p.leaseTtlSeconds,
          ...(p.vm !== undefined
            ? {
                vm: p.vm,
                quiesce: p.quiesce,
                quiesceFallback: p.quiesceFallback,
                unsupportedDisks: p.unsupportedDisks,
                diskParallelism: p.diskParallelism,
              }
            : {}),
        },
        {
          scheduled: true,
          group: p.group,
          retentionKeep: p.retention?.keep,
          retentionGraceMs: p.retention?.graceSeconds !== undefined ? p.retention.graceSeconds * 1000 : undefined,
        },
      );
    } catch (err) {
      for (const k of keys) this.active.delete(k);
      this.o.log.error('could not start a scheduled run', { group: p.group, disk, err });
      return;
    }
    run
      .finally(() => {
        for (const k of keys) this.active.delete(k);
      })
      .catch(() => undefined);
  }

  /**
   * A last point time ahead of the clock was recorded while the clock was ahead (since set back): it would hold off
   * every run until that time, and hide the lag (negative, shown as 0). It is dropped: the disk runs now and its RPO
   * counts from when this node started watching it.
   */
  private dropFutureTime(p: Policy, disk: string, key: string, rec: DiskRecord, now: number): void {
    // The same for this process's own times: the clock set back while it runs left its last start and the time it
    // began watching the disk ahead, and the disk had no run, and no RPO miss, until the clock came round again.
    if ((this.lastStart.get(key) ?? -Infinity) > now + CLOCK_SKEW_MS) this.lastStart.delete(key);
    if ((this.since.get(key) ?? -Infinity) > now + CLOCK_SKEW_MS) this.since.set(key, now);
    if (!rec.lastPointAt || Date.parse(rec.lastPointAt) <= now + CLOCK_SKEW_MS) return;
    this.o.log.warn('the last point time of a disk is in the future (was the clock set back?): it is ignored, the disk runs now', {
      group: p.group,
      disk,
      lastPointAt: rec.lastPointAt,
    });
    delete rec.lastPointAt;
    delete rec.missedReportedAt;
    this.persistDisks();
  }

  private checkRpo(p: Policy, disk: string, key: string, rec: DiskRecord, now: number): void {
    const from = rec.lastPointAt ? Date.parse(rec.lastPointAt) : this.since.get(key)!;
    const lag = (now - from) / 1000;
    if (lag <= p.rpoSeconds || rec.missedReportedAt || p.paused) return;
    rec.missedReportedAt = new Date(now).toISOString();
    this.persistDisks();
    this.o.metrics.rpoMissed.inc({ group: p.group, disk });
    const reason = this.active.has(key) ? 'a run is still in progress' : rec.lastPointAt ? 'no point since' : 'no point yet';
    this.o.log.warn('RPO missed', { group: p.group, disk, rpoSeconds: p.rpoSeconds, lagSeconds: round(lag) });
    this.o.report({
      type: 'rpo.missed',
      group: p.group,
      disk,
      rpoSeconds: p.rpoSeconds,
      lagSeconds: round(lag),
      lastPointAt: rec.lastPointAt ?? null,
      reason,
    });
  }
}

const round = (n: number) => Math.round(n * 1000) / 1000;
