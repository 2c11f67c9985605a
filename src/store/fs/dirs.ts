// Creating folders without Node's recursive mkdir, which spins forever where mkdir(2) answers ENOENT under an
// existing parent (procfs, sysfs: `mkdir -p /proc/nope/x` retries the child after the parent "exists", endlessly).
// And the one place that turns a folder that cannot be used into a coded one-line error (RNODE_PATH_UNUSABLE).
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { ErrorCodes, RnodeError } from '../../errors.js';

/** Deepest path makeDirs creates; deeper is not a real store or work folder. */
const MAX_DEPTH = 256;

/**
 * mkdir -p that always ends: each missing ancestor is created once, top-down; a folder its parent exists for but that
 * still cannot be created fails with that errno. Returns the topmost folder it created (like mkdir recursive), if any.
 * mode: of the folders it creates (umask applies), as mkdir's.
 */
export async function makeDirs(dir: string, mode?: number): Promise<string | undefined> {
  const missing: string[] = [];
  for (let d = path.resolve(dir); ; d = path.dirname(d)) {
    // ENOTDIR: a file somewhere above; going up finds it and names it.
    const st = await fsp.stat(d).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' || err.code === 'ENOTDIR') return undefined;
      throw err;
    });
    if (st) {
      if (!st.isDirectory()) throw Object.assign(new Error(`${d} is not a folder`), { code: 'ENOTDIR', path: d });
      break;
    }
    missing.push(d);
    if (d === path.dirname(d) || missing.length > MAX_DEPTH)
      throw Object.assign(new Error(`${dir} has no existing ancestor`), { code: 'ENOENT', path: d });
  }
  let first: string | undefined;
  for (const d of missing.reverse()) {
    try {
      await fsp.mkdir(d, mode);
      first ??= d;
    } catch (err) {
      // Made meanwhile by a concurrent put: fine, if it is a folder.
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || !(await fsp.stat(d)).isDirectory()) throw err;
    }
  }
  return first;
}

const WHY: Record<string, string> = {
  ENOENT: 'cannot be created there (a read-only or virtual filesystem such as /proc?)',
  ENOTDIR: 'is, or lies under, a file where a folder is needed',
  EEXIST: 'is, or lies under, a file where a folder is needed',
  EACCES: 'is not writable (permission denied)',
  EPERM: 'is not writable (operation not permitted)',
  EROFS: 'is on a read-only filesystem',
  ENOSPC: 'has no space left',
  EDQUOT: 'is over its disk quota',
};

/**
 * A coded one-line error for a folder (`what`, e.g. "store folder /x") that cannot be used; undefined for other errors.
 * `fix`: what to do, for a folder that came from somewhere other than a flag (an environment variable).
 */
export function unusablePath(what: string, err: unknown, fix = 'choose another folder'): RnodeError | undefined {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  const why = code ? WHY[code] : undefined;
  if (!why) return undefined;
  return new RnodeError(
    ErrorCodes.PATH_UNUSABLE,
    `${what} ${why} (${code}); ${fix}${code === 'ENOSPC' || code === 'EDQUOT' ? ' or free space' : ''}`,
    { cause: err, details: { errno: code } },
  );
}

/** True for paths under the kernel's virtual filesystems, where nothing an rnode command writes can live. */
export function isVirtualFsPath(p: string): boolean {
  return /^\/(proc|sys)(\/|$)/.test(path.resolve(p));
}

/** fsync of a folder: makes the names created, renamed or removed in it durable. */
export async function fsyncDir(dir: string): Promise<void> {
  const fh = await fsp.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
