// The local output: a new file (written as a hidden partial file, renamed when complete) or a block device
// (written in place). Positioned writes with O_DIRECT where the filesystem takes it, so the device writes while
// chunks decode instead of one long flush at the end; zeros stay holes in a file and are written on a device.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { ErrorCodes, RnodeError } from '../errors.js';
import { fsyncDir, isVirtualFsPath, unusablePath } from '../store/fs/dirs.js';
import { addressAligned, sharedAligned, tryLockExclusive, writeNonZero } from '../native/index.js';
import type { OutputSink } from './sink.js';

/** Holes are kept at this granularity, and O_DIRECT writes are aligned to it. */
export const SPARSE_BLOCK = 4096;
/** Without O_DIRECT, dirty pages are flushed every this many bytes, so the final sync is short and memory bounded. */
const FLUSH_EVERY = 64 * 1024 * 1024;
const ZEROS_BYTES = 1024 * 1024;

/** Which flag names the path, for the messages, and what to give instead of a path that cannot be one. */
export interface OutputFlag {
  flag: string;
  instead: string;
}

const OUT: OutputFlag = { flag: '--out', instead: 'give a file path or a block device' };

/** What a local --out names once symlinks are followed: the path written, and what is there now. */
export interface FileOutputTarget {
  /** The path written: --out itself, or the file or device a symlink at --out resolves to. */
  target: string;
  /** Undefined when nothing is there yet (a new file). */
  stats?: fs.Stats;
}

/**
 * Resolves --out and refuses what cannot take a disk image, before anything is created: stdout, a directory, a
 * character device, FIFO or socket (replacing /dev/null with a file, or blocking on a FIFO, is never what was meant),
 * a dangling symlink, a folder that does not exist. A symlink is followed: replacing the link would leave the image
 * it points at (a VM's disk) with its old bytes. A writable export's --overlay is checked the same way (as: its flag).
 */
export async function resolveFileOutput(out: string, as: OutputFlag = OUT): Promise<FileOutputTarget> {
  const { flag } = as;
  if (out === '-') throw new RnodeError(ErrorCodes.USAGE, `${flag} - (stdout) is not supported; ${as.instead}`);
  // The process's own streams by name: a pipe's /dev/stdout was "a symlink to /proc/self/fd/1, a path that does not exist".
  const stream = /^\/(?:dev\/(std(?:in|out|err))|dev\/fd\/([0-2])|proc\/self\/fd\/([0-2]))$/.exec(out);
  if (stream) {
    const name = stream[1] ?? ['stdin', 'stdout', 'stderr'][Number(stream[2] ?? stream[3])];
    throw new RnodeError(ErrorCodes.USAGE, `${flag} ${out} (${name}) is not supported; ${as.instead}`);
  }
  if (isVirtualFsPath(out)) {
    throw new RnodeError(
      ErrorCodes.PATH_UNUSABLE,
      `${flag} ${out} is on a kernel virtual filesystem (/proc, /sys), which holds no disk images; give another path`,
    );
  }
  let link: fs.Stats;
  try {
    link = await fsp.lstat(out);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT' && (err as NodeJS.ErrnoException).code !== 'ENOTDIR') throw outputError(err, out);
    await requireFolder(out, flag);
    return { target: out };
  }
  if (!link.isSymbolicLink()) {
    refuseKind(out, link, '', as);
    return { target: out, stats: link };
  }
  let target: string;
  try {
    target = await fsp.realpath(out);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'ELOOP') {
      const to = await fsp.readlink(out).catch(() => '?');
      const why = code === 'ELOOP' ? 'a loop of links' : 'a path that does not exist';
      throw new RnodeError(ErrorCodes.USAGE, `${flag} ${out} is a symlink to ${to}, ${why}; give the image's real path, or fix the link`);
    }
    throw outputError(err, out);
  }
  let stats: fs.Stats;
  try {
    stats = await fsp.stat(target);
  } catch (err) {
    throw outputError(err, out);
  }
  refuseKind(out, stats, ` (a symlink to ${target})`, as);
  return { target, stats };
}

/** Throws USAGE for what --out must not replace or write: only a regular file or a block device can. */
function refuseKind(out: string, st: fs.Stats, via: string, as: OutputFlag): void {
  const kind = st.isDirectory()
    ? 'a directory'
    : st.isCharacterDevice()
      ? 'a character device'
      : st.isFIFO()
        ? 'a FIFO (named pipe)'
        : st.isSocket()
          ? 'a socket'
          : undefined;
  if (kind) throw new RnodeError(ErrorCodes.USAGE, `${as.flag} ${out}${via} is ${kind}; ${as.instead}`);
}

/** A new file's folder must exist: the partial file is made there. */
async function requireFolder(out: string, flag: string): Promise<void> {
  const dir = path.dirname(out);
  let st: fs.Stats;
  try {
    st = await fsp.stat(dir);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT')
      throw new RnodeError(ErrorCodes.USAGE, `${flag} ${out}: the folder ${dir} does not exist; create it or give a path in an existing folder`);
    if (code === 'ENOTDIR')
      throw new RnodeError(ErrorCodes.USAGE, `${flag} ${out}: a part of ${dir} is not a folder; give a path in an existing folder`);
    throw outputError(err, out);
  }
  if (!st.isDirectory()) throw new RnodeError(ErrorCodes.USAGE, `${flag} ${out}: ${dir} is not a folder; give a path in an existing folder`);
}

/**
 * A new image file's permissions: an encrypted disk's plaintext is readable by its owner only (0600), as a key file
 * must be; others 0644, as before. A file replaced keeps its own permissions (a restore must not widen them).
 */
export interface FileOutputOptions {
  ownerOnly?: boolean;
}

export async function openFileOutput(out: string, diskSize: number, opts: FileOutputOptions = {}): Promise<OutputSink> {
  const { target, stats } = await resolveFileOutput(out);
  try {
    if (stats?.isBlockDevice()) {
      const shown = target === out ? out : `${out} (a symlink to ${target})`;
      const opened = await openDevice(shown, target);
      try {
        // Checked before any byte is written: a device too small was overwritten whole and then failed with ENOSPC.
        await refuseSmallDevice(shown, target, diskSize);
      } catch (err) {
        await opened.fh.close();
        throw err;
      }
      // A device cannot be renamed into place, and its old bytes are not zeros: every byte is written.
      // O_DIRECT needs whole blocks: a disk size that is not a multiple of 4 KiB writes its tail buffered.
      return new FileSink(out, opened, target, undefined);
    }
    // Beside the target, so the rename stays on one filesystem and replaces the file a symlink points at.
    const tmp = path.join(path.dirname(target), `.${path.basename(target)}.rnode-partial`);
    const opened = await createPartial(tmp, out, opts.ownerOnly ? 0o600 : 0o644);
    try {
      // Its permissions, never its setuid, setgid or sticky bit: a root-owned disk image must not become set-user-ID.
      if (stats?.isFile()) await opened.fh.chmod(stats.mode & 0o777);
      await opened.fh.truncate(diskSize);
      const { ino, dev } = await opened.fh.stat();
      return new FileSink(out, opened, tmp, { partial: tmp, final: target, ino, dev });
    } catch (err) {
      // Nothing of it may stay behind: the partial file was left when the filesystem could not hold the disk (EFBIG).
      await opened.fh.close().catch(() => undefined);
      await fsp.unlink(tmp).catch(() => undefined);
      if ((err as NodeJS.ErrnoException).code === 'EFBIG') {
        throw new RnodeError(
          ErrorCodes.OUTPUT_IO,
          `--out ${out}: its filesystem cannot hold a file of ${diskSize} bytes (EFBIG: the disk is larger than the filesystem's largest file); nothing was written: give a path on a filesystem that can, or a block device`,
          { cause: err },
        );
      }
      throw err;
    }
  } catch (err) {
    throw unwritablePath(err, OUT.flag, out) ?? outputError(err, out);
  }
}

/**
 * A block device, held exclusively (O_EXCL) while it is written: Linux refuses that open (EBUSY) while a filesystem on
 * it is mounted, device-mapper, md or swap use it, or another process holds it so (mkfs, another recover), and while
 * this holds it, refuses those. Opened plainly, a recover wrote over a mounted filesystem, and two recovers to one
 * device both ran.
 */
async function openDevice(shown: string, device: string): Promise<Opened> {
  try {
    return await openDirect(device, fs.constants.O_WRONLY | fs.constants.O_EXCL);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EBUSY') throw err;
    throw new RnodeError(
      ErrorCodes.USAGE,
      `--out ${shown} is a block device in use: a filesystem on it is mounted, or another program or recover holds it; nothing was written: check that --out names the right device, and unmount it or stop what holds it first`,
      { cause: err, details: { device } },
    );
  }
}

/**
 * A block device's size is not in fstat (0): a 1-byte read at the disk's last offset tells whether the device
 * reaches it (0 bytes read: it ends before), and on refusal a binary search of such reads finds its size for the
 * message. A device that cannot be opened for reading is not checked here: a short write still fails (ENOSPC).
 */
async function refuseSmallDevice(shown: string, device: string, diskSize: number): Promise<void> {
  if (diskSize <= 0) return;
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(device, 'r');
  } catch {
    return;
  }
  try {
    const byte = Buffer.alloc(1);
    const reaches = async (offset: number) => (await fh.read(byte, 0, 1, offset)).bytesRead === 1;
    if (await reaches(diskSize - 1)) return;
    let lo = 0; // the device's size is in [lo, hi]
    let hi = diskSize - 1;
    while (lo < hi) {
      const mid = Math.floor((lo + hi + 1) / 2);
      if (await reaches(mid - 1)) lo = mid;
      else hi = mid - 1;
    }
    throw new RnodeError(
      ErrorCodes.USAGE,
      `--out ${shown} is a block device of ${lo} bytes, smaller than the disk (${diskSize} bytes); nothing was written: give a device of at least ${diskSize} bytes`,
      { details: { device, deviceSize: lo, diskSize } },
    );
  } finally {
    await fh.close();
  }
}

interface Opened {
  fh: fsp.FileHandle;
  direct: boolean;
}

/**
 * The partial file, made anew and locked (flock) while it is written: whatever else is under its name (an earlier
 * run's partial file, or anything another user of the folder put there) is removed, never opened for writing, and the
 * file is created with O_EXCL and O_NOFOLLOW. Opening the name wrote the image through a symlink planted there over
 * the file it points at (the symlink was then renamed into place), and a FIFO there hung the restore. A partial file
 * whose lock is held is another recover writing the same output: refused. One that reappears between the removal and
 * the create is a race with another process: tried again twice, then an error.
 */
async function createPartial(file: string, out: string, mode: number): Promise<Opened> {
  const flags = fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW;
  for (let attempt = 1; ; attempt++) {
    await refuseIfLocked(file, out);
    await fsp.unlink(file).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
    let created: fsp.FileHandle;
    try {
      // Created without O_DIRECT: a filesystem that refuses O_DIRECT (tmpfs before Linux 6.6) creates the file and
      // then fails the open, and the O_EXCL retry would find it there.
      created = await fsp.open(file, flags, mode);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt === 3) throw err;
      continue;
    }
    // The same file again with O_DIRECT where the filesystem takes it (through the open file, not the name).
    const direct = await openDirect(`/proc/self/fd/${created.fd}`, fs.constants.O_WRONLY).catch(() => undefined);
    const opened: Opened = direct?.direct ? direct : { fh: created, direct: false };
    if (direct && !direct.direct) await direct.fh.close();
    const locked = tryLockExclusive(opened.fh.fd);
    if (opened.fh !== created) await created.close();
    if (locked) return opened;
    await opened.fh.close(); // another recover locked it between our create and our lock: it is theirs
    throw busyOutput(out);
  }
}

async function refuseIfLocked(file: string, out: string): Promise<void> {
  // Read-only and non-blocking: a FIFO does not wait for a writer, a symlink is not followed (ELOOP).
  const fh = await fsp.open(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK).catch(() => undefined);
  if (!fh) return;
  try {
    if ((await fh.stat()).isFile() && !tryLockExclusive(fh.fd)) throw busyOutput(out);
  } finally {
    await fh.close(); // drops the lock this took
  }
}

function busyOutput(out: string): RnodeError {
  return new RnodeError(ErrorCodes.USAGE, `--out ${out} is being written by another recover; wait for it to end, or give another --out`);
}

/** O_DIRECT when the filesystem supports it (tmpfs does not: EINVAL), buffered otherwise. */
async function openDirect(file: string, flags: number, mode = 0o644): Promise<Opened> {
  const direct = fs.constants.O_DIRECT;
  if (direct !== undefined) {
    try {
      return { fh: await fsp.open(file, flags | direct, mode), direct: true };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
    }
  }
  return { fh: await fsp.open(file, flags, mode), direct: false };
}

/** A new file's partial file: its name, the name it gets when complete, and which file it is (inode, device). */
interface PartialFile {
  partial: string;
  final: string;
  ino: number;
  dev: number;
}

/** Whether the partial file's name still names the file this sink wrote. */
async function stillNamed(tmp: PartialFile): Promise<boolean> {
  const named = await fsp.lstat(tmp.partial).catch(() => undefined);
  return named?.ino === tmp.ino && named.dev === tmp.dev;
}

class FileSink implements OutputSink {
  readonly ordered = false;
  private readonly fh: fsp.FileHandle;
  private direct: boolean;
  /** Buffered handle for what O_DIRECT cannot take (an unaligned tail), opened on first need. */
  private buffered?: Promise<fsp.FileHandle>;
  private zeros?: Buffer;
  private dirty = 0;
  private flushing?: Promise<void>;
  private flushError: unknown;
  private closed = false;
  /** Bytes written with O_DIRECT and through the page cache (the tests check which path the writes took). */
  readonly bytes = { direct: 0, buffered: 0 };

  /**
   * location: --out as given (for messages); file: the path being written (the device, or the partial file);
   * tmp: for a new file, the partial file and the path it is renamed to at the end (a symlink's target).
   */
  constructor(
    readonly location: string,
    opened: Opened,
    private readonly file: string,
    private readonly tmp: PartialFile | undefined,
  ) {
    this.fh = opened.fh;
    this.direct = opened.direct;
  }

  /** A new file is sparse: only non-zero 4 KiB blocks are written. A device gets every byte. */
  private get sparse(): boolean {
    return this.tmp !== undefined;
  }

  async write(offset: number, data: Buffer): Promise<number> {
    return this.put(data, offset, this.sparse ? SPARSE_BLOCK : 0);
  }

  async zero(offset: number, length: number): Promise<number> {
    if (this.sparse) return 0; // the truncated new file already reads as zeros there
    this.zeros ??= sharedAligned(ZEROS_BYTES);
    for (let o = 0; o < length; o += ZEROS_BYTES) await this.put(this.zeros.subarray(0, Math.min(ZEROS_BYTES, length - o)), offset + o, 0);
    return length;
  }

  /** Writes buf at position (skipping its zero blocks when skipZeros > 0); returns the bytes written. */
  private async put(buf: Buffer, position: number, skipZeros: number): Promise<number> {
    try {
      return await this.putRaw(buf, position, skipZeros);
    } catch (err) {
      throw outputError(err, this.location); // ENOSPC, EIO...: RNODE_OUTPUT_IO naming the output
    }
  }

  private async putRaw(buf: Buffer, position: number, skipZeros: number): Promise<number> {
    // The zero scan and the writes of a chunk are one job on the libuv pool (writeNonZero): a promise round trip
    // through the event loop per 4 KiB block run cost more main-thread time than the write itself.
    const aligned = position % SPARSE_BLOCK === 0 && buf.length % SPARSE_BLOCK === 0 && addressAligned(buf, SPARSE_BLOCK);
    if (this.direct && aligned) {
      try {
        const n = await writeNonZero(this.fh.fd, buf, position, skipZeros);
        this.bytes.direct += n;
        return n;
      } catch (err) {
        // A filesystem that opened O_DIRECT but wants larger alignment: continue buffered (from the chunk's start:
        // rewriting what did land is harmless).
        if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
        this.direct = false;
      }
    }
    // The same open file again, without O_DIRECT (not the path, whose entry another process could have replaced).
    this.buffered ??= this.direct ? fsp.open(`/proc/self/fd/${this.fh.fd}`, 'r+') : Promise.resolve(this.fh);
    const n = await writeNonZero((await this.buffered).fd, buf, position, skipZeros);
    this.bytes.buffered += n;
    this.dirty += n;
    if (this.dirty >= FLUSH_EVERY && !this.flushing) {
      this.dirty = 0;
      const fh = await this.buffered;
      this.flushing = fh
        .datasync()
        .catch((err) => {
          this.flushError ??= err;
        })
        .finally(() => {
          this.flushing = undefined;
        });
    }
    return n;
  }

  async finish(): Promise<void> {
    try {
      await this.flushing;
      if (this.flushError) throw this.flushError;
      // One sync at the end: O_DIRECT data is on the device already; this covers metadata and buffered writes.
      const buffered = this.buffered ? await this.buffered : undefined;
      if (buffered && buffered !== this.fh) {
        await buffered.datasync();
        await buffered.close();
      }
      await this.fh.datasync();
      // Only the file this wrote is renamed into place: a partial file removed or replaced meanwhile (by hand, or by a
      // process that ignores its lock) fails the restore instead of passing another file off as the image.
      if (this.tmp && !(await stillNamed(this.tmp))) {
        throw new RnodeError(
          ErrorCodes.OUTPUT_IO,
          `writing ${this.location} failed: its partial file ${this.tmp.partial} was removed or replaced while this recover wrote it, and nothing was renamed into place; run recover again`,
        );
      }
      await this.fh.close();
      this.closed = true;
      if (this.tmp) {
        await fsp.rename(this.tmp.partial, this.tmp.final);
        // The rename is durable only once its folder is synced: without it, a power loss after "recovered" (exit 0)
        // could leave the old image, or none, under --out.
        await fsyncDir(path.dirname(this.tmp.final));
      }
    } catch (err) {
      throw outputError(err, this.location);
    }
  }

  async abort(): Promise<void> {
    await this.flushing;
    if (!this.closed) {
      this.closed = true;
      const buffered = this.buffered ? await this.buffered.catch(() => undefined) : undefined;
      if (buffered && buffered !== this.fh) await buffered.close().catch(() => undefined);
      await this.fh.close().catch(() => undefined);
    }
    // A partial file must never look like a finished restore. Only this sink's own: another's is not touched.
    if (this.tmp && (await stillNamed(this.tmp))) await fsp.rm(this.tmp.partial, { force: true }).catch(() => undefined);
  }
}

/**
 * A path the user may not write (permissions, a read-only filesystem): the same command fails again until that
 * changes, so RNODE_PATH_UNUSABLE (exit 2) as for a store folder, not OUTPUT_IO; undefined for other errors.
 */
export function unwritablePath(err: unknown, flag: string, out: string): RnodeError | undefined {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (code !== 'EACCES' && code !== 'EPERM' && code !== 'EROFS') return undefined;
  return unusablePath(`${flag} ${out}`, err, 'give a path you can write, or change its permissions');
}

export function outputError(err: unknown, out: string): unknown {
  if (err instanceof RnodeError) return err;
  const e = err as NodeJS.ErrnoException;
  if (e && typeof e.code === 'string') {
    return new RnodeError(ErrorCodes.OUTPUT_IO, `writing ${out} failed: ${e.code}; check the path, its permissions and free space`, { cause: err });
  }
  return err;
}
