// The TypeScript side of the VDDK binding: validates arguments, owns handle lifetimes and read ordering, and
// turns the addon's errors into VddkError (an RnodeError with a stable RNODE_VDDK_* code and VDDK's own text).
import fs from 'node:fs';
import path from 'node:path';
import { RnodeError } from '../../errors.js';
import { loadAddon } from '../../native/index.js';

export const VDDK_SECTOR = 512;
/** One VixDiskLib_Read is capped at this many bytes: NFC servers limit a request's size. */
export const DEFAULT_MAX_READ_BYTES = 4 * 1024 * 1024;
/** VDDK accepts at most this many chunks in one QueryAllocatedBlocks call. */
const MAX_CHUNKS_PER_QUERY = 512 * 1024;
const MIN_CHUNK_SECTORS = 128;

export const VddkErrorCodes = {
  ERROR: 'RNODE_VDDK_ERROR',
  LOAD: 'RNODE_VDDK_LOAD',
  NOT_INITIALIZED: 'RNODE_VDDK_NOT_INITIALIZED',
  CLOSED: 'RNODE_VDDK_CLOSED',
  NOT_SUPPORTED: 'RNODE_VDDK_NOT_SUPPORTED',
  FILE_NOT_FOUND: 'RNODE_VDDK_FILE_NOT_FOUND',
  INVALID_ARG: 'RNODE_VDDK_INVALID_ARG',
  OUT_OF_MEMORY: 'RNODE_VDDK_OUT_OF_MEMORY',
} as const;

/** A failed VixDiskLib call (or a failure to load VDDK). vixError is VDDK's 64-bit error, vddkText its message. */
export class VddkError extends RnodeError {
  readonly op: string;
  readonly vddkText: string;
  readonly vixError?: bigint;
  readonly vixCode?: number;

  constructor(code: string, message: string, fields: { op: string; vddkText: string; vixError?: bigint; vixCode?: number }) {
    super(code, message, { details: { op: fields.op, ...(fields.vixCode !== undefined ? { vixCode: fields.vixCode } : {}) } });
    this.name = 'VddkError';
    this.op = fields.op;
    this.vddkText = fields.vddkText;
    this.vixError = fields.vixError;
    this.vixCode = fields.vixCode;
  }
}

// ---- the addon's surface (one plain options object per call) ----

declare const connectionBrand: unique symbol;
declare const diskBrand: unique symbol;
type NativeConnection = { readonly [connectionBrand]: true };
type NativeDisk = { readonly [diskBrand]: true };

interface NativeParams {
  vmxSpec: string;
  serverName?: string;
  thumbprint?: string;
  userName?: string;
  password?: Uint8Array;
  port?: number;
  nfcHostPort?: number;
  identity: string;
}

interface NativeVddk {
  vddkInit(o: { libraryPath: string; libdir: string; configFile?: string }): Promise<{ queryAllocatedBlocks: boolean; prepareForAccess: boolean }>;
  vddkConnect(
    o: NativeParams & { snapshotRef?: string; transports?: string; prepareForAccess: boolean },
  ): Promise<{ connection: NativeConnection; prepared: boolean }>;
  vddkOpen(o: { connection: NativeConnection; path: string }): Promise<NativeDisk>;
  vddkGetInfo(o: {
    disk: NativeDisk;
  }): Promise<{ capacitySectors: number; numLinks: number; adapterType: number; uuid: string; transportMode: string }>;
  vddkRead(o: {
    disk: NativeDisk;
    buffer: Uint8Array;
    bufferOffset: number;
    startSector: number;
    sectors: number;
    maxSectorsPerCall: number;
  }): Promise<void>;
  vddkQueryAllocatedBlocks(o: {
    disk: NativeDisk;
    startSector: number;
    sectors: number;
    chunkSectors: number;
  }): Promise<Array<{ offset: number; length: number }>>;
  vddkClose(o: { disk: NativeDisk }): Promise<void>;
  vddkDisconnect(o: { connection: NativeConnection; endAccess: boolean } & Partial<NativeParams>): Promise<void>;
  vddkExit(): Promise<void>;
  vddkCleanup(o: NativeParams): Promise<{ supported: boolean; cleanedUp: number; remaining: number }>;
  vddkEndAccess(o: NativeParams): Promise<void>;
}

let native: NativeVddk | undefined;
function addon(): NativeVddk {
  if (native) return native;
  native = loadAddon() as NativeVddk;
  if (typeof native.vddkInit !== 'function') throw new Error('the rnode_native addon has no VDDK binding; rebuild it');
  return native;
}

function isNativeVddkError(err: unknown): err is Error & { code: string; op: string; vddkText: string; vixError?: bigint; vixCode?: number } {
  return (
    err instanceof Error &&
    typeof (err as { code?: unknown }).code === 'string' &&
    (err as unknown as { code: string }).code.startsWith('RNODE_VDDK_')
  );
}

// Re-created after the await so the error carries the caller's stack, not an empty native one.
async function call<T>(p: () => Promise<T>): Promise<T> {
  try {
    return await p();
  } catch (err) {
    if (!isNativeVddkError(err)) throw err;
    throw new VddkError(err.code, err.message, { op: err.op, vddkText: err.vddkText, vixError: err.vixError, vixCode: err.vixCode });
  }
}

function checkString(name: string, v: unknown, opts: { optional?: boolean } = {}): asserts v is string {
  if (v === undefined && opts.optional) return;
  if (typeof v !== 'string' || v.length === 0 || v.includes('\0')) throw new TypeError(`${name} must be a non-empty string without NUL bytes`);
}

function checkPort(name: string, v: unknown): void {
  if (v !== undefined && (!Number.isInteger(v) || (v as number) < 0 || (v as number) > 65535)) {
    throw new RangeError(`${name} must be an integer port in [0, 65535], got ${String(v)}`);
  }
}

// ---- library lifecycle (process-wide, like VDDK itself) ----

export interface VddkInitOptions {
  /** The VDDK install directory (holds lib64/). Passed to InitEx as libDir. */
  libdir: string;
  /** The library to dlopen; default <libdir>/lib64/libvixDiskLib.so. */
  libraryPath?: string;
  /** A VixDiskLib config file (InitEx's configFile). */
  configFile?: string;
}

export interface VddkFeatures {
  queryAllocatedBlocks: boolean;
  prepareForAccess: boolean;
}

let initialized: { key: string; features: Promise<VddkFeatures> } | undefined;

/** Loads and initializes VDDK once per process; calling again with the same settings is free. */
export function initVddk(opts: VddkInitOptions): Promise<VddkFeatures> {
  checkString('libdir', opts.libdir);
  checkString('libraryPath', opts.libraryPath, { optional: true });
  checkString('configFile', opts.configFile, { optional: true });
  const libdir = path.resolve(opts.libdir);
  const libraryPath = path.resolve(opts.libraryPath ?? path.join(libdir, 'lib64', 'libvixDiskLib.so'));
  const key = JSON.stringify([libdir, libraryPath, opts.configFile ?? null]);
  if (initialized && initialized.key === key) return initialized.features;
  if (initialized) {
    return Promise.reject(
      new VddkError(
        VddkErrorCodes.LOAD,
        `VDDK is already initialized with other settings in this process; ` + 'one process uses one VDDK library and libdir',
        { op: 'InitEx', vddkText: '' },
      ),
    );
  }
  const features = call(() =>
    addon().vddkInit({ libraryPath, libdir, ...(opts.configFile ? { configFile: path.resolve(opts.configFile) } : {}) }),
  ).catch((err) => {
    throw withLoadHint(err, libdir, libraryPath);
  });
  initialized = { key, features };
  features.catch(() => {
    if (initialized?.features === features) initialized = undefined;
  });
  return features;
}

/** dlopen's own text says what failed, not what to do: a wrong libdir, or VDDK's libraries not on the search path. */
function withLoadHint(err: unknown, libdir: string, libraryPath: string): unknown {
  if (!(err instanceof VddkError) || err.code !== VddkErrorCodes.LOAD || err.op !== 'dlopen' || err.message.includes('already loaded')) return err;
  const hint = !fs.existsSync(libraryPath)
    ? 'there is no VDDK library there: set "libdir" in the VMware config (or libdir= in the vddk:// URL) to the VDDK install directory, the one that holds lib64/libvixDiskLib.so'
    : /cannot open shared object file/.test(err.message)
      ? `a library it needs was not found: start rnode with LD_LIBRARY_PATH=${path.join(libdir, 'lib64')} (VDDK loads its own libraries from there)`
      : `check that it is VDDK's libvixDiskLib.so for this platform, and that "libdir" in the VMware config is the VDDK install directory`;
  return new VddkError(err.code, `${err.message}; ${hint}`, { op: err.op, vddkText: err.vddkText, vixError: err.vixError, vixCode: err.vixCode });
}

/** VixDiskLib_Exit. Open handles must be closed first; initVddk may be called again afterwards. */
export async function exitVddk(): Promise<void> {
  if (!initialized) return;
  initialized = undefined;
  await call(() => addon().vddkExit());
}

// ---- connections ----

export interface VddkConnectOptions {
  /** VM managed object id, e.g. "vm-42" (vmxSpec "moref=vm-42"). */
  vmMoref: string;
  /** vCenter or ESXi host; omit for local files. */
  server?: string;
  port?: number;
  nfcHostPort?: number;
  /** SHA-1 thumbprint of the server certificate, "AA:BB:...". */
  thumbprint?: string;
  user?: string;
  /** The password bytes; copied, so the caller may wipe its buffer once connect resolves. */
  password?: Uint8Array;
  /** The snapshot to read, e.g. "snapshot-17". */
  snapshotMoref?: string;
  /** Transport modes in order of preference, e.g. ["nbdssl", "nbd"] or "hotadd:nbdssl". */
  transports?: string[] | string;
  /** Call PrepareForAccess/EndAccess around the connection (default true when remote). */
  prepareForAccess?: boolean;
  identity?: string;
}

const TRANSPORT = /^(file|san|hotadd|nbd|nbdssl)$/;

export function parseTransports(t: string[] | string | undefined): string | undefined {
  if (t === undefined) return undefined;
  const list = (Array.isArray(t) ? t : t.split(/[:,]/)).map((s) => s.trim()).filter(Boolean);
  for (const m of list) {
    if (!TRANSPORT.test(m)) throw new RangeError(`unknown VDDK transport mode "${m}"; use file, san, hotadd, nbd or nbdssl`);
  }
  return list.length ? list.join(':') : undefined;
}

function nativeParams(opts: VddkConnectOptions): NativeParams {
  checkString('vmMoref', opts.vmMoref);
  checkString('server', opts.server, { optional: true });
  checkString('thumbprint', opts.thumbprint, { optional: true });
  checkString('user', opts.user, { optional: true });
  checkPort('port', opts.port);
  checkPort('nfcHostPort', opts.nfcHostPort);
  if (opts.server && !opts.user) throw new TypeError('user is needed to connect to a server');
  if (opts.password !== undefined && !(opts.password instanceof Uint8Array)) throw new TypeError('password must be a Buffer or Uint8Array');
  if (opts.password?.includes(0)) throw new TypeError('password must not contain NUL bytes');
  return {
    vmxSpec: `moref=${opts.vmMoref}`,
    identity: opts.identity ?? 'rnode',
    ...(opts.server ? { serverName: opts.server, userName: opts.user, port: opts.port ?? 443, nfcHostPort: opts.nfcHostPort ?? 0 } : {}),
    ...(opts.thumbprint ? { thumbprint: opts.thumbprint } : {}),
    ...(opts.password ? { password: Buffer.from(opts.password) } : {}),
  };
}

/**
 * VixDiskLib_Cleanup for the VM: what a killed run left behind (hotadd disks still attached, temporary state).
 * Returns how many items it cleaned and how many remain; {supported: false} when the library lacks it.
 */
export async function cleanupVddk(opts: VddkConnectOptions): Promise<{ supported: boolean; cleanedUp: number; remaining: number }> {
  const params = nativeParams(opts);
  try {
    return await call(() => addon().vddkCleanup(params));
  } finally {
    params.password?.fill(0);
  }
}

/** EndAccess for a run that ended (killed) between PrepareForAccess and EndAccess: vSphere re-enables relocation. */
export async function endAccessVddk(opts: VddkConnectOptions): Promise<void> {
  const params = nativeParams(opts);
  try {
    await call(() => addon().vddkEndAccess(params));
  } finally {
    params.password?.fill(0);
  }
}

export async function connectVddk(opts: VddkConnectOptions): Promise<VddkConnection> {
  checkString('vmMoref', opts.vmMoref);
  checkString('server', opts.server, { optional: true });
  checkString('thumbprint', opts.thumbprint, { optional: true });
  checkString('user', opts.user, { optional: true });
  checkString('snapshotMoref', opts.snapshotMoref, { optional: true });
  checkPort('port', opts.port);
  checkPort('nfcHostPort', opts.nfcHostPort);
  if (opts.server && !opts.user) throw new TypeError('user is needed to connect to a server');
  if (opts.password !== undefined && !(opts.password instanceof Uint8Array)) throw new TypeError('password must be a Buffer or Uint8Array');
  if (opts.password?.includes(0)) throw new TypeError('password must not contain NUL bytes');
  const transports = parseTransports(opts.transports);
  // Kept (as a private copy, wiped at disconnect) because EndAccess needs the same credentials again.
  const params: NativeParams = {
    vmxSpec: `moref=${opts.vmMoref}`,
    identity: opts.identity ?? 'rnode',
    ...(opts.server ? { serverName: opts.server, userName: opts.user, port: opts.port ?? 443, nfcHostPort: opts.nfcHostPort ?? 0 } : {}),
    ...(opts.thumbprint ? { thumbprint: opts.thumbprint } : {}),
    ...(opts.password ? { password: Buffer.from(opts.password) } : {}),
  };
  try {
    const { connection, prepared } = await call(() =>
      addon().vddkConnect({
        ...params,
        prepareForAccess: opts.prepareForAccess ?? Boolean(opts.server),
        ...(opts.snapshotMoref ? { snapshotRef: opts.snapshotMoref } : {}),
        ...(transports ? { transports } : {}),
      }),
    );
    return new VddkConnection(connection, prepared, params);
  } catch (err) {
    params.password?.fill(0);
    throw err;
  }
}

export class VddkConnection {
  #connection: NativeConnection;
  #prepared: boolean;
  #params: NativeParams;
  #disks = new Set<VddkDisk>();
  #closed: Promise<void> | undefined;

  constructor(connection: NativeConnection, prepared: boolean, params: NativeParams) {
    this.#connection = connection;
    this.#prepared = prepared;
    this.#params = params;
  }

  /** Opens a disk read-only, by the path VDDK knows it under (e.g. "[datastore1] vm/vm.vmdk"). */
  async open(diskPath: string, opts: { maxReadBytes?: number } = {}): Promise<VddkDisk> {
    checkString('diskPath', diskPath);
    if (this.#closed) throw new VddkError(VddkErrorCodes.CLOSED, 'the VDDK connection is closed', { op: 'Open', vddkText: '' });
    const maxReadBytes = opts.maxReadBytes ?? DEFAULT_MAX_READ_BYTES;
    if (!Number.isSafeInteger(maxReadBytes) || maxReadBytes < VDDK_SECTOR || maxReadBytes % VDDK_SECTOR !== 0) {
      throw new RangeError(`maxReadBytes must be a positive multiple of ${VDDK_SECTOR}, got ${maxReadBytes}`);
    }
    const handle = await call(() => addon().vddkOpen({ connection: this.#connection, path: diskPath }));
    let info;
    try {
      info = await call(() => addon().vddkGetInfo({ disk: handle }));
    } catch (err) {
      await call(() => addon().vddkClose({ disk: handle })).catch(() => undefined);
      throw err;
    }
    const disk = new VddkDisk(handle, diskPath, info, maxReadBytes, () => this.#disks.delete(disk));
    this.#disks.add(disk);
    return disk;
  }

  /** Closes every disk still open, then Disconnect and EndAccess. Idempotent. */
  disconnect(): Promise<void> {
    this.#closed ??= (async () => {
      try {
        await Promise.allSettled([...this.#disks].map((d) => d.close()));
        await call(() => addon().vddkDisconnect({ connection: this.#connection, endAccess: this.#prepared, ...this.#params }));
      } finally {
        this.#params.password?.fill(0);
      }
    })();
    return this.#closed;
  }
}

export interface VddkDiskInfo {
  capacity: number;
  capacitySectors: number;
  transportMode: string;
  numLinks: number;
}

export interface SectorExtent {
  offset: number;
  length: number;
}

export class VddkDisk {
  readonly path: string;
  readonly info: VddkDiskInfo;
  readonly maxReadBytes: number;
  #handle: NativeDisk;
  #queue: Promise<unknown> = Promise.resolve();
  #closed: Promise<void> | undefined;
  #onClose: () => void;

  constructor(
    handle: NativeDisk,
    diskPath: string,
    info: { capacitySectors: number; transportMode: string; numLinks: number },
    maxReadBytes: number,
    onClose: () => void,
  ) {
    this.#handle = handle;
    this.path = diskPath;
    this.info = {
      capacity: info.capacitySectors * VDDK_SECTOR,
      capacitySectors: info.capacitySectors,
      transportMode: info.transportMode,
      numLinks: info.numLinks,
    };
    this.maxReadBytes = maxReadBytes;
    this.#onClose = onClose;
  }

  get capacity(): number {
    return this.info.capacity;
  }

  // One call at a time per handle (VDDK handles are not re-entrant); callers may still issue reads concurrently.
  #serial<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#closed) return Promise.reject(new VddkError(VddkErrorCodes.CLOSED, `VDDK disk ${this.path} is closed`, { op: 'Read', vddkText: '' }));
    const run = this.#queue.then(fn);
    this.#queue = run.catch(() => undefined);
    return run;
  }

  /** Reads buf[0..length) from a sector-aligned offset; returns the bytes read (short only at the end of the disk). */
  read(buf: Uint8Array, offset: number, length: number = buf?.byteLength): Promise<number> {
    if (!(buf instanceof Uint8Array)) return Promise.reject(new TypeError('read: buf must be a Buffer or Uint8Array'));
    if (!Number.isSafeInteger(offset) || offset < 0 || offset % VDDK_SECTOR !== 0) {
      return Promise.reject(new RangeError(`read: offset must be a non-negative multiple of ${VDDK_SECTOR}, got ${offset}`));
    }
    if (!Number.isSafeInteger(length) || length < 0 || length > buf.byteLength || length % VDDK_SECTOR !== 0) {
      return Promise.reject(new RangeError(`read: length must be a multiple of ${VDDK_SECTOR} within the buffer, got ${length}`));
    }
    const n = Math.max(0, Math.min(length, this.capacity - offset));
    if (n === 0) return Promise.resolve(0);
    return this.#serial(async () => {
      await call(() =>
        addon().vddkRead({
          disk: this.#handle,
          buffer: buf,
          bufferOffset: 0,
          startSector: offset / VDDK_SECTOR,
          sectors: n / VDDK_SECTOR,
          maxSectorsPerCall: this.maxReadBytes / VDDK_SECTOR,
        }),
      );
      return n;
    });
  }

  /**
   * Allocated areas within [start, end) in bytes, from VixDiskLib_QueryAllocatedBlocks at chunkBytes granularity.
   * Rejects with RNODE_VDDK_NOT_SUPPORTED when the library lacks it.
   */
  async queryAllocated(start = 0, end = this.capacity, chunkBytes = 64 * 1024): Promise<SectorExtent[]> {
    const chunkSectors = chunkBytes / VDDK_SECTOR;
    if (!Number.isInteger(chunkSectors) || chunkSectors < MIN_CHUNK_SECTORS) {
      throw new RangeError(`chunkBytes must be a multiple of ${VDDK_SECTOR} of at least ${MIN_CHUNK_SECTORS * VDDK_SECTOR}`);
    }
    end = Math.min(end, this.capacity);
    if (start % chunkBytes !== 0 || start < 0 || end < start) throw new RangeError('queryAllocated: start must be chunk-aligned and before end');
    const out: SectorExtent[] = [];
    const span = MAX_CHUNKS_PER_QUERY * chunkBytes;
    for (let pos = start; pos < end; pos += span) {
      const stop = Math.min(end, pos + span);
      // Only the last range of the disk may end off the chunk grid.
      const aligned = stop === this.capacity ? stop : Math.floor(stop / chunkBytes) * chunkBytes;
      if (aligned <= pos) break;
      const blocks = await this.#serial(() =>
        call(() =>
          addon().vddkQueryAllocatedBlocks({
            disk: this.#handle,
            startSector: pos / VDDK_SECTOR,
            sectors: (aligned - pos) / VDDK_SECTOR,
            chunkSectors,
          }),
        ),
      );
      for (const b of blocks) {
        const e = { offset: b.offset * VDDK_SECTOR, length: Math.min(b.length * VDDK_SECTOR, this.capacity - b.offset * VDDK_SECTOR) };
        const last = out[out.length - 1];
        if (last && last.offset + last.length >= e.offset) last.length = Math.max(last.length, e.offset + e.length - last.offset);
        else out.push(e);
      }
    }
    return out;
  }

  /** Waits for queued reads, then VixDiskLib_Close. Idempotent. */
  close(): Promise<void> {
    this.#closed ??= this.#queue.then(() => call(() => addon().vddkClose({ disk: this.#handle }))).finally(this.#onClose);
    return this.#closed;
  }
}
