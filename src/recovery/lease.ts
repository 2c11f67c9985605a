// One writer per disk: a lease object in the store, taken and renewed with conditional writes, carrying a
// fencing token that grows with every new holder. A writer that cannot renew stops before it commits.
// The guarantee is as strong as the backend's conditional put (store.capabilities.conditionalPut).
import { randomUUID } from 'node:crypto';
import os from 'node:os';
import { ErrorCodes, RnodeError, isRnodeError } from '../errors.js';
import { layout } from '../format/layout.js';
import type { ObjectStore } from '../store/types.js';

export interface LeaseRecord {
  format: 'rnode-lease';
  disk: string;
  holder: string;
  /** Fencing token: strictly greater for every new holder of this disk's lease. */
  token: number;
  acquiredAt: string;
  expiresAt: string;
}

export interface LeaseOptions {
  /** Who holds it, for messages (node name); a random suffix makes each acquisition unique. */
  holder?: string;
  ttlMs?: number;
  /** Keep trying this long while another holder's lease is live (0: fail at once). */
  waitMs?: number;
  now?: () => number;
}

export class Lease {
  private etag: string;
  private timer: NodeJS.Timeout | undefined;
  private lostError: RnodeError | undefined;
  private renewing: Promise<void> | undefined;
  private readonly controller = new AbortController();

  private constructor(private readonly store: ObjectStore, readonly record: LeaseRecord, etag: string,
    private readonly ttlMs: number, private readonly now: () => number) {
    this.etag = etag;
  }

  get token(): number { return this.record.token; }
  /** Aborted when the lease is lost, so long-running work stops early. */
  get signal(): AbortSignal { return this.controller.signal; }

  static async acquire(store: ObjectStore, disk: string, opts: LeaseOptions = {}): Promise<Lease> {
    const ttlMs = opts.ttlMs ?? 60_000;
    const now = opts.now ?? Date.now;
    const holder = `${opts.holder ?? os.hostname()}/${process.pid}/${randomUUID().slice(0, 8)}`;
    const key = layout.lease(disk);
    const deadline = now() + (opts.waitMs ?? 0);
    for (let attempt = 0; ; attempt++) {
      const cur = await readLease(store, key);
      const t = now();
      const record: LeaseRecord = {
        format: 'rnode-lease', disk, holder, token: (cur?.record.token ?? 0) + 1,
        acquiredAt: new Date(t).toISOString(), expiresAt: new Date(t + ttlMs).toISOString(),
      };
      if (cur && cur.record.holder === holder) {
        // Our own write, landed by an attempt that reported failure (a retried conditional put).
        const lease = new Lease(store, cur.record, cur.etag, ttlMs, now);
        lease.startRenewing();
        return lease;
      }
      if (cur && Date.parse(cur.record.expiresAt) > t && !holderIsDead(cur.record.holder)) {
        if (t < deadline) {
          await sleep(Math.min(1000, deadline - t));
          continue;
        }
        throw new RnodeError(ErrorCodes.LEASE_HELD,
          `disk ${disk} is being written by ${cur.record.holder} (lease until ${cur.record.expiresAt}); wait for it to finish, only one node may write a disk at a time`,
          { details: { holder: cur.record.holder, expiresAt: cur.record.expiresAt } });
      }
      try {
        const info = await store.put(key, encode(record), cur ? { ifMatch: cur.etag, control: true } : { ifNoneMatch: true, control: true });
        const lease = new Lease(store, record, info.etag ?? '', ttlMs, now);
        lease.startRenewing();
        return lease;
      } catch (err) {
        // Someone else took it between our read and our write: read again.
        if (isRnodeError(err, ErrorCodes.STORE_PRECONDITION) && attempt < 20) continue;
        throw err;
      }
    }
  }

  private startRenewing(): void {
    this.timer = setInterval(() => { this.renew().catch(() => undefined); }, Math.max(50, Math.floor(this.ttlMs / 3)));
    this.timer.unref();
  }

  /**
   * Extends the lease; marks it lost (and aborts `signal`) if another holder took over. Renewals run one at
   * a time: two overlapping conditional puts with one etag would make the loser think the lease was stolen.
   */
  renew(): Promise<void> {
    const prev = this.renewing;
    const run = (async () => {
      await prev?.catch(() => undefined);
      await this.renewOnce();
    })();
    this.renewing = run;
    void run.catch(() => undefined).finally(() => { if (this.renewing === run) this.renewing = undefined; });
    return run;
  }

  private async renewOnce(): Promise<void> {
    if (this.lostError) throw this.lostError;
    const t = this.now();
    const next: LeaseRecord = { ...this.record, expiresAt: new Date(t + this.ttlMs).toISOString() };
    try {
      const info = await this.store.put(layout.lease(this.record.disk), encode(next), { ifMatch: this.etag, control: true });
      this.etag = info.etag ?? this.etag;
      this.record.expiresAt = next.expiresAt;
    } catch (err) {
      if (isRnodeError(err, ErrorCodes.STORE_PRECONDITION) || isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) {
        this.markLost();
      } else if (Date.parse(this.record.expiresAt) <= this.now()) {
        this.markLost(); // could not renew in time: someone else may hold it now
      }
      throw this.lostError ?? err;
    }
  }

  private markLost(): void {
    this.lostError ??= new RnodeError(ErrorCodes.LEASE_LOST,
      `lost the write lease of disk ${this.record.disk} (token ${this.record.token}) to another writer; this run stopped without committing`);
    this.controller.abort(this.lostError);
  }

  /** Called right before a commit: renews, so a writer whose lease lapsed never commits. */
  async check(): Promise<void> {
    await this.renew();
  }

  async release(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    if (this.lostError) return;
    // Expire it rather than delete it, so the fencing token keeps growing across holders.
    const done: LeaseRecord = { ...this.record, expiresAt: new Date(0).toISOString() };
    await this.store.put(layout.lease(this.record.disk), encode(done), { ifMatch: this.etag, control: true }).catch(() => undefined);
  }
}

/**
 * A holder on this host whose process is gone (a crash, SIGKILL) cannot renew: its lease is stale now, not at
 * expiry, as restic treats a stale lock. A reused pid only makes us wait for the expiry, the safe direction.
 */
function holderIsDead(holder: string): boolean {
  const [host, pidText] = holder.split('/');
  const pid = Number(pidText);
  if (host !== os.hostname() || !Number.isSafeInteger(pid) || pid <= 0 || pid === process.pid) return false;
  try {
    process.kill(pid, 0);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

async function readLease(store: ObjectStore, key: string): Promise<{ record: LeaseRecord; etag: string } | undefined> {
  try {
    const info = await store.head(key);
    const bytes = await store.get(key);
    const record = JSON.parse(bytes.toString('utf8')) as LeaseRecord;
    if (record?.format !== 'rnode-lease' || !Number.isSafeInteger(record.token)) throw new SyntaxError('not a lease');
    return { record, etag: info.etag ?? '' };
  } catch (err) {
    if (isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) return undefined;
    if (err instanceof SyntaxError) {
      throw new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `lease object ${key} is damaged; delete it if no writer is running`);
    }
    throw err;
  }
}

function encode(r: LeaseRecord): Buffer {
  return Buffer.from(JSON.stringify(r));
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
