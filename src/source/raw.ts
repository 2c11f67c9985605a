// The raw source: a disk image file or a block device, read through the native addon. It has no change
// tracking; holes (SEEK_DATA/SEEK_HOLE) tell it what a full sync can skip.
import fsp from 'node:fs/promises';
import { ErrorCodes, RnodeError } from '../errors.js';
import { openRaw, type RawHandle, NativeIoError } from '../native/index.js';
import type { BlockSource, Extent } from './types.js';

const EXTENT_BATCH = 1024;

export class RawSource implements BlockSource {
  readonly kind = 'raw';
  readonly tracksChanges = false;
  readonly maxReadBytes = 64 * 1024 * 1024;

  private constructor(private readonly handle: RawHandle) {}

  static async open(path: string, opts: { direct?: boolean } = {}): Promise<RawSource> {
    try {
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
