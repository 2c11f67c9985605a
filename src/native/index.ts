// The only module that loads the rnode_native addon: raw block I/O and buffer helpers.
// Arguments are validated here; the addon gets plain values and does blocking work on the libuv pool.

import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { constants as osConstants } from 'node:os';
import { fileURLToPath } from 'node:url';
import { constants as bufferConstants } from 'node:buffer';
import path from 'node:path';
import { ErrorCodes, RnodeError } from '../errors.js';
import { loadBlake, type Blake } from './blake.js';

export interface Extent {
  offset: number;
  length: number;
}

export interface RawOpenOptions {
  /** Open with O_DIRECT. There is no fallback: a filesystem that refuses it rejects with EINVAL. */
  direct?: boolean;
}

export interface RawHandle {
  readonly path: string;
  /** Regular file: st_size at open; block device: BLKGETSIZE64. */
  readonly size: number;
  readonly blockDevice: boolean;
  /** Required alignment of buffer address, offset and length when direct; 1 otherwise. */
  readonly alignment: number;
  readonly direct: boolean;
  /** Positional read into buf[0..length) at file offset; returns bytes read (< length only at EOF). */
  read(buf: Buffer, offset: number, length?: number): Promise<number>;
  /** Allocated (data) extents within [start, end), at most maxCount, sorted; end is clamped to size. */
  allocatedExtents(start: number, end: number, maxCount: number): Promise<Extent[]>;
  /**
   * The fd, for positional reads on another thread of this process (fs.readSync in a worker), or undefined once
   * closing; close() waits until release() is called, so the fd is never reused under the borrower.
   */
  lendFd(): { fd: number; release: () => void } | undefined;
  /** Idempotent; waits for reads in flight and lent fds, then releases the fd. */
  close(): Promise<void>;
}

/** An errno from the addon. errno is positive, as in os.constants.errno (Node's own fs errors use negative). */
export class NativeIoError extends Error {
  errno: number;
  code: string;
  syscall: string;
  path: string;

  constructor(message: string, fields: { errno: number; code: string; syscall: string; path: string }) {
    super(message);
    this.name = 'NativeIoError';
    this.errno = fields.errno;
    this.code = fields.code;
    this.syscall = fields.syscall;
    this.path = fields.path;
  }
}

// ---- the addon's surface (plain values only) ----

interface NativeFile {
  read(buf: Uint8Array, position: number, length: number, alignment: number): Promise<number>;
  allocatedExtents(start: number, end: number, maxCount: number): Promise<Extent[]>;
  close(): Promise<void>;
  lendFd(): number;
  giveBackFd(): void;
}

interface NativeOpenResult {
  file: NativeFile;
  type: 'file' | 'block' | 'directory' | 'char' | 'other';
  size: number;
  logicalBlockSize: number;
}

interface NativeBinding {
  open(path: string, direct: boolean): Promise<NativeOpenResult>;
  threadCpuMs?: () => number;
  socketSendQueue?: (fd: number) => number;
  isZero(buf: Uint8Array): boolean;
  allocAligned(size: number, alignment: number): Buffer;
  allocMapped(size: number): Buffer;
  alignOffset(buf: Uint8Array, alignment: number): number;
  copyBytes(src: Uint8Array, dst: Uint8Array): void;
  zeroBytes(dst: Uint8Array): void;
  discardPages(buf: Uint8Array): void;
  returnLargeFreesToSystem(): boolean;
  trimNativeHeap(): boolean;
  keepFreedHeap(bytes: number): boolean;
  adviseHugePages(buf: Uint8Array): number;
  writeFile(path: string, data: Uint8Array, sync: boolean, direct: boolean, mode: number): Promise<NativeWritten>;
  lockExclusive(fd: number): boolean;
  readFileInto(path: string, into: Uint8Array, offset: number, length: number): Promise<ReadInto>;
  writeNonZero(fd: number, data: Uint8Array, position: number, block: number): Promise<number>;
  lz4Info(): { version?: string; error?: string };
  glibc: boolean;
  lz4CompressBlock(src: Uint8Array, dst: Uint8Array): number;
  lz4DecompressBlock(src: Uint8Array, dst: Uint8Array): number;
  xxh64(data: Uint8Array, seed?: bigint): bigint;
  xxh3Info(): { version?: string; dispatch?: boolean; error?: string };
  xxh3(data: Uint8Array, seed: bigint, out: Uint8Array): void;
  changeHashes(fd: number, chunks: Float64Array, seed: bigint, out: Uint8Array): Promise<ChangeHashRun>;
}

/** What one changeHashes run read: its bytes, and where a read came up short (the source ended). */
export interface ChangeHashRun {
  bytes: number;
  /** The position in the run of the chunk whose read came up short; nothing after it was read. */
  short?: number;
  /** That chunk's bytes. */
  got?: number;
}

// Two levels below the package root both as src/native (tap runs .ts) and as dist/native (tsc rootDir 'src').
const PACKAGE_ROOT = fileURLToPath(new URL('../../', import.meta.url));

/**
 * The addon file: the prebuild shipped for this platform (prebuilds/<platform>-<arch>/, what an installed
 * package uses: npm runs no compiler), else a source build in native/build/Release. Worker threads load it too.
 */
function findAddon(): string {
  // The shipped prebuild by its exact name first: node-gyp-build's search (its package, a directory listing, tag
  // matching) cost every process ~5 ms of start-up. It finds the same file; it stays for source builds.
  const prebuild = path.join(PACKAGE_ROOT, 'prebuilds', `${process.platform}-${process.arch}`, 'rnode_native.node');
  if (existsSync(prebuild)) return prebuild;
  const nodeGypBuild = createRequire(import.meta.url)('node-gyp-build') as { path(dir: string): string };
  // The package root has no build/ folder, so node-gyp-build looks only at prebuilds/ there.
  for (const dir of [PACKAGE_ROOT, path.join(PACKAGE_ROOT, 'native')]) {
    try {
      return nodeGypBuild.path(dir);
    } catch {
      // not there: try the next place
    }
  }
  throw new RnodeError(
    ErrorCodes.NATIVE_MISSING,
    `no rnode_native addon for ${process.platform}-${process.arch} (neither ${path.join(PACKAGE_ROOT, 'prebuilds', `${process.platform}-${process.arch}`)} ` +
      `nor a source build in ${path.join(PACKAGE_ROOT, 'native', 'build', 'Release')}); build it from source with ` +
      `"cd ${PACKAGE_ROOT} && npm run install" (needs g++, make and python3; no download), ` +
      'or install a release that ships a prebuild for this platform',
  );
}

export const ADDON_PATH = findAddon();

/** The addon module itself, for the other module that calls into it (the VDDK binding, src/vddk). */
export function loadAddon(): unknown {
  return createRequire(import.meta.url)(ADDON_PATH);
}

function loadBinding(): NativeBinding {
  return loadAddon() as NativeBinding;
}

const binding = loadBinding();

/** Page size assumed for O_DIRECT on regular files (the common logical block size of the backing device). */
export const FILE_DIRECT_ALIGNMENT = 4096;

function isNativeErrorShape(err: unknown): err is Error & { errno: number; code: string; syscall: string; path: string } {
  return err instanceof Error && typeof (err as { errno?: unknown }).errno === 'number' && typeof (err as { code?: unknown }).code === 'string';
}

// Re-created here (after the await) so the error carries the caller's async stack, not an empty native one.
function wrapError(err: unknown): unknown {
  if (!isNativeErrorShape(err)) return err;
  return new NativeIoError(err.message, { errno: err.errno, code: err.code, syscall: err.syscall, path: err.path });
}

function errnoError(code: 'EISDIR' | 'EINVAL', syscall: string, path: string, what: string): NativeIoError {
  return new NativeIoError(`${code}: ${what}, ${syscall} '${path}'`, {
    errno: osConstants.errno[code],
    code,
    syscall,
    path,
  });
}

function checkOffset(name: string, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(`${name} must be a non-negative safe integer, got ${value}`);
  }
}

class RawFile implements RawHandle {
  readonly path: string;
  readonly size: number;
  readonly blockDevice: boolean;
  readonly alignment: number;
  readonly direct: boolean;
  readonly #file: NativeFile;

  constructor(path: string, opened: NativeOpenResult, direct: boolean) {
    this.path = path;
    this.size = opened.size;
    this.blockDevice = opened.type === 'block';
    this.direct = direct;
    this.alignment = !direct ? 1 : this.blockDevice ? opened.logicalBlockSize : FILE_DIRECT_ALIGNMENT;
    this.#file = opened.file;
  }

  async read(buf: Buffer, offset: number, length: number = buf?.byteLength): Promise<number> {
    if (!(buf instanceof Uint8Array)) throw new TypeError('read: buf must be a Buffer or Uint8Array');
    checkOffset('offset', offset);
    if (!Number.isSafeInteger(length) || length < 0 || length > buf.byteLength) {
      throw new RangeError(`read: length must be an integer in [0, ${buf.byteLength}], got ${length}`);
    }
    if (offset + length > Number.MAX_SAFE_INTEGER) throw new RangeError('read: offset + length exceeds 2^53');
    // The buffer address is left to the kernel (EINVAL); offset and length are cheap to check here.
    if (this.direct && (offset % this.alignment !== 0 || length % this.alignment !== 0)) {
      throw new RangeError(`read: direct I/O needs offset and length aligned to ${this.alignment} bytes (offset ${offset}, length ${length})`);
    }
    try {
      return await this.#file.read(buf, offset, length, this.alignment);
    } catch (err) {
      throw wrapError(err);
    }
  }

  async allocatedExtents(start: number, end: number, maxCount: number): Promise<Extent[]> {
    checkOffset('start', start);
    checkOffset('end', end);
    if (end < start) throw new RangeError(`allocatedExtents: end (${end}) is before start (${start})`);
    if (!Number.isSafeInteger(maxCount) || maxCount < 1) {
      throw new RangeError(`allocatedExtents: maxCount must be a positive integer, got ${maxCount}`);
    }
    try {
      return await this.#file.allocatedExtents(start, Math.max(start, Math.min(end, this.size)), maxCount);
    } catch (err) {
      throw wrapError(err);
    }
  }

  lendFd(): { fd: number; release: () => void } | undefined {
    const fd = this.#file.lendFd();
    if (fd < 0) return undefined;
    let lent = true;
    return {
      fd,
      release: () => {
        if (lent) this.#file.giveBackFd();
        lent = false;
      },
    };
  }

  async close(): Promise<void> {
    try {
      await this.#file.close();
    } catch (err) {
      throw wrapError(err);
    }
  }
}

/** Opens a regular file or block device O_RDONLY|O_CLOEXEC (+O_DIRECT). */
export async function openRaw(path: string, opts: RawOpenOptions = {}): Promise<RawHandle> {
  if (typeof path !== 'string' || path.length === 0) throw new TypeError('openRaw: path must be a non-empty string');
  if (path.includes('\0')) throw new TypeError('openRaw: path must not contain NUL bytes');
  const direct = opts.direct ?? false;
  if (typeof direct !== 'boolean') throw new TypeError('openRaw: opts.direct must be a boolean');

  let opened: NativeOpenResult;
  try {
    opened = await binding.open(path, direct);
  } catch (err) {
    throw wrapError(err);
  }
  if (opened.type !== 'file' && opened.type !== 'block') {
    await opened.file.close();
    throw opened.type === 'directory'
      ? errnoError('EISDIR', 'open', path, 'is a directory')
      : errnoError('EINVAL', 'fstat', path, 'not a regular file or block device'); // what fstat said it is
  }
  return new RawFile(path, opened, direct);
}

/** True if every byte of buf is zero. Synchronous, no copy. */
export function isZero(buf: Uint8Array): boolean {
  if (!(buf instanceof Uint8Array)) throw new TypeError('isZero: buf must be a Buffer or Uint8Array');
  return binding.isZero(buf);
}

/**
 * True when buf starts at an address that is a multiple of alignment (a power of two). O_DIRECT needs the address
 * aligned; a view's byteOffset does not say it (sharedAligned() views start at an aligned address, not offset 0).
 */
export function addressAligned(buf: Uint8Array, alignment: number): boolean {
  return binding.alignOffset(buf, alignment) === 0;
}

/** What readFileInto found: the file's size, and the range [start, start + bytesRead) now at the start of into. */
export interface ReadInto {
  size: number;
  /** False: not a regular file (nothing was read). */
  isFile: boolean;
  /** False: the range is longer than into (nothing was read). */
  fits: boolean;
  start: number;
  bytesRead: number;
}

/**
 * Reads [offset, offset + length) of the file at path (clipped at its end; length undefined: to the end) into the
 * start of into: open, fstat, pread and close in one job on the libuv pool. Errors are Node-shaped (code, syscall).
 */
export async function readFileInto(path: string, into: Uint8Array, offset = 0, length?: number): Promise<ReadInto> {
  if (!(into instanceof Uint8Array)) throw new TypeError('readFileInto: into must be a Buffer or Uint8Array');
  checkOffset('offset', offset);
  if (length !== undefined) checkOffset('length', length);
  try {
    return await binding.readFileInto(path, into, offset, length ?? -1);
  } catch (err) {
    throw wrapError(err);
  }
}

/**
 * Writes data at position of the open file descriptor fd in one job on the libuv pool; with block > 0 the blocks
 * of that size that are all zeros are skipped (a sparse file keeps them as holes). Resolves to the bytes written.
 * The caller keeps fd open until this settles.
 */
export async function writeNonZero(fd: number, data: Uint8Array, position: number, block: number): Promise<number> {
  if (!(data instanceof Uint8Array)) throw new TypeError('writeNonZero: data must be a Buffer or Uint8Array');
  if (!Number.isInteger(fd) || fd < 0) throw new RangeError(`writeNonZero: fd must be a descriptor, got ${fd}`);
  checkOffset('position', position);
  checkOffset('block', block);
  try {
    return await binding.writeNonZero(fd, data, position, block);
  } catch (err) {
    throw wrapError(err);
  }
}

/**
 * Like allocAligned, without the zero fill: its pages stay untouched, and not resident, until written. For a buffer
 * whose bytes are all written before any is read, such as a pack being built. Zero-filled (and kept between runs),
 * the mostly empty pack buffers of an agent's runs added ~30 MiB to its resident memory. Its own mapping, with
 * transparent huge pages from 2 MiB up (native buffers.cc says why); alignment is at most a page.
 */
export function allocAlignedUnsafe(size: number, alignment: number): Buffer {
  if (!Number.isSafeInteger(size) || size < 0 || size > bufferConstants.MAX_LENGTH) {
    throw new RangeError(`allocAlignedUnsafe: size must be an integer in [0, ${bufferConstants.MAX_LENGTH}], got ${size}`);
  }
  if (alignment > PAGE || !Number.isInteger(Math.log2(alignment)))
    throw new RangeError(`allocAlignedUnsafe: alignment must be a power of two up to ${PAGE}, got ${alignment}`);
  return binding.allocMapped(size);
}

/** A zero-filled Buffer whose address is aligned to `alignment` (a power of two), for O_DIRECT. Freed by GC. */
export function allocAligned(size: number, alignment: number): Buffer {
  if (!Number.isSafeInteger(size) || size < 0 || size > bufferConstants.MAX_LENGTH) {
    throw new RangeError(`allocAligned: size must be an integer in [0, ${bufferConstants.MAX_LENGTH}], got ${size}`);
  }
  if (!Number.isSafeInteger(alignment) || alignment < 1 || alignment > 2 ** 30 || (alignment & (alignment - 1)) !== 0) {
    throw new RangeError(`allocAligned: alignment must be a power of two up to 2^30, got ${alignment}`);
  }
  try {
    return binding.allocAligned(size, alignment);
  } catch (err) {
    throw wrapError(err);
  }
}

interface NativeWritten {
  size: number;
  ino: string;
  mtimeNs: string;
  direct: boolean;
}

export interface WrittenFile {
  size: number;
  ino: bigint;
  mtimeNs: bigint;
  /** Whether the aligned body went to the device with O_DIRECT (page-aligned data and a filesystem that allows it). */
  direct: boolean;
}

/**
 * Creates `path` (EEXIST if it exists), writes all of data, fdatasyncs when `sync`, and stats it, in one job
 * on the libuv pool. With `direct`, page-aligned data skips the page cache for its whole 4 KiB blocks: only
 * worth it when the caller syncs anyway. On failure the file may exist: the caller removes it.
 */
export async function writeFileExclusive(
  path: string,
  data: Uint8Array,
  opts: { sync: boolean; direct: boolean; mode?: number },
): Promise<WrittenFile> {
  if (!(data instanceof Uint8Array)) throw new TypeError('writeFileExclusive: data must be a Buffer or Uint8Array');
  try {
    const r = await binding.writeFile(path, data, opts.sync, opts.direct, opts.mode ?? 0o644);
    return { size: r.size, ino: BigInt(r.ino), mtimeNs: BigInt(r.mtimeNs), direct: r.direct };
  } catch (err) {
    throw wrapError(err);
  }
}

/**
 * flock(LOCK_EX|LOCK_NB) on the open file fd: true when taken, false when another open file holds it (another
 * process's, or another open of the same file in this one). Never waits. The lock goes with the last fd of that open
 * file, or with the process if it dies.
 */
export function tryLockExclusive(fd: number): boolean {
  if (!Number.isInteger(fd) || fd < 0) throw new RangeError(`tryLockExclusive: fd must be a descriptor, got ${fd}`);
  try {
    return binding.lockExclusive(fd);
  } catch (err) {
    throw wrapError(err);
  }
}

/** Page size: the alignment sharedAligned() gives below a huge page. */
const PAGE = 4096;
/** A transparent huge page (x86-64 and arm64 with 4 KiB pages). */
const HUGE_PAGE = 2 * 1024 * 1024;

/**
 * A zero-filled Buffer over a SharedArrayBuffer, starting on a page boundary. Chunk slots use it: the kernel
 * copies file data in and out of page-aligned memory about 4x cheaper than at the 16-byte alignment
 * ArrayBuffers get (measured here: 1.5 GiB of 1 MiB preads, 0.19 s of CPU against 0.83 s).
 * From 2 MiB up it starts on a huge page and its pages are advised for transparent huge pages: a fresh buffer's
 * first writes fault once per 2 MiB instead of once per 4 KiB (native adviseHugePages has the figures).
 */
export function sharedAligned(size: number): Buffer {
  if (!Number.isSafeInteger(size) || size < 0 || size > bufferConstants.MAX_LENGTH - HUGE_PAGE) {
    throw new RangeError(`sharedAligned: size must be an integer in [0, ${bufferConstants.MAX_LENGTH - HUGE_PAGE}], got ${size}`);
  }
  if (size < HUGE_PAGE) {
    const whole = Buffer.from(new SharedArrayBuffer(size + PAGE));
    const skip = binding.alignOffset(whole, PAGE);
    return whole.subarray(skip, skip + size);
  }
  // Only the huge pages the buffer fills are advised: its tail (a chunk slot's header room past 4 MiB) stays in 4 KiB
  // pages, so writing it does not make a whole 2 MiB page resident.
  const whole = Buffer.from(new SharedArrayBuffer(size + HUGE_PAGE));
  const skip = binding.alignOffset(whole, HUGE_PAGE);
  binding.adviseHugePages(whole.subarray(skip, skip + Math.floor(size / HUGE_PAGE) * HUGE_PAGE));
  return whole.subarray(skip, skip + size);
}

/** The arenas sharedSlice() carves: four huge pages (seven 1 MiB chunk slots with their headers). */
const ARENA_BYTES = 4 * HUGE_PAGE;
let arena: Buffer | undefined;
let arenaUsed = 0;

/**
 * Like sharedAligned(), for the many buffers below a huge page that a process keeps in pools (chunk slots, an
 * export's cached chunks): page-aligned slices of shared arenas on huge pages, so that filling a fresh one faults once
 * per 2 MiB, not 256 times per MiB. A 1.5 GiB recover took 18,000 faults, ~60% of them its slots' (~19 us of CPU
 * each on the 2-vCPU VMs we measure on), and a cold export 30,000. A slice keeps its whole arena alive: for buffers
 * that are reused, not for ones dropped one by one. From 2 MiB up it is sharedAligned().
 */
export function sharedSlice(size: number): Buffer {
  if (size >= HUGE_PAGE) return sharedAligned(size);
  if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`sharedSlice: size must be an integer in [0, ${HUGE_PAGE}), got ${size}`);
  const room = Math.max(PAGE, Math.ceil(size / PAGE) * PAGE);
  if (!arena || arenaUsed + room > arena.length) {
    arena = sharedAligned(ARENA_BYTES);
    arenaUsed = 0;
  }
  const slice = arena.subarray(arenaUsed, arenaUsed + size);
  arenaUsed += room;
  return slice;
}

/** An LZ4 block codec working in place: compress returns the block's length (0: does not fit), decompress -1 on bad input. */
export interface Lz4Block {
  compress(src: Uint8Array, dst: Uint8Array): number;
  decompress(src: Uint8Array, dst: Uint8Array): number;
}

/** BLAKE3 and its keyed hasher (src/native/blake.ts). */
export const { blake3, Blake3Hasher } = loadBlake(binding.glibc) as Pick<Blake, 'blake3' | 'Blake3Hasher'>;

/** The system liblz4 through the addon, or undefined when this machine lacks liblz4.so.1 (lz4-napi is used then). */
export const lz4Block: Lz4Block | undefined = binding.lz4Info().version
  ? { compress: binding.lz4CompressBlock, decompress: binding.lz4DecompressBlock }
  : undefined;

/**
 * memcpy of all of src to the start of dst (which must be at least as long), and memset 0: V8 moves bytes in
 * and out of SharedArrayBuffers (the chunk slots) word by word with relaxed atomics, several times slower.
 */
export const copyBytes: (src: Uint8Array, dst: Uint8Array) => void = binding.copyBytes;
export const zeroBytes: (dst: Uint8Array) => void = binding.zeroBytes;

/**
 * Gives the pages of a buffer from allocAlignedUnsafe back to the system: they read as zero and cost no RSS until
 * written again. Never for other memory (it would zero whatever shares its pages).
 */
export function discardPages(buf: Uint8Array): void {
  try {
    binding.discardPages(buf);
  } catch (err) {
    throw wrapError(err);
  }
}

/**
 * For the agent, which runs jobs for months: buffers of 128 KiB and more are mapped and unmapped on their own, so
 * memory freed between jobs goes back to the system instead of staying in glibc's heaps (flat RSS instead of a slow
 * climb; native/src/buffers.cc). Not for serve: it reuses its receive buffers, and mapping each message's cost its
 * node 12% more CPU over ws:// (1.95 s against 1.73 s for a 1.5 GiB image). False where the allocator is not glibc's.
 */
export const returnLargeFreesToSystem: () => boolean = binding.returnLargeFreesToSystem;

/**
 * Gives the free pages inside the C heaps (every thread's) back to the system: malloc_trim(0). glibc keeps the holes
 * that freed small blocks leave between live ones, so a long-running process's RSS creeps up with them (an agent: heap
 * 5 -> 21 MiB in 40 minutes; one trim gave back 11-17 MiB). A few ms when little is free (70 MiB to give back: ~0.2 s);
 * the agent calls it every 30 s. Returns whether anything was released; false where the allocator is not glibc's.
 */
export const trimNativeHeap: () => boolean = binding.trimNativeHeap;

/**
 * For serve: freed memory at the top of the C heaps is kept for reuse up to `bytes` instead of being handed back to the
 * system at once. A receiving node frees and takes again a buffer for every socket read and message; handed back,
 * each was faulted in anew (twice the page faults and 0.4-1.1 s more CPU on its main thread for a 1.5 GiB ws://
 * replicate, native/src/buffers.cc). False where the allocator is not glibc's.
 */
export const keepFreedHeap: (bytes: number) => boolean = binding.keepFreedHeap;

/** CPU time of the calling thread in ms, where the addon reads it (the codec ops' stage clock). */
export const threadCpuMs: (() => number) | undefined = binding.threadCpuMs;

/** Bytes in a TCP socket's kernel send queue (not yet acknowledged by the peer), or -1 where it cannot be read. */
export function socketSendQueue(fd: number): number {
  return binding.socketSendQueue?.(fd) ?? -1;
}

/** What compresses chunks here, for logs and the agent's hello. */
export const lz4Implementation: string = lz4Block ? `liblz4 ${binding.lz4Info().version}` : `lz4-napi (liblz4: ${binding.lz4Info().error})`;

/** XXH64 of data in place (no copy, shared memory included); the same digests as xxhash-wasm's h64Raw. */
export function nativeXxh64(data: Uint8Array, seed?: bigint): bigint {
  if (!(data instanceof Uint8Array)) throw new TypeError('xxh64: data must be a Buffer or Uint8Array');
  if (seed !== undefined && (typeof seed !== 'bigint' || seed < 0n || seed >= 1n << 64n))
    throw new RangeError('xxh64: seed must be a bigint in [0, 2^64)');
  return binding.xxh64(data, seed);
}

/**
 * XXH3-128 (libxxhash 0.8+, the system's) of one buffer with a seed, written to out[0..16) in xxhsum's byte order:
 * the change hash of a chunk (src/jobs/replicate/change-hashes.ts). Undefined where libxxhash is missing.
 */
export const xxh3: ((data: Uint8Array, seed: bigint, out: Uint8Array) => void) | undefined = binding.xxh3Info().version ? binding.xxh3 : undefined;

/** libxxhash's version, or why it is not used. */
export const xxh3Implementation: string = binding.xxh3Info().version
  ? `libxxhash ${binding.xxh3Info().version}${binding.xxh3Info().dispatch ? ' (CPU dispatch)' : ' (baseline ISA: no _dispatch entry)'}`
  : `none (libxxhash: ${binding.xxh3Info().error})`;

/**
 * Reads chunks of fd, (offset, length) pairs in `chunks`, and writes each one's xxh3 to out at 16 x its position: one
 * job on the libuv pool, so runs in flight at once hash on as many cores. Needs xxh3 (check it first).
 */
export function changeHashes(fd: number, chunks: Float64Array, seed: bigint, out: Uint8Array): Promise<ChangeHashRun> {
  return binding.changeHashes(fd, chunks, seed, out);
}
