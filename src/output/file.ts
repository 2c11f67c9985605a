// The local output: a new file (written as a hidden partial file, renamed when complete) or a block device
// (written in place). Positioned writes with O_DIRECT where the filesystem takes it, so the device writes while
// chunks decode instead of one long flush at the end; zeros stay holes in a file and are written on a device.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { ErrorCodes, RnodeError } from '../errors.js';
import { addressAligned, sharedAligned, writeNonZero } from '../native/index.js';
import type { OutputSink } from './sink.js';

/** Holes are kept at this granularity, and O_DIRECT writes are aligned to it. */
export const SPARSE_BLOCK = 4096;
/** Without O_DIRECT, dirty pages are flushed every this many bytes, so the final sync is short and memory bounded. */
const FLUSH_EVERY = 64 * 1024 * 1024;
const ZEROS_BYTES = 1024 * 1024;

export async function openFileOutput(out: string, diskSize: number): Promise<OutputSink> {
  let st: fs.Stats | undefined;
  try {
    st = await fsp.stat(out);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw outputError(err, out);
  }
  if (st?.isDirectory()) {
    throw new RnodeError(ErrorCodes.USAGE, `--out ${out} is a directory; give a file or block device path`);
  }
  try {
    if (st?.isBlockDevice()) {
      // A device cannot be renamed into place, and its old bytes are not zeros: every byte is written.
      // O_DIRECT needs whole blocks: a disk size that is not a multiple of 4 KiB writes its tail buffered.
      return new FileSink(out, await openDirect(out, fs.constants.O_WRONLY), out, undefined);
    }
    const tmp = path.join(path.dirname(out), `.${path.basename(out)}.rnode-partial`);
    const opened = await openDirect(tmp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC);
    await opened.fh.truncate(diskSize);
    return new FileSink(out, opened, tmp, tmp);
  } catch (err) {
    throw outputError(err, out);
  }
}

interface Opened {
  fh: fsp.FileHandle;
  direct: boolean;
}

/** O_DIRECT when the filesystem supports it (tmpfs does not: EINVAL), buffered otherwise. */
async function openDirect(file: string, flags: number): Promise<Opened> {
  const direct = fs.constants.O_DIRECT;
  if (direct !== undefined) {
    try {
      return { fh: await fsp.open(file, flags | direct, 0o644), direct: true };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
    }
  }
  return { fh: await fsp.open(file, flags, 0o644), direct: false };
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

  /** file: the path being written (the device, or the partial file renamed to location at the end). */
  constructor(
    readonly location: string,
    opened: Opened,
    private readonly file: string,
    private readonly tmp: string | undefined,
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
    this.buffered ??= this.direct ? fsp.open(this.file, 'r+') : Promise.resolve(this.fh);
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
      await this.fh.close();
      this.closed = true;
      if (this.tmp) await fsp.rename(this.tmp, this.location);
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
    // A partial file must never look like a finished restore.
    if (this.tmp) await fsp.rm(this.tmp, { force: true }).catch(() => undefined);
  }
}

export function outputError(err: unknown, out: string): unknown {
  if (err instanceof RnodeError) return err;
  const e = err as NodeJS.ErrnoException;
  if (e && typeof e.code === 'string') {
    return new RnodeError(ErrorCodes.OUTPUT_IO, `writing ${out} failed: ${e.code}; check the path, its permissions and free space`, { cause: err });
  }
  return err;
}
