// One writer per disk: a lease object in the store, taken and renewed with conditional writes, carrying a
// fencing token that grows with every new holder. A writer that cannot renew stops before it commits.
// The guarantee is as strong as the backend's conditional put (store.capabilities.conditionalPut). Through a ws peer
// the receiving node writes the record (LeaseAuthority); every reader treats a lease past MAX_LEASE_TTL_MS as expired.
import { createHash, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import { ErrorCodes, RnodeError, isRnodeError } from '../errors.js';
import { layout } from './names.js';
import type { LeaseAuthority, LeaseRecord, ObjectStore } from '../store/types.js';

export type { LeaseAuthority, LeaseRecord };

/**
 * The longest a lease may run past its last renewal. A lease whose expiry lies further than this from its renewal
 * (e.g. expiresAt 2099, written by hand or by a hostile peer) is treated as expired by every reader: no lease can
 * lock a disk for longer than this without being renewed. Receiving nodes clamp peers' TTLs to it too.
 */
export const MAX_LEASE_TTL_MS = 10 * 60_000;
/** Shortest TTL a receiving node grants (a peer asking for less gets this). */
export const MIN_LEASE_TTL_MS = 1000;
/**
 * How long a writer on a store without conditional puts waits before it reads its lease record back: longer than
 * another writer's put can take (four times our own, at least 250 ms, at most 5 s), short enough to add little to a run.
 */
const UNCONDITIONAL_SETTLE_MS = 250;
const UNCONDITIONAL_SETTLE_MAX_MS = 5000;
/** Clock skew tolerated between a lease's writer and its reader. */
const SKEW_MS = 60_000;

/**
 * How long a lease of this TTL can bind others after its holder's last renewal (its TTL plus the readers' skew
 * margin, see leaseIsLive): how long a writer taking over a crashed holder's disk must be ready to wait.
 */
export function leaseBindsForMs(ttlMs: number): number {
  const ttl = clampLeaseTtl(ttlMs);
  return ttl + Math.min(SKEW_MS, ttl);
}

/** Clamps a requested TTL into [MIN_LEASE_TTL_MS, MAX_LEASE_TTL_MS]. */
export function clampLeaseTtl(ttlMs: number): number {
  return Math.min(MAX_LEASE_TTL_MS, Math.max(MIN_LEASE_TTL_MS, Number.isFinite(ttlMs) ? ttlMs : MAX_LEASE_TTL_MS));
}

/**
 * Whether a lease binds others at time t: not expired, and not absurd (see MAX_LEASE_TTL_MS). Its expiry is the
 * writer's clock, t the reader's: the reader waits past it by the smaller of SKEW_MS and the lease's TTL, so a writer
 * whose clock is behind (by less than that) is not taken over while it still counts its lease as held. The writer
 * itself stops at its own expiry (Lease.renew).
 */
export function leaseIsLive(r: LeaseRecord, t: number): boolean {
  const expires = Date.parse(r.expiresAt);
  const renewed = Date.parse(r.renewedAt ?? r.acquiredAt);
  if (!Number.isFinite(expires) || !Number.isFinite(renewed)) return false;
  return leaseBindsUntil(r) > t && expires - renewed <= MAX_LEASE_TTL_MS + SKEW_MS && renewed <= t + SKEW_MS;
}

/** When a lease stops binding others (reader's clock): its expiry plus the skew margin leaseIsLive waits; NaN if unreadable. */
function leaseBindsUntil(r: LeaseRecord): number {
  const expires = Date.parse(r.expiresAt);
  const renewed = Date.parse(r.renewedAt ?? r.acquiredAt);
  return expires + Math.min(SKEW_MS, Math.max(0, expires - renewed));
}

export interface LeaseOptions {
  /** Who holds it, for messages (node name); a random suffix makes each acquisition unique. */
  holder?: string;
  /** Clamped to MAX_LEASE_TTL_MS. */
  ttlMs?: number;
  /** Keep trying this long while another holder's lease is live (0: fail at once). */
  waitMs?: number;
  now?: () => number;
}

/**
 * The time shown is when the lease stops binding (expiresAt is the holder's own clock; readers wait the skew margin
 * past it): expiresAt alone read as a time already past while the lease still held.
 */
function leaseHeld(disk: string, cur: LeaseRecord): RnodeError {
  const until = leaseBindsUntil(cur);
  const bindsUntil = Number.isFinite(until) ? new Date(until).toISOString() : cur.expiresAt; // unreadable dates: as written
  return new RnodeError(
    ErrorCodes.LEASE_HELD,
    `disk ${disk} is being written by ${cur.holder} (lease until ${bindsUntil}); wait for it to finish, only one node may write a disk at a time`,
    { details: { holder: cur.holder, expiresAt: cur.expiresAt, bindsUntil } },
  );
}

function leaseLost(r: LeaseRecord): RnodeError {
  return new RnodeError(
    ErrorCodes.LEASE_LOST,
    `lost the write lease of disk ${r.disk} (token ${r.token}) to another writer; this run stopped without committing`,
  );
}

/** Leases as objects of a store, written with conditional puts by whoever holds them (a local writer, or a node). */
export class StoreLeases implements LeaseAuthority {
  constructor(
    private readonly store: ObjectStore,
    private readonly now: () => number = Date.now,
  ) {}

  async acquire(disk: string, holder: string, ttlMs: number, breakDead?: string): Promise<LeaseRecord> {
    const key = layout.lease(disk);
    ttlMs = clampLeaseTtl(ttlMs);
    for (let attempt = 0; ; attempt++) {
      const cur = await readLease(this.store, key);
      const t = this.now();
      if (cur && cur.record.holder === holder && leaseIsLive(cur.record, t)) {
        // Our own write, landed by an attempt that reported failure (a retried conditional put or message).
        return cur.record;
      }
      if (cur && leaseIsLive(cur.record, t) && !holderIsDead(cur.record.holder) && breakDead !== cur.record.holder) {
        throw leaseHeld(disk, cur.record);
      }
      const at = new Date(t).toISOString();
      const record: LeaseRecord = {
        format: 'rnode-lease',
        disk,
        holder,
        token: (cur?.record.token ?? 0) + 1,
        acquiredAt: at,
        renewedAt: at,
        expiresAt: new Date(t + ttlMs).toISOString(),
      };
      try {
        const putAt = performance.now();
        await this.store.put(key, encode(record), cur ? { ifMatch: cur.etag, control: true } : { ifNoneMatch: true, control: true });
        if (this.store.capabilities.conditionalPut) return record;
        const settleMs = Math.min(UNCONDITIONAL_SETTLE_MAX_MS, Math.max(UNCONDITIONAL_SETTLE_MS, 4 * (performance.now() - putAt)));
        // A store that does not enforce the condition (?conditional=off) lets two writers that read "free" at once
        // both write a record; the last one stays. Each reads back after a settle time: the one whose record is there
        // holds the lease, the other backs off before it writes anything (a loser that wrote tables overwrote the
        // winner's, and the winner committed a corrupt point).
        await new Promise((r) => setTimeout(r, settleMs));
        const back = await readLease(this.store, key);
        if (back && back.record.holder === holder && back.record.token === record.token) return record;
        if (back && leaseIsLive(back.record, this.now())) throw leaseHeld(disk, back.record);
        if (attempt < 20) continue;
        throw leaseHeld(disk, back?.record ?? record);
      } catch (err) {
        // Someone else took it between our read and our write: read again.
        if (isRnodeError(err, ErrorCodes.STORE_PRECONDITION) && attempt < 20) continue;
        throw err;
      }
    }
  }

  async renew(r: LeaseRecord, ttlMs: number): Promise<LeaseRecord> {
    // From the stored record, never the caller's copy: a node renewing for a peer takes only holder and token from it.
    const cur = await readLease(this.store, layout.lease(r.disk));
    if (!cur || cur.record.holder !== r.holder || cur.record.token !== r.token) throw leaseLost(r);
    const t = this.now();
    const next: LeaseRecord = { ...cur.record, renewedAt: new Date(t).toISOString(), expiresAt: new Date(t + clampLeaseTtl(ttlMs)).toISOString() };
    try {
      await this.store.put(layout.lease(r.disk), encode(next), { ifMatch: cur.etag, control: true });
      return next;
    } catch (err) {
      if (isRnodeError(err, ErrorCodes.STORE_PRECONDITION) || isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) throw leaseLost(r);
      throw err;
    }
  }

  async confirm(r: LeaseRecord): Promise<void> {
    const cur = await readLease(this.store, layout.lease(r.disk));
    if (!cur || cur.record.holder !== r.holder || cur.record.token !== r.token) throw leaseLost(r);
  }

  async release(r: LeaseRecord): Promise<void> {
    const cur = await readLease(this.store, layout.lease(r.disk));
    if (!cur || cur.record.holder !== r.holder || cur.record.token !== r.token) return;
    const done: LeaseRecord = { ...cur.record, expiresAt: new Date(0).toISOString() };
    await this.store.put(layout.lease(r.disk), encode(done), { ifMatch: cur.etag, control: true });
  }
}

/** The authority for a store's leases: the store's own (a ws peer's node), else its objects (StoreLeases). */
export function leaseAuthority(store: ObjectStore, now?: () => number): LeaseAuthority {
  return store.leases ?? new StoreLeases(store.controlLane ?? store, now);
}

export class Lease {
  private timer: NodeJS.Timeout | undefined;
  private lostError: RnodeError | undefined;
  private renewing: Promise<void> | undefined;
  private readonly controller = new AbortController();

  private constructor(
    private readonly authority: LeaseAuthority,
    readonly record: LeaseRecord,
    private readonly ttlMs: number,
    private readonly now: () => number,
  ) {}

  get token(): number {
    return this.record.token;
  }
  /** Aborted when the lease is lost, so long-running work stops early. */
  get signal(): AbortSignal {
    return this.controller.signal;
  }

  /**
   * Runs fn holding the lease `name` (released after, also on a failure); with opts false, without a lease (the
   * caller holds it already, e.g. the agent or a VM run).
   */
  static async holding<T>(
    store: ObjectStore,
    name: string,
    opts: LeaseOptions | false | undefined,
    fn: (lease: Lease | undefined) => Promise<T>,
  ): Promise<T> {
    if (opts === false) return fn(undefined);
    const lease = await Lease.acquire(store, name, opts);
    try {
      return await fn(lease);
    } finally {
      await lease.release();
    }
  }

  static async acquire(store: ObjectStore, disk: string, opts: LeaseOptions = {}): Promise<Lease> {
    const ttlMs = clampLeaseTtl(opts.ttlMs ?? 60_000);
    const now = opts.now ?? Date.now;
    const holder = `${opts.holder ?? os.hostname()}/${process.pid}/${randomUUID().slice(0, 8)}/${pidSpace()}`;
    const authority = leaseAuthority(store, now);
    const deadline = now() + (opts.waitMs ?? 0);
    let breakDead: string | undefined;
    for (;;) {
      try {
        const record = await authority.acquire(disk, holder, ttlMs, breakDead);
        const lease = new Lease(authority, record, ttlMs, now);
        lease.startRenewing();
        return lease;
      } catch (err) {
        if (!isRnodeError(err, ErrorCodes.LEASE_HELD)) throw err;
        // A holder on this host whose process is gone: a node cannot see that, the writer tells it (once per holder).
        const other = String(err.details.holder ?? '');
        if (other !== breakDead && holderIsDead(other)) {
          breakDead = other;
          continue;
        }
        if (now() >= deadline) throw err;
        await sleep(Math.min(1000, deadline - now()));
      }
    }
  }

  private startRenewing(): void {
    this.timer = setInterval(
      () => {
        this.renew().catch(() => undefined);
      },
      Math.max(50, Math.floor(this.ttlMs / 3)),
    );
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
    void run
      .catch(() => undefined)
      .finally(() => {
        if (this.renewing === run) this.renewing = undefined;
      });
    return run;
  }

  private async renewOnce(): Promise<void> {
    if (this.lostError) throw this.lostError;
    try {
      const next = await this.authority.renew(this.record, this.ttlMs);
      this.record.expiresAt = next.expiresAt;
      this.record.renewedAt = next.renewedAt;
    } catch (err) {
      if (isRnodeError(err, ErrorCodes.LEASE_LOST)) {
        this.markLost();
      } else if (Date.parse(this.record.expiresAt) <= this.now()) {
        this.markLost(); // could not renew in time: someone else may hold it now
      }
      throw this.lostError ?? err;
    }
  }

  private markLost(): void {
    this.lostError ??= leaseLost(this.record);
    this.controller.abort(this.lostError);
  }

  /** Called right before a commit: renews, so a writer whose lease lapsed never commits. */
  async check(): Promise<void> {
    await this.renew();
  }

  /**
   * Called right before a write to a key another holder of the lease would write too (a point's table segments and
   * checkpoint): throws if the lease is lost, and renews first if it has run out by our clock (the process was paused,
   * or its renewals failed). A writer that lost its lease wrote its checkpoint over the new holder's committed point.
   * Where the lease record can be read (not through a ws peer), it is read too: one small read per segment, and a
   * writer that another took the lease from (a store whose conditional put let both win) stops before its write.
   */
  async held(): Promise<void> {
    if (this.lostError) throw this.lostError;
    if (Date.parse(this.record.expiresAt) <= this.now()) return this.renew();
    if (!this.authority.confirm) return;
    try {
      await this.authority.confirm(this.record);
    } catch (err) {
      if (isRnodeError(err, ErrorCodes.LEASE_LOST)) this.markLost();
      throw this.lostError ?? err;
    }
  }

  async release(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    if (this.lostError) return;
    await this.renewing?.catch(() => undefined);
    await this.authority.release(this.record).catch(() => undefined);
  }
}

/**
 * Where a pid means one process: this boot of this machine, and this pid namespace. The host name does not tell:
 * cloned VMs share it, and so do containers on the host's network; a pid from one of those is a different process
 * (or none) here, and a live writer's lease was broken. 'unknown' where /proc does not say: never compared equal.
 */
let ownPidSpace: string | undefined;
export function pidSpace(): string {
  if (ownPidSpace === undefined) {
    try {
      const boot = fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
      const ns = fs.readlinkSync('/proc/self/ns/pid');
      ownPidSpace = createHash('sha256').update(`${boot} ${ns}`).digest('hex').slice(0, 12);
    } catch {
      ownPidSpace = 'unknown';
    }
  }
  return ownPidSpace;
}

/**
 * A holder in this pid space whose process is gone (a crash, SIGKILL) cannot renew: its lease is stale now, not at
 * expiry, as restic treats a stale lock. A reused pid only makes us wait for the expiry, the safe direction; so does a
 * holder from elsewhere, or named the way rnode did before it recorded the pid space.
 */
export function holderIsDead(holder: string): boolean {
  // name/pid/random/space, counted from the end: a node name may hold a slash.
  const parts = holder.split('/');
  if (parts.length < 4) return false;
  const space = parts[parts.length - 1];
  const pid = Number(parts[parts.length - 3]);
  if (space === 'unknown' || space !== pidSpace()) return false;
  if (!Number.isSafeInteger(pid) || pid <= 0 || pid === process.pid) return false;
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
