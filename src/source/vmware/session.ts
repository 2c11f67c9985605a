// One logged-in vSphere session for one VM, and the snapshots taken through it: a snapshot opens every
// selected disk through one VDDK connection, and removing it closes them and deletes the snapshot.
import fs from 'node:fs';
import { checkKeyFileMode } from '../../crypto/keys.js';
import { ErrorCodes, RnodeError } from '../../errors.js';
import { cleanupVddk, connectVddk, endAccessVddk, initVddk, type VddkConnectOptions, type VddkConnection, type VddkDisk } from './vddk.js';
import { VSphereClient, type SnapshotTreeEntry, type VirtualDiskInfo, type VmInfo } from './vsphere/client.js';
import { VSphereFault } from './vsphere/errors.js';
import type { VmwareSourceConfig } from './config.js';
import { VddkSource } from './source.js';

export interface SessionOptions {
  /** Notes for the run log: CBT enabled, fallbacks taken. Never receives secrets. */
  log?: (line: string) => void;
}

/**
 * Reads the password file: the first line, without its newline. The Buffer is wiped when the session closes. A file
 * group or others may read or write is refused, as key files are: a password anyone on the machine can read is out.
 */
function readPassword(file: string): Buffer {
  const unreadable = (err: unknown) =>
    new RnodeError(
      ErrorCodes.SOURCE_NOT_FOUND,
      `cannot read the password file ${file} (${(err as NodeJS.ErrnoException).code}); check passwordFile`,
      {
        cause: err,
      },
    );
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (err) {
    throw unreadable(err);
  }
  let raw: Buffer;
  try {
    checkKeyFileMode(fs.fstatSync(fd).mode, (why) => new RnodeError(ErrorCodes.BAD_SOURCE, `the password file ${file} (passwordFile) ${why}`), file);
    try {
      raw = fs.readFileSync(fd);
    } catch (err) {
      throw unreadable(err);
    }
  } finally {
    fs.closeSync(fd);
  }
  let end = raw.indexOf(0x0a);
  if (end < 0) end = raw.length;
  if (end > 0 && raw[end - 1] === 0x0d) end--;
  const pw = Buffer.from(raw.subarray(0, end));
  raw.fill(0);
  if (pw.length === 0) throw new RnodeError(ErrorCodes.BAD_SOURCE, `the password file ${file} is empty`);
  return pw;
}

/** Every snapshot rnode takes carries this description; a leftover one (a killed run) is found by it. */
export const SNAPSHOT_DESCRIPTION = 'taken by rnode for replication; removed when the run ends';
const SNAPSHOT_PREFIX = 'rnode-';

/** Task faults of CreateSnapshot_Task that mean "quiescing failed" (a crash-consistent snapshot may still work). */
const QUIESCE_FAULTS = new Set([
  'ApplicationQuiesceFault',
  'FilesystemQuiesceFault',
  'ToolsUnavailable',
  'ToolsUnavailableFault',
  'QuiesceDatastoreIOForHAFailed',
]);

export const VmErrorCodes = {
  /** Quiescing was asked for, could not be done, and the policy says fail. */
  QUIESCE: 'RNODE_VM_QUIESCE',
  /** An independent or physical RDM disk was selected and the policy says fail. */
  DISK_UNSUPPORTED: 'RNODE_VM_DISK_UNSUPPORTED',
} as const;

export type Consistency = 'application' | 'crash';

export interface SnapshotRequest {
  name?: string;
  /** Device keys to open (default: the config's disks, else all). */
  disks?: number[];
  /** Ask VMware Tools to quiesce the guest (default: the config's quiesce). */
  quiesce?: boolean;
  /** When quiescing is impossible: take a crash-consistent snapshot (fallback, the default) or fail. */
  quiesceFallback?: 'fallback' | 'fail';
}

export class VmwareSession {
  readonly config: VmwareSourceConfig;
  readonly client: VSphereClient;
  #password: Buffer;
  #log: (line: string) => void;
  #closed = false;

  private constructor(config: VmwareSourceConfig, client: VSphereClient, password: Buffer, log: (line: string) => void) {
    this.config = config;
    this.client = client;
    this.#password = password;
    this.#log = log;
  }

  /** Checks the certificate, logs in and loads VDDK. */
  static async open(config: VmwareSourceConfig, opts: SessionOptions = {}): Promise<VmwareSession> {
    const password = readPassword(config.passwordFile);
    const client = new VSphereClient({ host: config.host, port: config.port, thumbprint: config.thumbprint, caFile: config.caFile });
    try {
      await client.retrieveServiceContent();
      await client.login(config.user, password.toString('utf8'));
      await initVddk({ libdir: config.libdir, ...(config.vddkConfig ? { configFile: config.vddkConfig } : {}) });
    } catch (err) {
      await client.logout().catch(() => undefined);
      password.fill(0);
      throw err;
    }
    return new VmwareSession(config, client, password, opts.log ?? (() => undefined));
  }

  get log(): (line: string) => void {
    return this.#log;
  }

  async vmInfo(): Promise<VmInfo> {
    return this.client.vmInfo(this.config.vm);
  }

  /**
   * Makes sure CBT is on when the policy allows turning it on. Returns whether it is on now; when it was
   * just turned on, the snapshot taken next is the first that carries change ids.
   */
  async ensureChangeTracking(vm?: VmInfo): Promise<{ enabled: boolean; enabledNow: boolean }> {
    const info = vm ?? (await this.vmInfo());
    if (info.changeTrackingEnabled) return { enabled: true, enabledNow: false };
    // The caller reports it (a VM run's warnings): every point reads all allocated areas.
    if (this.config.enableCbt === false) return { enabled: false, enabledNow: false };
    await this.client.setChangeTracking(info.moref, true);
    this.#log(`CBT was off for VM ${info.moref}; turned it on (ReconfigVM), effective from this run's snapshot`);
    return { enabled: true, enabledNow: true };
  }

  /** The VDDK connect parameters of this session (the password is the session's buffer: do not keep it). */
  #vddkParams(snapshotMoref?: string): VddkConnectOptions {
    const c = this.config;
    return {
      vmMoref: c.vm,
      server: c.host,
      port: c.port ?? 443,
      nfcHostPort: c.nfcHostPort,
      thumbprint: this.client.serverThumbprint,
      user: c.user,
      password: this.#password,
      transports: c.transports ?? ['nbdssl', 'nbd'],
      identity: 'rnode replication',
      ...(snapshotMoref ? { snapshotMoref } : {}),
    };
  }

  /** VixDiskLib_Cleanup for this VM's connection: what an earlier, killed process left behind. */
  async cleanupVddk(): Promise<{ supported: boolean; cleanedUp: number; remaining: number }> {
    return cleanupVddk(this.#vddkParams());
  }

  /** EndAccess for a run that was killed after its PrepareForAccess (vSphere keeps relocation disabled until then). */
  async endStaleAccess(): Promise<void> {
    await endAccessVddk(this.#vddkParams());
  }

  /** Removes snapshots an earlier rnode run of this VM left (a killed process); returns them. User snapshots stay. */
  async removeStaleSnapshots(): Promise<SnapshotTreeEntry[]> {
    const all = await this.client.listSnapshots(this.config.vm);
    const stale = all.filter((s) => s.name.startsWith(SNAPSHOT_PREFIX) && s.description === SNAPSHOT_DESCRIPTION);
    for (const s of stale.reverse()) {
      await this.client.removeSnapshot(s.moref);
      this.#log(`removed snapshot ${s.moref} (${s.name}) that an earlier rnode run of VM ${this.config.vm} left behind`);
    }
    return stale.reverse();
  }

  /**
   * Takes a snapshot (no memory) and opens the selected disks of it read-only through VDDK. With quiesce, VMware
   * Tools must be running and quiescing must work; otherwise quiesceFallback decides (crash-consistent, or fail).
   */
  async createSnapshot(opts: SnapshotRequest = {}): Promise<VmSnapshot> {
    if (this.#closed) throw new RnodeError(ErrorCodes.INTERNAL, 'the vSphere session is closed');
    const vm = this.config.vm;
    const name = opts.name ?? `${SNAPSHOT_PREFIX}${new Date().toISOString()}`;
    const quiesce = opts.quiesce ?? this.config.quiesce ?? false;
    let moref: string | undefined;
    let consistency: Consistency = 'crash';
    let consistencyReason: string | undefined;
    if (quiesce) {
      const tools = await this.client.toolsRunningStatus(vm);
      if (tools !== undefined && tools !== 'guestToolsRunning') {
        consistencyReason = `VMware Tools are not running in VM ${vm} (${tools}), so the guest cannot be quiesced`;
      } else {
        try {
          moref = await this.client.createSnapshot(vm, name, { description: SNAPSHOT_DESCRIPTION, quiesce: true });
          consistency = 'application';
        } catch (err) {
          if (!(err instanceof VSphereFault) || !QUIESCE_FAULTS.has(err.fault)) throw err;
          consistencyReason = `quiescing VM ${vm} failed (${err.fault}${err.faultString ? `: ${err.faultString}` : ''})`;
        }
      }
      if (consistencyReason) {
        if (opts.quiesceFallback === 'fail') {
          throw new RnodeError(
            VmErrorCodes.QUIESCE,
            `${consistencyReason}; no snapshot was taken. Start VMware Tools in the guest, ` +
              'or allow crash-consistent points with quiesceFallback: "fallback"',
          );
        }
        this.#log(`${consistencyReason}; taking a crash-consistent snapshot instead (quiesceFallback: fallback)`);
      }
    }
    moref ??= await this.client.createSnapshot(vm, name, { description: SNAPSHOT_DESCRIPTION, quiesce: false });
    const snap = new VmSnapshot(this, moref, { name, consistency, ...(consistencyReason ? { consistencyReason } : {}) });
    try {
      await snap.openDisks(opts.disks ?? this.config.disks, this.#password);
    } catch (err) {
      await snap.remove().catch((e) => this.#log(`could not remove snapshot ${moref} after a failed open: ${(e as Error).message}`));
      throw err;
    }
    return snap;
  }

  /** Logs out and wipes the password. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      await this.client.logout();
    } finally {
      this.#password.fill(0);
    }
  }
}

export class VmSnapshot {
  readonly moref: string;
  readonly name: string;
  readonly createdAt = new Date().toISOString();
  readonly consistency: Consistency;
  readonly consistencyReason?: string;
  disks: VirtualDiskInfo[] = [];
  readonly sources = new Map<number, VddkSource>();
  #session: VmwareSession;
  #connection?: VddkConnection;
  #removed?: Promise<void>;
  #accessEnded = false;

  constructor(session: VmwareSession, moref: string, about: { name?: string; consistency?: Consistency; consistencyReason?: string } = {}) {
    this.#session = session;
    this.moref = moref;
    this.name = about.name ?? moref;
    this.consistency = about.consistency ?? 'crash';
    if (about.consistencyReason) this.consistencyReason = about.consistencyReason;
  }

  /** @internal */
  async openDisks(keys: number[] | undefined, password: Buffer): Promise<void> {
    const { config, client, log } = this.#session;
    const all = await client.snapshotDisks(this.moref);
    const wanted = keys ?? all.map((d) => d.key);
    for (const k of wanted) {
      if (!all.some((d) => d.key === k)) {
        throw new RnodeError(
          ErrorCodes.BAD_SOURCE,
          `VM ${config.vm} has no virtual disk with device key ${k} (it has ${all.map((d) => d.key).join(', ') || 'none'}); check "disks"`,
        );
      }
    }
    this.disks = all.filter((d) => wanted.includes(d.key));
    if (this.disks.length === 0) throw new RnodeError(ErrorCodes.BAD_SOURCE, `VM ${config.vm} has no virtual disks`);
    this.#connection = await connectVddk({
      vmMoref: config.vm,
      server: config.host,
      port: config.port ?? 443,
      nfcHostPort: config.nfcHostPort,
      // With caFile, the thumbprint of the certificate the CA verified: VDDK takes no CA (it failed ConnectEx).
      thumbprint: client.serverThumbprint,
      user: config.user,
      password,
      snapshotMoref: this.moref,
      transports: config.transports ?? ['nbdssl', 'nbd'],
      identity: 'rnode replication',
    });
    for (const d of this.disks) {
      const vddk: VddkDisk = await this.#connection.open(d.fileName, { maxReadBytes: config.maxReadBytes });
      this.sources.set(d.key, new VddkSource({ client, host: config.host, vm: config.vm, snapshot: this.moref, disk: d, vddk, log }));
    }
  }

  source(key: number): VddkSource {
    const s = this.sources.get(key);
    if (!s) throw new RnodeError(ErrorCodes.BAD_SOURCE, `disk ${key} is not open in snapshot ${this.moref}`);
    return s;
  }

  /** True once remove() has closed the disks and the VDDK connection (EndAccess), whether or not the snapshot went. */
  get accessEnded(): boolean {
    return this.#accessEnded;
  }

  /** Closes the disks and the VDDK connection, then deletes the snapshot. Always tries all three; idempotent. */
  remove(): Promise<void> {
    this.#removed ??= (async () => {
      const errors: unknown[] = [];
      for (const s of this.sources.values()) await s.release().catch((e) => errors.push(e));
      if (this.#connection) await this.#connection.disconnect().catch((e) => errors.push(e));
      // Disconnect calls EndAccess (and a snapshot never connected had no PrepareForAccess): done, even if the
      // snapshot itself cannot be removed below.
      this.#accessEnded = errors.length === 0;
      try {
        await this.#session.client.removeSnapshot(this.moref);
      } catch (err) {
        throw new RnodeError(
          ErrorCodes.SOURCE_IO,
          `snapshot ${this.moref} of VM ${this.#session.config.vm} could not be removed: ${(err as Error).message}; ` +
            'remove it in vCenter, a leftover snapshot grows until it is consolidated',
          { cause: err },
        );
      }
      if (errors.length) this.#session.log(`closing VDDK for snapshot ${this.moref}: ${errors.map((e) => (e as Error).message).join('; ')}`);
    })();
    return this.#removed;
  }
}
