// The flags every command that takes a store shares (--token-file, --ca, --pin-sha256 for ws:// and wss://
// stores), and the one function those commands open their store with, so no command can miss one.
import fs from 'node:fs';
import { ErrorCodes, RnodeError } from '../errors.js';
import { TransportErrorCodes } from '../transport/errors.js';
import { localStoreFolder, openStore, type RemoteAccess, type WrappedStore } from '../store/index.js';
import { unusablePath } from '../store/fs/dirs.js';
import { str, type Options } from './args.js';
import type { Values } from './command.js';

/** Flags of every command that takes a store, for ws:// and wss:// locations. */
export const REMOTE_OPTIONS: Options = {
  'token-file': { type: 'string' },
  ca: { type: 'string' },
  'pin-sha256': { type: 'string' },
};

export const REMOTE_USAGE = '[--token-file <f>] [--ca <f> | --pin-sha256 <fingerprint>]';

export function isRemoteLocation(location: string): boolean {
  return /^wss?:\/\//i.test(location);
}

/** The typed ws settings from the flags: file paths and a fingerprint, never the token itself. */
function remoteAccess(location: string, v: Values): RemoteAccess | undefined {
  const access: RemoteAccess = {
    ...(str(v, 'token-file') !== undefined ? { tokenFile: str(v, 'token-file') } : {}),
    ...(str(v, 'ca') !== undefined ? { caFile: str(v, 'ca') } : {}),
    ...(str(v, 'pin-sha256') !== undefined ? { pinSha256: str(v, 'pin-sha256') } : {}),
  };
  if (Object.keys(access).length === 0) return undefined;
  if (!isRemoteLocation(location)) {
    throw new RnodeError(ErrorCodes.USAGE, '--token-file, --ca and --pin-sha256 apply to ws:// and wss:// stores only; drop them for this store');
  }
  if (access.caFile !== undefined && access.pinSha256 !== undefined)
    throw new RnodeError(ErrorCodes.USAGE, 'pass either --ca or --pin-sha256, not both');
  return access;
}

export interface StoreFlagOptions {
  bandwidth?: number;
  /** The command creates the store (replicate): a missing folder is fine. */
  creates?: boolean;
  /** The flag that named the store, for messages (default --store; replicate's is --target). */
  flag?: string;
  /** The job's stop signal: it ends the puts' waits for bandwidth (a stopped run does not send its queued packs). */
  signal?: AbortSignal;
}

/**
 * Opens the store a command names, with its ws flags and (replicate) bandwidth limit. A local store folder must exist
 * unless creates is set (replicate): a typo in --store of a check or a points listing found an empty store there and
 * reported "ok" or "no points".
 */
export async function openStoreFromFlags(location: string, v: Values, opts: StoreFlagOptions = {}): Promise<WrappedStore> {
  const remote = remoteAccess(location, v);
  assertStoreFolder(location, opts.creates === true, opts.flag);
  // ws:// and wss:// stores come with the peer transport, which registers them; it is loaded only for such a store.
  if (isRemoteLocation(location)) await import('../transport/index.js');
  return openStore(location, {
    ...(remote ? { remote } : {}),
    wrap: { ...(opts.bandwidth ? { bandwidth: opts.bandwidth } : {}), ...(opts.signal ? { signal: opts.signal } : {}) },
  });
}

/** openStoreFromFlags, then fn, then close. */
export async function withStore<T>(
  location: string,
  fn: (store: WrappedStore) => Promise<T>,
  v: Values = {},
  opts: StoreFlagOptions = {},
): Promise<T> {
  const store = await openStoreFromFlags(location, v, opts);
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

/**
 * A prune of a store behind a receiving node sweeps nothing: the sweep deletes packs and merges indexes, which a node
 * does not take over the peer link (each try left one more merged index behind before its first delete was refused).
 * Retention still lists the points it would keep, and is refused before it writes anything when it would delete one
 * (pruneStore's retentionRefused); maintenance alone is refused before it starts.
 */
export function remotePruneSweeps(location: string, retention: boolean): boolean {
  if (!isRemoteLocation(location)) return true;
  if (retention) return false;
  throw maintainedWhereStored(location, 'prune');
}

/** The refusal of maintenance that deletes what it replaces (a sweep, a repair) through a receiving node. */
export function maintainedWhereStored(location: string, command: string): RnodeError {
  return new RnodeError(
    TransportErrorCodes.REJECTED,
    `${location} is a receiving node: its points, packs and indexes are maintained where they are stored; run "rnode ${command}" on the receiving node, with its --store folder`,
  );
}

/**
 * A local store folder must be a folder, and exist unless the command creates it (replicate, serve). flag: the one
 * that named it, for messages.
 */
export function assertStoreFolder(location: string, creates: boolean, flag = '--store'): void {
  // A folder named by a file:// URL is checked as its path is: a mistyped one is no store, not an empty one.
  const folder = localStoreFolder(location);
  if (folder === undefined) return;
  let st: fs.Stats;
  try {
    st = fs.statSync(folder);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (creates || (code !== 'ENOENT' && code !== 'ENOTDIR')) return; // the store's own open says what else is wrong
    throw new RnodeError(ErrorCodes.STORE_NOT_FOUND, `store folder ${location} does not exist; check ${flag} (replicate creates a store)`);
  }
  if (!st.isDirectory()) {
    const what = st.isFile() ? 'a file' : st.isCharacterDevice() || st.isBlockDevice() ? 'a device' : 'a FIFO or socket';
    throw new RnodeError(ErrorCodes.PATH_UNUSABLE, `store folder ${location} is ${what}, not a folder; check ${flag}`);
  }
}

/**
 * A local store folder that exists must take files: on a read-only filesystem (or without write permission) a
 * receiving node came up "storing into" it and then failed every sender's put. A missing one is made by its store.
 */
export function assertWritableFolder(location: string, flag = '--store'): void {
  const folder = localStoreFolder(location);
  if (folder === undefined || !fs.existsSync(folder)) return;
  try {
    fs.accessSync(folder, fs.constants.W_OK);
  } catch (err) {
    throw unusablePath(`store folder ${location}`, err, `check ${flag}, or make the folder writable`) ?? err;
  }
}

/** Checkpoints of points written to a remote node: frequent, so a restarted sender re-sends little. */
const REMOTE_CHECKPOINT = { checkpointRecords: 64, checkpointMillis: 2000 } as const;

/** Chunks in flight for a remote target (unless --concurrency): each put waits for a round trip and the node. */
const REMOTE_CONCURRENCY = 16;

/** Pack size for a ws/wss target: half the local default, so a node holds fewer bytes per pack in flight. */
const REMOTE_PACK_SIZE = 8 * 1024 * 1024;

/** replicate() options for a ws(s):// target: frequent checkpoints, a deeper pipeline for chunks up to 2 MiB. */
export function remoteReplicateOptions(
  concurrency: number | undefined,
  chunkSize: number | undefined,
): { checkpointRecords: number; checkpointMillis: number; concurrency?: number; packSize: number } {
  const deep = chunkSize === undefined || chunkSize <= 2 * 1024 * 1024;
  const c = concurrency ?? (deep ? REMOTE_CONCURRENCY : undefined);
  return { ...REMOTE_CHECKPOINT, ...(c !== undefined ? { concurrency: c } : {}), packSize: REMOTE_PACK_SIZE };
}
