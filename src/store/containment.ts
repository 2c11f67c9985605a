// Keeps commands from writing inside a store they read: an output, work or cache path that is (or resolves, through
// symlinks, into) a filesystem store's folder is refused before anything is opened. One check for every caller.
import fs from 'node:fs';
import path from 'node:path';
import { ErrorCodes, RnodeError } from '../errors.js';

/**
 * The real path p would have: the realpath of its nearest existing ancestor, joined with the parts that do not exist
 * yet. So a symlink anywhere above p (or p itself, if it exists) is followed as the kernel would.
 */
export function resolveThroughSymlinks(p: string): string {
  const rest: string[] = [];
  let cur = path.resolve(p);
  for (;;) {
    try {
      return path.join(fs.realpathSync.native(cur), ...rest.reverse());
    } catch {
      const parent = path.dirname(cur);
      if (parent === cur) return path.join(cur, ...rest.reverse());
      rest.push(path.basename(cur));
      cur = parent;
    }
  }
}

/** True when child is parent or lies inside it (both already resolved). */
function within(parent: string, child: string): boolean {
  const rel = path.relative(parent, child);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

/**
 * Throws OUTPUT_IN_STORE when target (an output, work or cache path, named `what` in the message, e.g. "--out") is
 * the store's folder or inside it. storeLocation is a store's `location`: only a local folder (an absolute path) can
 * contain files; URLs (s3://, ws://...) are left alone.
 */
export function assertOutsideStore(storeLocation: string, target: string, what: string): void {
  if (!path.isAbsolute(storeLocation) || storeLocation.includes('://')) return;
  const store = resolveThroughSymlinks(storeLocation);
  const real = resolveThroughSymlinks(target);
  if (within(store, real)) {
    throw new RnodeError(
      ErrorCodes.OUTPUT_IN_STORE,
      `${what} ${target} is inside the store ${storeLocation}${real !== path.resolve(target) ? ` (it resolves to ${real})` : ''}; ` +
        'writing there could overwrite the points being read: choose a path outside the store folder',
      { details: { target, store: storeLocation } },
    );
  }
}

/**
 * For a work folder that holds a store of its own (demo): refuses one that lies inside an existing rnode store, found
 * by its layout (an ancestor holding disks/<id>/points or disks/<id>/chunks, or r2/<domain>/config).
 */
export function assertNotInsideAnyStore(target: string, what: string): void {
  const real = resolveThroughSymlinks(target);
  for (let d = real; ; d = path.dirname(d)) {
    const disks = path.join(d, 'disks');
    let ids: string[] = [];
    try {
      ids = fs.readdirSync(disks);
    } catch {
      /* not a store */
    }
    // Repository v2 keeps everything under r2/<domain>/, each domain with its config (docs/repository-v2.md).
    let domains: string[] = [];
    try {
      domains = fs.readdirSync(path.join(d, 'r2'));
    } catch {
      /* no v2 repository */
    }
    if (
      ids.some((id) => fs.existsSync(path.join(disks, id, 'points')) || fs.existsSync(path.join(disks, id, 'chunks'))) ||
      domains.some((dom) => fs.existsSync(path.join(d, 'r2', dom, 'config')))
    ) {
      assertOutsideStore(d, target, what);
    }
    if (path.dirname(d) === d) return;
  }
}
