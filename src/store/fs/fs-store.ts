// ObjectStore on a local or mounted directory: one file per key, '/' in keys = subdirectories.
// Atomic puts by temp file + fsync + rename; ifNoneMatch by link(2), which fails if the key exists; ifMatch by
// compare-then-rename under a per-key flock, so two processes on one host never both win.

import { createHash, randomBytes } from 'node:crypto';
import { promises as fsp, type Dirent } from 'node:fs';
import path from 'node:path';
import { ErrorCodes, RnodeError } from '../../errors.js';
import { failpoint } from '../../failpoint.js';
import { readFileInto, tryLockExclusive, writeFileExclusive, type ReadInto } from '../../native/index.js';
import { checkKey, clipRange, compareKeys, ioError, notFound, preconditionFailed, splitPrefix, storeFull } from '../common.js';
import { RESERVED_SEGMENT_PREFIX, type ByteRange, type ObjectInfo, type ObjectStore, type PutOptions, type StoreCapabilities } from '../types.js';
import { fsyncDir, isVirtualFsPath, makeDirs, unusablePath } from './dirs.js';

/**
 * Temp files start with the segment prefix assertValidKey forbids in keys, so no key can ever collide with a temp
 * file and list/get can skip them (e.g. the ones a crash left behind) by name alone. Older rnode versions marked
 * them with a backslash (`.tmp\\name`): those are skipped and cleaned up alike.
 */
const TEMP_MARK = RESERVED_SEGMENT_PREFIX;
const isTempName = (name: string) => name.startsWith(TEMP_MARK) || name.includes('\\');
/** A temp file this old was left by a crashed put (no put takes an hour); listing its folder removes it. */
const STALE_TEMP_MS = 3600_000;
/**
 * The folder of ifMatch's lock files, one per key ever put with ifMatch (the leases): its name is reserved like a temp
 * file's, so no key names it and list never walks it. The files stay (empty, a few per disk); they are never deleted,
 * because a lock file removed while held would let the next writer lock a new file beside the holder.
 */
const LOCKS_DIR = `${TEMP_MARK}locks`;
/** The compare-and-rename a lock covers takes microseconds: a lock held this long belongs to a stopped process. */
const LOCK_WAIT_MS = 30_000;

export interface FsStoreOptions {
  /** fsync file and directory on put (default true). Off only for throwaway test data. */
  fsync?: boolean;
}

/**
 * Limits (documented in docs/stores.md):
 *  - ifNoneMatch is atomic across processes (link(2)); ifMatch is checked and applied under a per-key flock
 *    (LOCKS_DIR), atomic across the processes of one host (across hosts only where the filesystem's flock is).
 *  - a key cannot be both an object and a prefix of other keys ('a' and 'a/b'): a file cannot be a
 *    directory. Such a put fails with STORE_IO.
 */
export class FsStore implements ObjectStore {
  readonly location: string;
  readonly capabilities: StoreCapabilities = { conditionalPut: true };
  private readonly root: string;
  private readonly fsync: boolean;
  /** Directories this process created or saw; bounded so a huge store does not grow it without end. */
  private readonly knownDirs = new Set<string>();

  private rememberDir(dir: string): void {
    if (this.knownDirs.size >= 4096) this.knownDirs.clear();
    this.knownDirs.add(dir);
  }
  private readonly locks = new Map<string, Promise<unknown>>();

  constructor(rootDir: string, opts: FsStoreOptions = {}) {
    this.root = path.resolve(rootDir);
    this.location = this.root;
    // /proc and /sys take no files; refusing here beats a first put failing deep in a run.
    if (isVirtualFsPath(this.root)) {
      throw new RnodeError(
        ErrorCodes.PATH_UNUSABLE,
        `store folder ${this.root} is on a kernel virtual filesystem (/proc, /sys), which holds no files; choose another folder`,
      );
    }
    this.fsync = opts.fsync ?? true;
  }

  private pathOf(key: string): string {
    checkKey(key);
    return path.join(this.root, ...key.split('/'));
  }

  async put(key: string, data: Uint8Array, opts: PutOptions = {}): Promise<ObjectInfo> {
    const file = this.pathOf(key);
    // Serialize writers of one key in this process: ifMatch's compare-then-rename must not interleave.
    return this.withLock(key, async () => {
      const { tmp, newDir, info } = await this.writeTemp(file, data);
      failpoint('fs-temp-written'); // a crash here leaves the temp file behind (test/security/paths)
      try {
        opts.signal?.throwIfAborted();
        if (opts.ifNoneMatch) {
          try {
            await fsp.link(tmp, file);
          } catch (err) {
            if (errno(err) === 'EEXIST' && (await this.statFile(file))) {
              throw preconditionFailed(this.location, key, 'the key already exists', err);
            }
            throw err;
          }
          await fsp.unlink(tmp);
        } else {
          if (opts.ifMatch !== undefined) {
            const etag = opts.ifMatch;
            // Another process may compare the same etag at the same moment: only one may rename after it.
            await this.withKeyFileLock(key, async () => {
              const cur = await this.statFile(file);
              if (!cur) throw preconditionFailed(this.location, key, 'the key does not exist');
              if (cur.etag !== etag) throw preconditionFailed(this.location, key, `etag is ${cur.etag}, not ${etag}`);
              await fsp.rename(tmp, file);
            });
          } else {
            await fsp.rename(tmp, file);
          }
        }
      } catch (err) {
        await fsp.rm(tmp, { force: true }).catch(() => {});
        throw this.mapError(err, 'put', key);
      }
      if (this.fsync) {
        // The new entry lives in its directory; directories this put created live in their parents.
        const dir = path.dirname(file);
        for (let d = dir; ; d = path.dirname(d)) {
          await syncDir(d);
          if (!newDir || d === path.dirname(newDir) || d === path.dirname(d)) break;
        }
      }
      return { ...info, key };
    });
  }

  /**
   * Writes data to a fresh temp file beside `file` (same filesystem, so rename/link are atomic).
   * newDir: the topmost directory this call created, if any.
   */
  private async writeTemp(file: string, data: Uint8Array): Promise<{ tmp: string; newDir?: string; info: Omit<ObjectInfo, 'key'> }> {
    const dir = path.dirname(file);
    const tmp = path.join(dir, `${TEMP_MARK}${path.basename(file)}.${randomBytes(6).toString('hex')}`);
    let newDir: string | undefined;
    // A concurrent delete may remove the (empty) directory between mkdir and open: try again.
    for (let attempt = 0; ; attempt++) {
      try {
        // Directories seen in this process are assumed to exist; ENOENT below sends us back to mkdir.
        if (!this.knownDirs.has(dir)) {
          newDir = (await makeDirs(dir)) ?? newDir;
          this.rememberDir(dir);
        }
        // One pool job: create, write, fdatasync, stat, close. Durable puts write their aligned body with O_DIRECT.
        const w = await writeFileExclusive(tmp, data, { sync: this.fsync, direct: this.fsync });
        // rename and link keep the inode and its mtime: this is the etag the key will have.
        const info: Omit<ObjectInfo, 'key'> = { size: w.size, etag: `${w.mtimeNs}-${w.size}-${w.ino}` };
        return { tmp, newDir, info };
      } catch (err) {
        await fsp.rm(tmp, { force: true }).catch(() => {});
        this.knownDirs.delete(dir);
        if (errno(err) === 'ENOENT' && attempt < 5) continue;
        throw this.mapError(err, 'put', path.relative(this.root, file));
      }
    }
  }

  async get(key: string, range?: ByteRange, into?: Uint8Array): Promise<Buffer> {
    const file = this.pathOf(key);
    if (into) {
      // Straight into the caller's buffer, in one job on the libuv pool: restores read their chunks into their
      // slots this way, without an allocation, a copy, or four round trips through the event loop per chunk.
      clipRange(0, range); // validates the range
      let r: ReadInto;
      try {
        r = await readFileInto(file, into, range?.offset ?? 0, range?.length);
      } catch (err) {
        throw this.mapError(err, 'get', key);
      }
      if (!r.isFile) throw notFound(this.location, key);
      if (r.fits) return Buffer.from(into.buffer, into.byteOffset, r.bytesRead);
    }
    let fh: fsp.FileHandle;
    try {
      fh = await fsp.open(file, 'r');
    } catch (err) {
      throw this.mapError(err, 'get', key);
    }
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw notFound(this.location, key);
      const { start, end } = clipRange(st.size, range);
      const buf = Buffer.allocUnsafe(end - start);
      let done = 0;
      while (done < buf.length) {
        const { bytesRead } = await fh.read(buf, done, buf.length - done, start + done);
        if (bytesRead === 0) break; // cannot shrink (puts replace the inode), but never loop forever
        done += bytesRead;
      }
      return done === buf.length ? buf : buf.subarray(0, done);
    } catch (err) {
      throw this.mapError(err, 'get', key);
    } finally {
      await fh.close();
    }
  }

  async head(key: string): Promise<ObjectInfo> {
    const info = await this.statFile(this.pathOf(key)).catch((err) => {
      throw this.mapError(err, 'head', key);
    });
    if (!info) throw notFound(this.location, key);
    return { ...info, key };
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    const { dir, rest } = splitPrefix(prefix);
    yield* this.walk(dir, rest);
  }

  /** Depth-first walk in key byte order: a directory 'a' sorts as 'a/' among its siblings. */
  private async *walk(dirKey: string, namePrefix: string): AsyncGenerator<ObjectInfo> {
    const dirPath = dirKey === '' ? this.root : path.join(this.root, ...dirKey.split('/'));
    let entries: Dirent[];
    try {
      entries = await fsp.readdir(dirPath, { withFileTypes: true });
    } catch (err) {
      if (errno(err) === 'ENOENT' || errno(err) === 'ENOTDIR') return;
      throw this.mapError(err, 'list', dirKey);
    }
    for (const e of entries) if (e.isFile() && isTempName(e.name)) await removeIfStale(path.join(dirPath, e.name));
    const sorted = entries
      .filter((e) => e.name.startsWith(namePrefix) && !isTempName(e.name) && (e.isFile() || e.isDirectory()))
      .map((e) => ({ e, sortName: e.isDirectory() ? `${e.name}/` : e.name }))
      .sort((a, b) => compareKeys(a.sortName, b.sortName));
    for (const { e } of sorted) {
      const key = dirKey === '' ? e.name : `${dirKey}/${e.name}`;
      if (e.isDirectory()) {
        yield* this.walk(key, '');
      } else {
        const info = await this.statFile(path.join(dirPath, e.name)).catch((err) => {
          throw this.mapError(err, 'list', key);
        });
        if (info) yield { ...info, key }; // gone meanwhile: a concurrent delete
      }
    }
  }

  async delete(key: string): Promise<void> {
    const file = this.pathOf(key);
    await this.withLock(key, async () => {
      try {
        await fsp.unlink(file);
      } catch (err) {
        const code = errno(err);
        if (code === 'ENOENT' || code === 'ENOTDIR') return;
        if (code === 'EISDIR' || code === 'EPERM') {
          // a prefix, not an object: nothing to delete
          const st = await fsp.stat(file).catch(() => undefined);
          if (st?.isDirectory()) return;
        }
        throw this.mapError(err, 'delete', key);
      }
      await this.removeEmptyParents(path.dirname(file));
    });
  }

  /** Best effort: a racing put recreates what it needs (see writeTemp). */
  private async removeEmptyParents(dir: string): Promise<void> {
    while (dir.length > this.root.length && dir.startsWith(this.root + path.sep)) {
      try {
        this.knownDirs.delete(dir);
        await fsp.rmdir(dir);
      } catch {
        return; // not empty (ENOTEMPTY/EEXIST) or already gone
      }
      dir = path.dirname(dir);
    }
  }

  async close(): Promise<void> {}

  private async statFile(file: string): Promise<Omit<ObjectInfo, 'key'> | undefined> {
    try {
      const st = await fsp.stat(file, { bigint: true });
      if (!st.isFile()) return undefined;
      // Every put renames a fresh inode into place, so ino alone changes on each put; mtime and size
      // guard against inode reuse after a delete.
      return { size: Number(st.size), etag: `${st.mtimeNs}-${st.size}-${st.ino}` };
    } catch (err) {
      const code = errno(err);
      if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
      throw err;
    }
  }

  private mapError(err: unknown, op: string, key: string): RnodeError {
    if (err instanceof RnodeError) return err;
    if (op === 'put') {
      const code = errno(err);
      // A full store is the world's state, not a wrong command line: freeing space makes the same command work.
      if (code === 'ENOSPC' || code === 'EDQUOT') return storeFull(this.location, key, code, err);
      // The store folder itself cannot take files (read-only, a file or nothing where it should be): a coded line
      // about the folder, not an I/O error about one key.
      const at = (err as { path?: string }).path;
      const outside = at !== undefined && !path.resolve(at).startsWith(this.root + path.sep);
      if (code === 'EROFS' || ((code === 'ENOENT' || code === 'ENOTDIR') && outside)) {
        return unusablePath(`store folder ${this.location}`, err)!;
      }
    }
    switch (errno(err)) {
      case 'ENOENT':
      case 'ENOTDIR':
      case 'EISDIR':
        if (op === 'get' || op === 'head') return notFound(this.location, key, err);
        break;
      case 'EACCES':
      case 'EPERM':
        return new RnodeError(ErrorCodes.STORE_AUTH, `${op} ${key} in ${this.location} was denied; check the directory's owner and permissions`, {
          cause: err,
          details: { key, location: this.location },
        });
      case 'EAGAIN':
      case 'EBUSY':
      case 'EINTR':
      case 'EMFILE':
      case 'ENFILE':
        return ioError(this.location, op, key, err, true);
    }
    if (op === 'put' && (errno(err) === 'EISDIR' || errno(err) === 'ENOTDIR' || errno(err) === 'EEXIST')) {
      return ioError(this.location, op, key, new Error('a key cannot be both an object and a prefix of other keys in a filesystem store'), false);
    }
    return ioError(this.location, op, key, err);
  }

  /**
   * Runs fn holding the flock of key's lock file, which other processes' ifMatch puts of the key take too. flock has
   * no timed wait, so this polls; the kernel drops the lock with the file's last fd, also when its process dies.
   */
  private async withKeyFileLock<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const dir = path.join(this.root, LOCKS_DIR);
    const file = path.join(dir, createHash('sha256').update(key).digest('hex').slice(0, 32));
    let fh: fsp.FileHandle;
    try {
      fh = await fsp.open(file, 'a');
    } catch (err) {
      if (errno(err) !== 'ENOENT') throw err;
      await makeDirs(dir);
      fh = await fsp.open(file, 'a');
    }
    try {
      const deadline = Date.now() + LOCK_WAIT_MS;
      for (let waitMs = 1; !lockOrNoLocks(fh.fd); waitMs = Math.min(2 * waitMs, 50)) {
        if (Date.now() >= deadline) {
          const why = new Error(`another process held its lock file ${file} for ${LOCK_WAIT_MS / 1000} s; try again, or stop the process holding it`);
          throw ioError(this.location, 'put', key, why, true);
        }
        await new Promise((r) => setTimeout(r, waitMs));
      }
      return await fn();
    } finally {
      await fh.close();
    }
  }

  private async withLock<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(key) ?? Promise.resolve();
    const run = prev.then(fn, fn);
    const tail = run.catch(() => {});
    this.locks.set(key, tail);
    try {
      return await run;
    } finally {
      if (this.locks.get(key) === tail) this.locks.delete(key);
    }
  }
}

/**
 * Takes the flock (true), or finds it held (false). A filesystem that has no locks (some FUSE and network mounts) counts
 * as taken: ifMatch there is atomic within this process only, as it was before the lock files.
 */
function lockOrNoLocks(fd: number): boolean {
  try {
    return tryLockExclusive(fd);
  } catch (err) {
    if (['ENOLCK', 'EOPNOTSUPP', 'ENOTSUP', 'ENOSYS', 'EINVAL'].includes(errno(err) ?? '')) return true;
    throw err;
  }
}

/** Best effort: a temp file older than STALE_TEMP_MS is a crashed put's leftover. */
async function removeIfStale(file: string): Promise<void> {
  const st = await fsp.stat(file).catch(() => undefined);
  if (st && Date.now() - st.mtimeMs > STALE_TEMP_MS) await fsp.rm(file, { force: true }).catch(() => undefined);
}

function errno(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

// Group commit for directory fsyncs: many puts into one directory (a point's chunks) share one fsync.
// A caller is covered only by an fsync that starts after its rename, so callers arriving while one runs
// wait for the next one, which all of them share.
const dirSyncs = new Map<string, { running: Promise<void>; next?: Promise<void> }>();

function syncDir(dir: string): Promise<void> {
  const state = dirSyncs.get(dir);
  if (!state) {
    const running = fsyncDir(dir).finally(() => advance(dir));
    dirSyncs.set(dir, { running });
    return running;
  }
  state.next ??= new Promise<void>((resolve, reject) => {
    state.running
      .then(
        () => undefined,
        () => undefined,
      )
      .then(() => fsyncDir(dir))
      .then(resolve, reject);
  });
  return state.next;
}

function advance(dir: string): void {
  const state = dirSyncs.get(dir);
  if (!state) return;
  if (state.next) {
    const running = state.next.finally(() => advance(dir));
    running.catch(() => undefined);
    dirSyncs.set(dir, { running });
  } else {
    dirSyncs.delete(dir);
  }
}
