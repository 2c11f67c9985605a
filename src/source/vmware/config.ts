// What a VMware source needs to know, from `vddk://host/vm-moref?disk=..` or a --source-config JSON file.
// Passwords are only ever read from a file: never from a URL, a flag or the environment (process listings).
import path from 'node:path';
import { ErrorCodes, RnodeError } from '../../errors.js';
import { jsonSyntaxProblem } from '../../json-text.js';
import { readRegularFile } from '../../regular-file.js';
import { parseTransports } from './vddk.js';
import { normalizeThumbprint } from './vsphere/client.js';

export interface VmwareSourceConfig {
  /** vCenter or ESXi host name or address. */
  host: string;
  port?: number;
  user: string;
  /** File holding the password (one line; a trailing newline is ignored). */
  passwordFile: string;
  /** SHA-1 thumbprint of the host certificate ("AA:BB:.."). Either this or caFile. */
  thumbprint?: string;
  caFile?: string;
  /** VM managed object id, e.g. "vm-42". */
  vm: string;
  /** Device keys of the disks to replicate (default: every virtual disk of the VM). */
  disks?: number[];
  /** VDDK transport modes in order of preference (default ["nbdssl", "nbd"]). */
  transports?: string[];
  /** VDDK install directory (holds lib64/libvixDiskLib.so). */
  libdir: string;
  /** A VixDiskLib config file passed to InitEx. */
  vddkConfig?: string;
  /** ESXi NFC port (default 902). */
  nfcHostPort?: number;
  /** Quiesce the guest file systems when taking the snapshot (needs VMware Tools). */
  quiesce?: boolean;
  /** Turn CBT on with ReconfigVM when it is off (default true). */
  enableCbt?: boolean;
  /** Largest VixDiskLib_Read in bytes (default 4 MiB). */
  maxReadBytes?: number;
  /** When quiesce is asked and impossible: crash-consistent snapshot with a warning (fallback, default) or fail. */
  quiesceFallback?: 'fallback' | 'fail';
  /** Independent and physical RDM disks: skip them with a reason (default) or fail the run. */
  unsupportedDisks?: 'skip' | 'fail';
}

const bad = (msg: string) => new RnodeError(ErrorCodes.BAD_SOURCE, msg);
const MOREF = /^[A-Za-z][\w-]*-\d+$|^[A-Za-z][\w.-]{0,79}$/;

/** Checks a config assembled from a URL or file; paths are resolved against `baseDir`. */
export function validateVmwareConfig(raw: unknown, baseDir = process.cwd(), where = 'the VMware source'): VmwareSourceConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw bad(`${where} must be a JSON object`);
  const c = raw as Record<string, unknown>;
  if ('password' in c) throw bad(`${where} must not contain a password; put it in a file readable only by rnode and set "passwordFile"`);
  const known = new Set([
    'host',
    'port',
    'user',
    'passwordFile',
    'thumbprint',
    'caFile',
    'vm',
    'disks',
    'transports',
    'libdir',
    'vddkConfig',
    'nfcHostPort',
    'quiesce',
    'enableCbt',
    'maxReadBytes',
    'quiesceFallback',
    'unsupportedDisks',
  ]);
  for (const k of Object.keys(c)) if (!known.has(k)) throw bad(`${where}: unknown setting "${k}"`);
  const str = (k: string, required: boolean): string | undefined => {
    const v = c[k];
    if (v === undefined && !required) return undefined;
    if (typeof v !== 'string' || v.trim() === '') throw bad(`${where} needs "${k}" (a non-empty string)`);
    return v;
  };
  const int = (k: string, min: number, max: number): number | undefined => {
    const v = c[k];
    if (v === undefined) return undefined;
    if (!Number.isInteger(v) || (v as number) < min || (v as number) > max) throw bad(`${where}: "${k}" must be an integer in [${min}, ${max}]`);
    return v as number;
  };
  const bool = (k: string): boolean | undefined => {
    const v = c[k];
    if (v === undefined) return undefined;
    if (typeof v !== 'boolean') throw bad(`${where}: "${k}" must be true or false`);
    return v;
  };
  const file = (k: string, required: boolean) => {
    const v = str(k, required);
    return v === undefined ? undefined : path.resolve(baseDir, v);
  };
  const vm = str('vm', true)!;
  if (!MOREF.test(vm)) throw bad(`${where}: "${vm}" is not a VM MoRef (e.g. vm-42)`);
  const thumbprint = str('thumbprint', false);
  const caFile = file('caFile', false);
  if (!thumbprint && !caFile) throw bad(`${where} needs "thumbprint" (SHA-1 of the vCenter/ESXi certificate) or "caFile"`);
  let disks: number[] | undefined;
  if (c.disks !== undefined) {
    if (!Array.isArray(c.disks) || c.disks.length === 0 || !c.disks.every((d) => Number.isInteger(d) && d >= 0)) {
      throw bad(`${where}: "disks" must be a non-empty list of device keys (e.g. [2000, 2001])`);
    }
    disks = [...new Set(c.disks as number[])];
  }
  let transports: string[] | undefined;
  if (c.transports !== undefined) {
    const t = c.transports;
    if (!(typeof t === 'string' || (Array.isArray(t) && t.every((x) => typeof x === 'string'))))
      throw bad(`${where}: "transports" must be a list like ["nbdssl", "nbd"]`);
    try {
      transports = parseTransports(t as string | string[])?.split(':');
    } catch (err) {
      throw bad(`${where}: ${(err as Error).message}`);
    }
  }
  const oneOf = <T extends string>(k: string, allowed: readonly T[]): T | undefined => {
    const v = c[k];
    if (v === undefined) return undefined;
    if (!allowed.includes(v as T)) throw bad(`${where}: "${k}" must be ${allowed.map((a) => `"${a}"`).join(' or ')}`);
    return v as T;
  };
  const quiesceFallback = oneOf('quiesceFallback', ['fallback', 'fail'] as const);
  const unsupportedDisks = oneOf('unsupportedDisks', ['skip', 'fail'] as const);
  const maxReadBytes = int('maxReadBytes', 512, 64 * 1024 * 1024);
  if (maxReadBytes !== undefined && maxReadBytes % 512 !== 0) throw bad(`${where}: "maxReadBytes" must be a multiple of 512`);
  return {
    host: str('host', true)!,
    ...(c.port !== undefined ? { port: int('port', 1, 65535) } : {}),
    user: str('user', true)!,
    passwordFile: file('passwordFile', true)!,
    ...(thumbprint ? { thumbprint: normalizeThumbprint(thumbprint) } : {}),
    ...(caFile ? { caFile } : {}),
    vm,
    ...(disks ? { disks } : {}),
    ...(transports ? { transports } : {}),
    libdir: file('libdir', true)!,
    ...(c.vddkConfig !== undefined ? { vddkConfig: file('vddkConfig', true) } : {}),
    ...(c.nfcHostPort !== undefined ? { nfcHostPort: int('nfcHostPort', 1, 65535) } : {}),
    ...(c.quiesce !== undefined ? { quiesce: bool('quiesce') } : {}),
    ...(c.enableCbt !== undefined ? { enableCbt: bool('enableCbt') } : {}),
    ...(maxReadBytes !== undefined ? { maxReadBytes } : {}),
    ...(quiesceFallback ? { quiesceFallback } : {}),
    ...(unsupportedDisks ? { unsupportedDisks } : {}),
  };
}

/** Reads a --source-config file. Relative paths inside it are relative to the file. */
export function loadVmwareConfig(file: string): VmwareSourceConfig {
  let text: string;
  try {
    text = readRegularFile(file).data.toString('utf8');
  } catch (err) {
    throw new RnodeError(
      ErrorCodes.SOURCE_NOT_FOUND,
      `cannot read the source config ${file} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); check --source-config`,
      { cause: err },
    );
  }
  let json: unknown;
  try {
    // Windows editors save UTF-8 with a byte order mark, which JSON.parse refuses.
    json = JSON.parse(text.replace(/^\uFEFF/, ''));
  } catch (err) {
    throw bad(`the source config ${file} is ${jsonSyntaxProblem(err, text)}; check --source-config`);
  }
  return validateVmwareConfig(json, path.dirname(path.resolve(file)), `the source config ${file}`);
}

/**
 * `vddk://[user@]host[:port]/<vm-moref>?disk=2000&disk=2001&transports=nbdssl:nbd&thumbprint=..&passwordFile=..&libdir=..`
 * Settings missing from the URL come from `defaults` (e.g. a --source-config file or the caller's options).
 */
export function parseVddkUrl(location: string, defaults: Partial<VmwareSourceConfig> = {}): VmwareSourceConfig {
  let u: URL;
  try {
    u = new URL(location);
  } catch {
    throw bad(`"${redactUrl(location)}" is not a valid vddk:// URL; use vddk://<host>/<vm-moref>?disk=<key>`);
  }
  if (u.protocol !== 'vddk:') throw bad(`"${redactUrl(location)}" is not a vddk:// URL`);
  if (u.password) throw bad('the vddk:// URL must not contain a password (it would show in process listings); use passwordFile');
  const vm = decodeURIComponent(u.pathname.replace(/^\/+|\/+$/g, ''));
  if (!vm || vm.includes('/')) throw bad(`the vddk:// URL needs the VM MoRef as its path: vddk://${u.host}/vm-42`);
  const q = u.searchParams;
  const cfg: Record<string, unknown> = { ...defaults, host: decodeURIComponent(u.hostname.replace(/^\[|\]$/g, '')), vm };
  if (u.port) cfg.port = Number(u.port);
  if (u.username) cfg.user = decodeURIComponent(u.username);
  const disks = q
    .getAll('disk')
    .flatMap((d) => d.split(','))
    .filter(Boolean);
  if (disks.length) {
    cfg.disks = disks.map((d) => {
      if (!/^\d+$/.test(d)) throw bad(`disk=${d} is not a device key (e.g. disk=2000)`);
      return Number(d);
    });
  }
  for (const k of [
    'transports',
    'thumbprint',
    'passwordFile',
    'libdir',
    'caFile',
    'user',
    'vddkConfig',
    'quiesceFallback',
    'unsupportedDisks',
  ] as const) {
    const v = q.get(k);
    if (v !== null) cfg[k] = v;
  }
  for (const k of ['quiesce', 'enableCbt'] as const) {
    const v = q.get(k);
    if (v !== null) {
      if (v !== 'true' && v !== 'false') throw bad(`${k}=${v} must be true or false`);
      cfg[k] = v === 'true';
    }
  }
  for (const k of ['nfcHostPort', 'maxReadBytes'] as const) {
    const v = q.get(k);
    if (v !== null) cfg[k] = Number(v);
  }
  for (const k of q.keys()) {
    if (
      ![
        'disk',
        'transports',
        'thumbprint',
        'passwordFile',
        'libdir',
        'caFile',
        'user',
        'vddkConfig',
        'quiesce',
        'enableCbt',
        'nfcHostPort',
        'maxReadBytes',
        'quiesceFallback',
        'unsupportedDisks',
      ].includes(k)
    ) {
      throw bad(`unknown vddk:// URL parameter "${k}"`);
    }
  }
  if (typeof cfg.transports === 'string') cfg.transports = cfg.transports.split(/[:,]/);
  return validateVmwareConfig(cfg, process.cwd(), `the source ${redactUrl(location)}`);
}

/** A URL as it may appear in messages: without any password. */
export function redactUrl(location: string): string {
  return location.replace(/^([a-z][a-z0-9+.-]*:\/\/[^/:@]*):[^@/]*@/i, '$1:***@');
}
