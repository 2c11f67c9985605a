// The raw source: a disk image file or a block device, read through the native addon. It has no change
// tracking; holes (SEEK_DATA/SEEK_HOLE) tell it what a full sync can skip.
import fsp from 'node:fs/promises';
import { ErrorCodes, RnodeError } from '../errors.js';
import { openRaw, type RawHandle, NativeIoError } from '../native/index.js';
import { isVirtualFsPath } from '../store/fs/dirs.js';
import type { BlockSource, Extent } from './types.js';

const EXTENT_BATCH = 1024;

export class RawSource implements BlockSource {
  readonly kind = 'raw';
  readonly tracksChanges = false;
  readonly maxReadBytes = 64 * 1024 * 1024;

  private constructor(private readonly handle: RawHandle) {}

  static async open(path: string, opts: { direct?: boolean } = {}): Promise<RawSource> {
    try {
      await refuseWhatIsNoDisk(path);
      return new RawSource(await openRaw(path, { direct: opts.direct ?? false }));
    } catch (err) {
      throw sourceError(err, path);
    }
  }

  get location(): string {
    return this.handle.path;
  }
  get size(): number {
    return this.handle.size;
  }
  get alignment(): number {
    return this.handle.alignment;
  }

  async *allocatedExtents(): AsyncIterable<Extent> {
    let pos = 0;
    while (pos < this.size) {
      let batch: Extent[];
      try {
        batch = await this.handle.allocatedExtents(pos, this.size, EXTENT_BATCH);
      } catch (err) {
        throw sourceError(err, this.location);
      }
      if (batch.length === 0) return;
      yield* batch;
      const last = batch[batch.length - 1];
      pos = last.offset + last.length;
      if (batch.length < EXTENT_BATCH) return;
    }
  }

  // eslint-disable-next-line require-yield
  async *changedExtentsSince(_marker: string): AsyncIterable<Extent> {
    throw new RnodeError(ErrorCodes.CHANGE_MARKER_INVALID, 'raw sources do not track changes');
  }

  /** Regular files: inode, size and mtime (writes move it). Block devices cannot tell, so they never resume. */
  async identity(): Promise<string | undefined> {
    if (this.handle.blockDevice) return undefined;
    try {
      const st = await fsp.stat(this.location, { bigint: true });
      return `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}`;
    } catch {
      return undefined;
    }
  }

  async changeMarker(): Promise<string | undefined> {
    return undefined;
  }

  async read(offset: number, buf: Buffer, length: number): Promise<number> {
    try {
      return await this.handle.read(buf, offset, length);
    } catch (err) {
      throw sourceError(err, this.location);
    }
  }

  /** Direct handles read around the page cache; a worker's buffered pread would read through it: not lent. */
  lendFd(): { fd: number; release: () => void } | undefined {
    return this.handle.direct ? undefined : this.handle.lendFd();
  }

  async close(): Promise<void> {
    await this.handle.close();
  }
}

/**
 * Refuses, before open, what has no disk in it: a FIFO or socket (opening a FIFO blocks until a writer comes: the
 * job hung without a word) and the files of /proc and /sys (they read as 0 bytes: a 0-byte point of /proc/self/mem
 * was committed). A path that cannot be stat'ed is left to open, which says why.
 */
async function refuseWhatIsNoDisk(path: string): Promise<void> {
  const st = await fsp.stat(path).catch(() => undefined);
  if (!st) return;
  if (st.isFIFO() || st.isSocket()) {
    throw new RnodeError(
      ErrorCodes.BAD_SOURCE,
      `source ${path} is a ${st.isFIFO() ? 'FIFO' : 'socket'}, not a disk; pass a disk image file or a block device`,
    );
  }
  if (st.isFile() && isVirtualFsPath(path)) {
    throw new RnodeError(
      ErrorCodes.BAD_SOURCE,
      `source ${path} is a kernel virtual file (/proc, /sys), not a disk; pass a disk image file or a block device`,
    );
  }
}

function sourceError(err: unknown, path: string): RnodeError {
  if (err instanceof NativeIoError) {
    if (err.code === 'ENOENT') {
      return new RnodeError(ErrorCodes.SOURCE_NOT_FOUND, `source ${path} does not exist; check the --source path`, { cause: err });
    }
    if (err.code === 'EACCES' || err.code === 'EPERM') {
      return new RnodeError(ErrorCodes.SOURCE_IO, `source ${path} cannot be opened (${err.code}); run rnode as a user that can read it`, {
        cause: err,
      });
    }
    if (err.code === 'ELOOP' || err.code === 'ENOTDIR' || err.code === 'ENAMETOOLONG') {
      const why =
        err.code === 'ELOOP'
          ? 'goes through a loop of symbolic links'
          : err.code === 'ENOTDIR'
            ? 'has a file where a folder should be'
            : 'is too long';
      return new RnodeError(ErrorCodes.BAD_SOURCE, `source ${path} ${why} (${err.code}); check the --source path`, { cause: err });
    }
    if (err.code === 'EISDIR') {
      return new RnodeError(ErrorCodes.BAD_SOURCE, `source ${path} is a directory; pass a disk image file or a block device`, { cause: err });
    }
    if (err.code === 'EINVAL' && err.syscall === 'fstat') {
      // openRaw's refusal, after fstat, of a character device (/dev/zero), a FIFO or a socket: no size to replicate.
      return new RnodeError(ErrorCodes.BAD_SOURCE, `source ${path} is not a regular file or block device; pass a disk image file or a block device`, {
        cause: err,
      });
    }
    return new RnodeError(ErrorCodes.SOURCE_IO, `reading source ${path} failed: ${err.code} (${err.syscall}); check the device and retry`, {
      cause: err,
      details: { errno: err.errno },
    });
  }
  if (err instanceof RnodeError) return err;
  return new RnodeError(ErrorCodes.SOURCE_IO, `reading source ${path} failed: ${(err as Error).message}`, { cause: err });
}
