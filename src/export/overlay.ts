// Copy-on-write for a writable export: guest writes go to a local sparse file, never to the store. The file has a
// small header, an allocation bitmap (one bit per block) and the blocks at their disk offsets, past a 1 MiB base.
//
// Layout: 0..4095 header (magic "RNOVRLY1", version, block size, disk size, point, disk id, xxh64 of those; from
// version 2 also when the point was taken, and an xxh64 of it all);
// 4096.. the bitmap; dataStart (1 MiB aligned) + disk offset: the block's bytes. Durability: on FLUSH, DISC and
// close the data is fdatasync'd *before* the dirty bitmap pages are written and synced, so a bit is never set for
// a block whose bytes may not be there. Bits are only ever set, so a torn bitmap page still holds every older bit.
// A bitmap page stays dirty until it is written and synced, and after a failed fdatasync no flush succeeds again.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { assertOutsideStore } from '../store/containment.js';
import { unwritablePath, type OutputFlag } from '../output/file.js';
import { fsyncDir } from '../store/fs/dirs.js';
import { ErrorCodes, RnodeError } from '../errors.js';
import { failpoint } from '../failpoint.js';
import { xxh64 } from '../format/checksum.js';
import { tryLockExclusive } from '../native/index.js';
import { checkRange, pushExtent, type ExportImage, type Piece } from './image.js';
import type { StatusExtent } from './wire.js';

const MAGIC = 'RNOVRLY1';
/** 2: the header also holds when the point was taken (OverlayIdentity.createdAt); a version-1 overlay still opens. */
const VERSION = 2;
const HEADER_BYTES = 4096;
const PAGE = 4096;
export const OVERLAY_BLOCK = 64 * 1024;
/** How resolveFileOutput names --overlay: a path checked as recover's --out is (src/output/file.ts). */
export const OVERLAY_FLAG: OutputFlag = { flag: '--overlay', instead: 'give the path of a file (new, empty, or an overlay)' };
const ZEROES = Buffer.alloc(1024 * 1024);

export interface OverlayIdentity {
  disk: string;
  point: number;
  size: number;
  /**
   * When the point was taken (its manifest's createdAt, kept when retention rebases it): point 1 of a disk of the same
   * id and size in another store (a primary and its DR copy made apart, two sites) is another disk, and an overlay
   * of it was taken for this one, its blocks shown over the wrong point.
   */
  createdAt: string;
}

export class OverlayImage implements ExportImage {
  readonly writable = true;
  readonly size: number;
  readonly point: number;
  private readonly blocks: number;
  private readonly dataStart: number;
  private readonly dirtyPages = new Set<number>();
  /** The base pieces in each reply read() returned, until done() hands them back to the base. */
  private readonly baseReads = new WeakMap<Piece[], Piece[][]>();
  private dataDirty = false;
  /** Set by a failed fdatasync: every later flush fails with it (see sync). */
  private syncFailed: RnodeError | undefined;
  private lock: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly fh: fsp.FileHandle,
    private readonly bitmap: Buffer,
    private readonly base: ExportImage,
    readonly file: string,
  ) {
    this.size = base.size;
    this.point = base.point;
    this.blocks = Math.ceil(this.size / OVERLAY_BLOCK);
    this.dataStart = dataStartFor(this.blocks);
  }

  /**
   * Opens an overlay of base, creating it when missing; an existing one must belong to the same disk and point. The
   * overlay stays locked to this export until close: two exports writing one overlay each keep their own bitmap, so
   * each one's flushed writes are lost to the other's.
   */
  static async open(file: string, base: ExportImage, id: OverlayIdentity): Promise<OverlayImage> {
    const bitmapBytes = roundUp(Math.ceil(Math.ceil(id.size / OVERLAY_BLOCK) / 8), PAGE);
    let fh = await openExisting(file);
    // create() gives way to an overlay another export created meanwhile: that one is opened, and checked as any.
    while (!fh) fh = (await create(file, id)) ?? (await openExisting(file));
    try {
      const st = await fh.stat();
      // Before any write: a block device reads as size 0 below, so its first 4 KiB (a mounted filesystem's superblock)
      // were overwritten with a header before the resize failed. An overlay is a sparse file; nothing else can be one.
      if (!st.isFile()) {
        throw new RnodeError(
          ErrorCodes.USAGE,
          `overlay ${file} is ${specialKind(st)}, and an overlay is a regular file; nothing was written to it: give the path of a new file, or of the overlay this export wrote`,
        );
      }
      if (!tryLockExclusive(fh.fd)) {
        throw new RnodeError(
          ErrorCodes.USAGE,
          `overlay ${file} is in use by another running export; stop that export first, or pass another --overlay file`,
        );
      }
      // An empty file: the operator's, or left by an rnode that created overlays in place. Header first, so that a
      // crash leaves it empty or an overlay, never a file of zeros.
      if ((await fh.stat()).size === 0) await initialize(fh, id);
      const header = Buffer.alloc(HEADER_BYTES);
      await fh.read(header, 0, HEADER_BYTES, 0);
      checkHeader(header, id, file);
      const bitmap = Buffer.alloc(bitmapBytes);
      await fh.read(bitmap, 0, bitmapBytes, HEADER_BYTES);
      return new OverlayImage(fh, bitmap, base, file);
    } catch (err) {
      await fh.close().catch(() => undefined);
      throw err instanceof RnodeError ? err : overlayIo(file, err);
    }
  }

  private has(b: number): boolean {
    return (this.bitmap[b >> 3] & (1 << (b & 7))) !== 0;
  }

  private mark(b: number): void {
    this.bitmap[b >> 3] |= 1 << (b & 7);
    this.dirtyPages.add(Math.floor((b >> 3) / PAGE));
  }

  /** Blocks written by the guest, for stats and tests. */
  get allocatedBlocks(): number {
    let n = 0;
    for (let b = 0; b < this.blocks; b++) if (this.has(b)) n++;
    return n;
  }

  /** Runs of blocks with the same state over [offset, offset+length): [start, end, inOverlay]. */
  private runs(offset: number, length: number): Array<[number, number, boolean]> {
    const out: Array<[number, number, boolean]> = [];
    let pos = offset;
    const end = offset + length;
    while (pos < end) {
      const b = Math.floor(pos / OVERLAY_BLOCK);
      const mine = this.has(b);
      let stop = Math.min(end, (b + 1) * OVERLAY_BLOCK);
      while (stop < end && this.has(Math.floor(stop / OVERLAY_BLOCK)) === mine) stop = Math.min(end, stop + OVERLAY_BLOCK);
      out.push([pos, stop, mine]);
      pos = stop;
    }
    return out;
  }

  async read(offset: number, length: number): Promise<Piece[]> {
    checkRange(offset, length, this.size);
    const out: Piece[] = [];
    const fromBase: Piece[][] = [];
    try {
      for (const [start, end, mine] of this.runs(offset, length)) {
        if (!mine) {
          const pieces = await this.base.read(start, end - start);
          fromBase.push(pieces);
          out.push(...pieces);
          continue;
        }
        const data = Buffer.allocUnsafe(end - start);
        await this.readFile(data, start);
        out.push({ offset: start, length: end - start, data });
      }
    } catch (err) {
      for (const pieces of fromBase) this.base.done?.(pieces);
      throw err;
    }
    if (fromBase.length) this.baseReads.set(out, fromBase);
    return out;
  }

  /**
   * The base's pieces in a reply are handed back to it once the reply is sent: they are pinned in its chunk cache
   * until then, and an overlay that kept them pinned made every later fetch allocate afresh (a writable export grew
   * by ~230 MB per full read of a 48 MiB disk, past its --cache, until the OOM killer).
   */
  done(pieces: Piece[]): void {
    const fromBase = this.baseReads.get(pieces);
    this.baseReads.delete(pieces);
    for (const p of fromBase ?? []) this.base.done?.(p);
  }

  async extents(offset: number, length: number): Promise<StatusExtent[]> {
    checkRange(offset, length, this.size);
    const out: StatusExtent[] = [];
    for (const [start, end, mine] of this.runs(offset, length)) {
      if (mine) {
        pushExtent(out, end - start, 0);
        continue;
      }
      let pos = start;
      while (pos < end) {
        const got = await this.base.extents(pos, end - pos);
        for (const e of got) pushExtent(out, e.length, e.flags);
        pos += got.reduce((n, e) => n + e.length, 0);
        if (got.length === 0) break;
      }
    }
    return out;
  }

  write(offset: number, data: Buffer): Promise<void> {
    checkRange(offset, data.length, this.size);
    return this.serialized(() => this.writeLocked(offset, data));
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    checkRange(offset, length, this.size);
    for (let o = 0; o < length; o += ZEROES.length) {
      const n = Math.min(ZEROES.length, length - o);
      await this.write(offset + o, ZEROES.subarray(0, n));
    }
  }

  /** Writes are serialized: a copy-on-write reads the base block, merges and writes it, with no other write between. */
  private serialized<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.lock.then(fn);
    this.lock = p.catch(() => undefined);
    return p;
  }

  private async writeLocked(offset: number, data: Buffer): Promise<void> {
    const end = offset + data.length;
    for (let pos = offset; pos < end;) {
      const b = Math.floor(pos / OVERLAY_BLOCK);
      const blockStart = b * OVERLAY_BLOCK;
      const blockEnd = Math.min(this.size, blockStart + OVERLAY_BLOCK);
      const stop = Math.min(end, blockEnd);
      if (this.has(b) || (pos === blockStart && stop === blockEnd)) {
        await this.writeFile(data.subarray(pos - offset, stop - offset), pos);
      } else {
        // First write to a block that is only partly covered: the rest of it comes from the point.
        const block = Buffer.alloc(blockEnd - blockStart);
        const pieces = await this.base.read(blockStart, block.length);
        for (const p of pieces) if (p.data) p.data.copy(block, p.offset - blockStart);
        this.base.done?.(pieces);
        data.copy(block, pos - blockStart, pos - offset, stop - offset);
        await this.writeFile(block, blockStart);
      }
      this.mark(b);
      pos = stop;
    }
  }

  private async writeFile(buf: Buffer, diskOffset: number): Promise<void> {
    this.dataDirty = true;
    await this.writeFully(buf, this.dataStart + diskOffset);
  }

  private async writeFully(buf: Buffer, position: number): Promise<void> {
    let done = 0;
    try {
      while (done < buf.length) {
        const { bytesWritten } = await this.fh.write(buf, done, buf.length - done, position + done);
        done += bytesWritten;
      }
    } catch (err) {
      throw writeError(this.file, err);
    }
  }

  private async readFile(buf: Buffer, diskOffset: number): Promise<void> {
    let done = 0;
    while (done < buf.length) {
      const { bytesRead } = await this.fh.read(buf, done, buf.length - done, this.dataStart + diskOffset + done);
      if (bytesRead === 0) throw new RnodeError(ErrorCodes.OUTPUT_IO, `overlay ${this.file} is shorter than its disk; it was truncated`);
      done += bytesRead;
    }
  }

  flush(): Promise<void> {
    return this.serialized(async () => {
      if (this.syncFailed) throw this.syncFailed;
      if (!this.dataDirty && this.dirtyPages.size === 0) return;
      await this.sync();
      this.dataDirty = false;
      // Pages leave the dirty set only once written and synced: a flush that fails to write them (a full filesystem)
      // leaves them to the next flush, which must not succeed without them.
      const pages = [...this.dirtyPages].sort((a, b) => a - b);
      for (const p of pages) await this.writeFully(this.bitmap.subarray(p * PAGE, (p + 1) * PAGE), HEADER_BYTES + p * PAGE);
      await this.sync();
      for (const p of pages) this.dirtyPages.delete(p);
    });
  }

  /**
   * fdatasync, failing for good once it failed: the kernel may have dropped the pages it could not write and marked
   * them clean, so a later fdatasync succeeds without them (PostgreSQL's "fsyncgate"). Which writes were lost cannot
   * be known, so this export stops promising any: its flushes fail until it is restarted, and the overlay then holds
   * what a power loss at the failure would have left. Never noSpace (EIO to the client, even for an ENOSPC): freeing
   * space does not bring those writes back.
   */
  private async sync(): Promise<void> {
    try {
      await this.fh.datasync();
    } catch (err) {
      const code = (err as NodeJS.ErrnoException)?.code ?? 'error';
      this.syncFailed = new RnodeError(
        ErrorCodes.OUTPUT_IO,
        `overlay ${this.file} could not be synced (${code}): writes since the last flush may be lost, and this export ` +
          'cannot flush again; stop the VM and the export, fix the filesystem, and start the export again with the same overlay',
        { cause: err },
      );
      throw this.syncFailed;
    }
  }

  async close(): Promise<void> {
    try {
      await this.flush();
    } finally {
      await this.fh.close();
    }
  }
}

async function openExisting(file: string): Promise<fsp.FileHandle | undefined> {
  try {
    return await fsp.open(file, fs.constants.O_RDWR);
  } catch (err) {
    if ((err as NodeJS.ErrnoException)?.code === 'ENOENT') return undefined;
    throw overlayIo(file, err);
  }
}

/**
 * A new overlay, built under a temporary name beside file and linked into place once its header is durable: a
 * creation that fails (a full filesystem) or is cut short leaves no headerless file under the overlay's name, which
 * the next start refused. link() never replaces a file: undefined when one appeared meanwhile (the caller opens it).
 */
async function create(file: string, id: OverlayIdentity): Promise<fsp.FileHandle | undefined> {
  const tmp = path.join(path.dirname(file), `.rnode-tmp.${path.basename(file)}.${process.pid}.${randomBytes(4).toString('hex')}`);
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(tmp, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
  } catch (err) {
    throw overlayIo(file, err);
  }
  let linked = false;
  try {
    tryLockExclusive(fh.fd); // held from before the name appears: no other export can take the new overlay
    await initialize(fh, id);
    failpoint('overlay-header-written'); // a crash here leaves the temp file, not a headerless overlay (test/export)
    try {
      await fsp.link(tmp, file);
      linked = true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException)?.code !== 'EEXIST') throw err;
    }
    await fsp.unlink(tmp);
    if (linked) await fsyncDir(path.dirname(file));
  } catch (err) {
    await fh.close().catch(() => undefined);
    await fsp.rm(tmp, { force: true }).catch(() => undefined);
    if (linked) await fsp.rm(file, { force: true }).catch(() => undefined); // ours: locked since it was linked
    throw overlayIo(file, err);
  }
  if (linked) return fh;
  await fh.close();
  return undefined;
}

/** Writes the header, synced, and only then sizes the file: no crash leaves a full-size file without a header. */
async function initialize(fh: fsp.FileHandle, id: OverlayIdentity): Promise<void> {
  const header = encodeHeader(id);
  await fh.write(header, 0, header.length, 0);
  await fh.datasync();
  await fh.truncate(dataStartFor(Math.ceil(id.size / OVERLAY_BLOCK)) + id.size);
  await fh.datasync();
}

function dataStartFor(blocks: number): number {
  return roundUp(HEADER_BYTES + roundUp(Math.ceil(blocks / 8), PAGE), 1024 * 1024);
}

function roundUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

function encodeHeader(id: OverlayIdentity): Buffer {
  const b = Buffer.alloc(HEADER_BYTES);
  b.write(MAGIC, 0, 'latin1');
  b.writeUInt32LE(VERSION, 8);
  b.writeUInt32LE(OVERLAY_BLOCK, 12);
  b.writeBigUInt64LE(BigInt(id.size), 16);
  b.writeUInt32LE(id.point, 24);
  const disk = Buffer.from(id.disk, 'utf8');
  b.writeUInt32LE(disk.length, 28);
  disk.copy(b, 32);
  b.writeBigUInt64LE(xxh64(b.subarray(0, 160)), 160);
  const taken = Buffer.from(id.createdAt, 'utf8').subarray(0, 64);
  b.writeUInt32LE(taken.length, 168);
  taken.copy(b, 172);
  b.writeBigUInt64LE(xxh64(b.subarray(0, 240)), 240);
  return b;
}

function checkHeader(b: Buffer, id: OverlayIdentity, file: string): void {
  if (b.toString('latin1', 0, 8) !== MAGIC || b.readBigUInt64LE(160) !== xxh64(b.subarray(0, 160))) {
    throw new RnodeError(
      ErrorCodes.USAGE,
      `${file} is not an rnode overlay (or its header is damaged); pass a new file or the overlay this export wrote`,
    );
  }
  const version = b.readUInt32LE(8);
  if ((version !== 1 && version !== VERSION) || b.readUInt32LE(12) !== OVERLAY_BLOCK) {
    throw new RnodeError(ErrorCodes.FORMAT_VERSION, `overlay ${file} has version ${version}; use the rnode that wrote it`);
  }
  if (version === VERSION && b.readBigUInt64LE(240) !== xxh64(b.subarray(0, 240))) {
    throw new RnodeError(
      ErrorCodes.USAGE,
      `${file} is not an rnode overlay (or its header is damaged); pass a new file or the overlay this export wrote`,
    );
  }
  const disk = b.toString('utf8', 32, 32 + Math.min(128, b.readUInt32LE(28)));
  const point = b.readUInt32LE(24);
  const size = Number(b.readBigUInt64LE(16));
  if (disk !== id.disk || point !== id.point || size !== id.size) {
    throw new RnodeError(
      ErrorCodes.USAGE,
      `overlay ${file} holds writes over point ${point} of disk ${disk} (${size} bytes), not point ${id.point} of disk ${id.disk}; ` +
        `export that point with it (--disk ${disk} --point ${point}) or pass a new overlay file`,
    );
  }
  // A version-1 overlay does not say when its point was taken: it opens as before.
  const taken = version === VERSION ? b.toString('utf8', 172, 172 + Math.min(64, b.readUInt32LE(168))) : id.createdAt;
  if (taken !== id.createdAt) {
    throw new RnodeError(
      ErrorCodes.USAGE,
      `overlay ${file} holds writes over point ${point} of disk ${disk} taken at ${taken}, and the point ${point} of disk ${disk} here was taken ` +
        `at ${id.createdAt}: another store's point of that disk id, or one made anew; export the store it was written for, or pass a new overlay file`,
    );
  }
}

// Out of space, whatever the filesystem calls it: marked noSpace, which the NBD server replies as ENOSPC.
const NO_SPACE = new Set(['ENOSPC', 'EDQUOT', 'EFBIG']);

function writeError(file: string, err: unknown): RnodeError {
  const code = (err as NodeJS.ErrnoException)?.code ?? 'error';
  if (NO_SPACE.has(code)) {
    return new RnodeError(
      ErrorCodes.OUTPUT_IO,
      `the filesystem of overlay ${file} has no room for the guest's writes (${code}); free space on it (or raise the quota), then resume the VM`,
      { cause: err, details: { noSpace: true } },
    );
  }
  return new RnodeError(ErrorCodes.OUTPUT_IO, `writing overlay ${file} failed (${code}); check the disk it is on`, { cause: err });
}

function specialKind(st: fs.Stats): string {
  if (st.isBlockDevice()) return 'a block device';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isFIFO()) return 'a FIFO (named pipe)';
  if (st.isSocket()) return 'a socket';
  return st.isDirectory() ? 'a directory' : 'a special file';
}

function overlayIo(file: string, err: unknown): RnodeError {
  const unwritable = unwritablePath(err, OVERLAY_FLAG.flag, file);
  if (unwritable) return unwritable;
  const code = (err as NodeJS.ErrnoException)?.code ?? 'error';
  return new RnodeError(ErrorCodes.OUTPUT_IO, `cannot use overlay ${file} (${code}); check the path, its permissions and free space`, { cause: err });
}

/** Refuses an overlay inside a local store's directory (a guest's writes must never land among the store's objects). */
export function assertOverlayOutsideStore(overlay: string, storeLocation: string): void {
  const root = /^file:\/\//i.test(storeLocation) ? fileURLToPath(storeLocation) : path.resolve(storeLocation);
  if (!/^file:\/\//i.test(storeLocation) && /^[a-zA-Z][a-zA-Z0-9+.-]+:/.test(storeLocation)) return;
  assertOutsideStore(root, overlay, '--overlay');
}
