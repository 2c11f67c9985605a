// One logged-in vSphere session for one VM, and the snapshots taken through it: a snapshot opens every
// selected disk through one VDDK connection, and removing it closes them and deletes the snapshot.
import fs from 'node:fs';
import { ErrorCodes, RnodeError } from '../../errors.js';
import { connectVddk, initVddk, type VddkConnection, type VddkDisk } from './vddk.js';
import { VSphereClient, type VirtualDiskInfo, type VmInfo } from './vsphere/client.js';
import type { VmwareSourceConfig } from './config.js';
import { VddkSource } from './source.js';

export interface SessionOptions {
  /** Notes for the run log: CBT enabled, fallbacks taken. Never receives secrets. */
  log?: (line: string) => void;
}

/** Reads the password file: the first line, without its newline. The Buffer is wiped when the session closes. */
function readPassword(file: string): Buffer {
  let raw: Buffer;
  try {
    raw = fs.readFileSync(file);
  } catch (err) {
    throw new RnodeError(ErrorCodes.SOURCE_NOT_FOUND, `cannot read the password file ${file} (${(err as NodeJS.ErrnoException).code}); check passwordFile`, { cause: err });
  }
  let end = raw.indexOf(0x0a);
  if (end < 0) end = raw.length;
  if (end > 0 && raw[end - 1] === 0x0d) end--;
  const pw = Buffer.from(raw.subarray(0, end));
  raw.fill(0);
  if (pw.length === 0) throw new RnodeError(ErrorCodes.BAD_SOURCE, `the password file ${file} is empty`);
  return pw;
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

  get log(): (line: string) => void { return this.#log; }

  async vmInfo(): Promise<VmInfo> {
    return this.client.vmInfo(this.config.vm);
  }

  /**
   * Makes sure CBT is on when the policy allows turning it on. Returns whether it is on now; when it was
   * just turned on, the snapshot taken next is the first that carries change ids.
   */
  async ensureChangeTracking(vm?: VmInfo): Promise<{ enabled: boolean; enabledNow: boolean }> {
    const info = vm ?? await this.vmInfo();
    if (info.changeTrackingEnabled) return { enabled: true, enabledNow: false };
    if (this.config.enableCbt === false) {
      this.#log(`CBT is off for VM ${info.moref} and enableCbt is false: every run reads all allocated areas`);
      return { enabled: false, enabledNow: false };
    }
    await this.client.setChangeTracking(info.moref, true);
    this.#log(`CBT was off for VM ${info.moref}; turned it on (ReconfigVM), effective from this run's snapshot`);
    return { enabled: true, enabledNow: true };
  }

  /** Takes a snapshot (no memory) and opens the selected disks of it read-only through VDDK. */
  async createSnapshot(opts: { name?: string; disks?: number[] } = {}): Promise<VmSnapshot> {
    if (this.#closed) throw new RnodeError(ErrorCodes.INTERNAL, 'the vSphere session is closed');
    const vm = this.config.vm;
    const name = opts.name ?? `rnode-${new Date().toISOString()}`;
    const moref = await this.client.createSnapshot(vm, name, { description: 'taken by rnode for replication; removed when the run ends', quiesce: this.config.quiesce });
    const snap = new VmSnapshot(this, moref);
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
  disks: VirtualDiskInfo[] = [];
  readonly sources = new Map<number, VddkSource>();
  #session: VmwareSession;
  #connection?: VddkConnection;
  #removed?: Promise<void>;

  constructor(session: VmwareSession, moref: string) {
    this.#session = session;
    this.moref = moref;
  }

  /** @internal */
  async openDisks(keys: number[] | undefined, password: Buffer): Promise<void> {
    const { config, client, log } = this.#session;
    const all = await client.snapshotDisks(this.moref);
    const wanted = keys ?? all.map((d) => d.key);
    for (const k of wanted) {
      if (!all.some((d) => d.key === k)) {
        throw new RnodeError(ErrorCodes.BAD_SOURCE, `VM ${config.vm} has no virtual disk with device key ${k} (it has ${all.map((d) => d.key).join(', ') || 'none'}); check "disks"`);
      }
    }
    this.disks = all.filter((d) => wanted.includes(d.key));
    if (this.disks.length === 0) throw new RnodeError(ErrorCodes.BAD_SOURCE, `VM ${config.vm} has no virtual disks`);
    this.#connection = await connectVddk({
      vmMoref: config.vm, server: config.host, port: config.port ?? 443, nfcHostPort: config.nfcHostPort, thumbprint: config.thumbprint,
      user: config.user, password, snapshotMoref: this.moref, transports: config.transports ?? ['nbdssl', 'nbd'], identity: 'rnode replication',
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

  /** Closes the disks and the VDDK connection, then deletes the snapshot. Always tries all three; idempotent. */
  remove(): Promise<void> {
    this.#removed ??= (async () => {
      const errors: unknown[] = [];
      for (const s of this.sources.values()) await s.release().catch((e) => errors.push(e));
      if (this.#connection) await this.#connection.disconnect().catch((e) => errors.push(e));
      try {
        await this.#session.client.removeSnapshot(this.moref);
      } catch (err) {
        throw new RnodeError(ErrorCodes.SOURCE_IO, `snapshot ${this.moref} of VM ${this.#session.config.vm} could not be removed: ${(err as Error).message}; ` +
          'remove it in vCenter, a leftover snapshot grows until it is consolidated', { cause: err });
      }
      if (errors.length) this.#session.log(`closing VDDK for snapshot ${this.moref}: ${errors.map((e) => (e as Error).message).join('; ')}`);
    })();
    return this.#removed;
  }
}
