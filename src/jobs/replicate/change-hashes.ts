// Change hashes: an incremental point from a source without change tracking reads the whole disk to find the few
// chunks that changed. The keyed BLAKE3 of every chunk (its id) costs several times the read; XXH3-128 (libxxhash)
// runs at memory speed. So this node keeps, for each disk of each store it writes, the XXH3-128 of every chunk of
// the last point it committed, in a local cache file. The next incremental hashes each chunk with XXH3 and sends on
// only those whose hash differs from the cache's or is not known; the pipeline then takes their ids as before and
// compares those with the parent's.
//
// The cache is a hint, never the record: the point's table is. A cache file is bound to one committed point (its
// fingerprint: disk, number, creation time and table segment digests) and to the domain's key (the seed); a missing,
// stale, foreign or damaged file, or a damaged block of one, only makes a run read those chunks through the pipeline.
// A chunk is taken as unchanged on a cache hit only when its 128-bit hash equals the one the parent's run took of the
// bytes it stored.
//
// File: header (HEADER_BYTES), then blocks of BLOCK_ENTRIES entries of 16 bytes (the last block shorter), each
// followed by the xxh64 of its entries seeded with the block's number. An all-zero entry is "not known".
//   "RNCH" | u8 version | 3 reserved | u32 chunk size | u32 reserved | u64 disk size | u64 chunk count
//   | seed check (16: xxh3 of SEED_CHECK under the seed) | point fingerprint (32) | u64 xxh64 of the header before it
import { randomBytes } from 'node:crypto';
import { constants as fsConstants, type Stats } from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { PointManifest } from '../../format/manifest.js';
import { Blake3Hasher, blake3, nativeXxh64 as xxh64, xxh3 } from '../../native/index.js';
import type { ChunkGrid } from '../../pipeline/grid.js';
import type { Domain } from '../../repository/domain.js';
import { makeDirs } from '../../store/fs/dirs.js';

export const CHANGE_HASH_BYTES = 16;
const MAGIC = Buffer.from('RNCH', 'latin1');
const VERSION = 1;
const HEADER_BYTES = 96;
const HEADER_SUM_AT = 88;
const BLOCK_ENTRIES = 4096;
const BLOCK_BYTES = BLOCK_ENTRIES * CHANGE_HASH_BYTES;
const SEED_CHECK = Buffer.from('rnode change hashes');

/** Where a disk's change hashes live and what they are taken with. */
export interface ChangeHashPlace {
  file: string;
  seed: bigint;
  grid: ChunkGrid;
}

/** True where this process can take change hashes (libxxhash 0.8+ loaded). */
export function changeHashesAvailable(): boolean {
  return xxh3 !== undefined;
}

/**
 * The cache file of a disk of a store under dir, and its seed: a keyed derivation from the domain's chunk-id key, so
 * a file taken under one key is never read under another (its seed check differs).
 */
export function changeHashPlace(dir: string, storeLocation: string, domain: Domain, disk: string, grid: ChunkGrid): ChangeHashPlace {
  const name = blake3(Buffer.from(`${storeLocation}\0${domain.name}\0${disk}`))
    .toString('hex')
    .slice(0, 32);
  const seed = Blake3Hasher.newKeyed(domain.idKey).update(Buffer.from('rnode change-hash seed')).digestBuffer().readBigUInt64LE(0);
  return { file: path.join(dir, 'change-hashes', `${name}.rnch`), seed, grid };
}

/**
 * The temp files of this cache file that runs killed before their finish() left (one per kill, for good). A run
 * holds its disk's lease, so no other run of this node writes one of these meanwhile.
 */
async function removeStaleTemps(file: string): Promise<void> {
  const dir = path.dirname(file);
  const stale = new RegExp(`^${path.basename(file).replace(/\./g, '\\.')}\\.[0-9a-f]{12}\\.tmp$`);
  for (const name of await fsp.readdir(dir)) if (stale.test(name)) await fsp.rm(path.join(dir, name), { force: true });
}

/** A regular file owned by this process's user that neither its group nor others may write. */
function isOwnPrivateFile(st: Stats): boolean {
  return st.isFile() && st.uid === process.geteuid?.() && (st.mode & 0o022) === 0;
}

/** What binds a cache file to one committed point: its manifest's place, time and table. */
export function pointFingerprint(m: PointManifest): Buffer {
  const segments = m.table.segments.map((s) => s.digest ?? `${s.first}-${s.last}-${s.records}`).join(',');
  return blake3(Buffer.from(`${m.disk}\0${m.point}\0${m.createdAt}\0${m.diskSize}\0${m.chunkSize}\0${m.table.generation}\0${segments}`));
}

/** The hash a chunk of `length` zero bytes has (zero chunks are often not read at all). */
export function zeroChunkHash(seed: bigint, length: number): Buffer {
  // A scan asks once per chunk, nearly always for the same seed and length: no key string for that.
  if (seed === last.seed && length === last.length) return last.hash;
  const key = `${seed}:${length}`;
  let h = zeroHashes.get(key);
  if (!h) {
    h = Buffer.alloc(CHANGE_HASH_BYTES);
    xxh3!(Buffer.alloc(length), seed, h);
    // A run asks for two lengths (its chunks and its last one); a node runs few domains.
    if (zeroHashes.size > 64) zeroHashes.clear();
    zeroHashes.set(key, h);
  }
  last = { seed, length, hash: h };
  return h;
}
const zeroHashes = new Map<string, Buffer>();
let last: { seed: bigint; length: number; hash: Buffer } = { seed: -1n, length: -1, hash: Buffer.alloc(0) };

function seedCheck(seed: bigint): Buffer {
  const h = Buffer.alloc(CHANGE_HASH_BYTES);
  xxh3!(SEED_CHECK, seed, h);
  return h;
}

function header(place: ChangeHashPlace, fingerprint: Buffer): Buffer {
  const h = Buffer.alloc(HEADER_BYTES);
  MAGIC.copy(h, 0);
  h.writeUInt8(VERSION, 4);
  h.writeUInt32LE(place.grid.chunkSize, 8);
  h.writeBigUInt64LE(BigInt(place.grid.diskSize), 16);
  h.writeBigUInt64LE(BigInt(place.grid.count), 24);
  seedCheck(place.seed).copy(h, 32);
  fingerprint.copy(h, 48);
  h.writeBigUInt64LE(xxh64(h.subarray(0, HEADER_SUM_AT)), HEADER_SUM_AT);
  return h;
}

const blockCount = (count: number) => Math.ceil(count / BLOCK_ENTRIES);
const entriesIn = (count: number, block: number) => Math.min(BLOCK_ENTRIES, count - block * BLOCK_ENTRIES);
const blockOffset = (block: number) => HEADER_BYTES + block * (BLOCK_BYTES + 8);
const isUnknown = (e: Uint8Array) => e.every((x) => x === 0);

/**
 * The change hashes of one committed point, read block by block as a scan asks for them in index order (the memory
 * is one block). get() answers undefined for an entry not known or in a damaged block.
 */
export class ChangeHashReader {
  private blockNo = -1;
  /** A block is being read: peek() cannot answer yet. */
  private reading = false;
  private entries: Buffer | undefined;

  private constructor(
    private readonly fh: fsp.FileHandle,
    private readonly count: number,
  ) {}

  /**
   * The file of `place` when it holds the hashes of the point `parent` on this grid; undefined otherwise. Only a
   * regular file of this user's that no one else may write is read: the cache decides which chunks a run skips, so
   * a file someone else wrote (a shared or world-writable cache folder) could have a changed chunk recorded as
   * unchanged; a FIFO put there hung the run in open(), past SIGTERM (a libuv thread stuck in open is joined at exit).
   */
  static async open(place: ChangeHashPlace, parent: PointManifest): Promise<ChangeHashReader | undefined> {
    let fh: fsp.FileHandle | undefined;
    try {
      fh = await fsp.open(place.file, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK | fsConstants.O_NOFOLLOW);
      if (!isOwnPrivateFile(await fh.stat())) return undefined;
      const h = Buffer.alloc(HEADER_BYTES);
      const { bytesRead } = await fh.read(h, 0, HEADER_BYTES, 0);
      const expected = header(place, pointFingerprint(parent));
      if (bytesRead === HEADER_BYTES && h.equals(expected)) {
        const r = new ChangeHashReader(fh, place.grid.count);
        fh = undefined;
        return r;
      }
    } catch {
      // no cache, or unreadable: the scan takes ids
    } finally {
      await fh?.close().catch(() => undefined);
    }
    return undefined;
  }

  /** Entry `index`, or undefined when not known (never stored, or its block is damaged). Indexes mostly ascend. */
  async get(index: number): Promise<Buffer | undefined> {
    if (index < 0 || index >= this.count) return undefined;
    const entries = await this.block(Math.floor(index / BLOCK_ENTRIES));
    if (!entries) return undefined;
    const at = (index % BLOCK_ENTRIES) * CHANGE_HASH_BYTES;
    const e = entries.subarray(at, at + CHANGE_HASH_BYTES);
    return isUnknown(e) ? undefined : e;
  }

  /**
   * get() without a trip through the event loop when entry `index` is in the block already read: the entry, or
   * undefined when not known; null when its block is not the one read (then get() reads it).
   */
  peek(index: number): Buffer | undefined | null {
    if (index < 0 || index >= this.count) return undefined;
    if (Math.floor(index / BLOCK_ENTRIES) !== this.blockNo || this.reading) return null;
    if (!this.entries) return undefined;
    const at = (index % BLOCK_ENTRIES) * CHANGE_HASH_BYTES;
    const e = this.entries.subarray(at, at + CHANGE_HASH_BYTES);
    return isUnknown(e) ? undefined : e;
  }

  /** The entries of block b when its checksum holds. */
  async block(b: number): Promise<Buffer | undefined> {
    if (b !== this.blockNo) {
      this.blockNo = b;
      this.entries = undefined;
      const n = entriesIn(this.count, b) * CHANGE_HASH_BYTES;
      if (n <= 0) return undefined;
      const buf = Buffer.alloc(n + 8);
      this.reading = true;
      try {
        const { bytesRead } = await this.fh.read(buf, 0, buf.length, blockOffset(b));
        const entries = buf.subarray(0, n);
        if (bytesRead === buf.length && xxh64(entries, BigInt(b)) === buf.readBigUInt64LE(n)) this.entries = entries;
      } catch {
        // unreadable: not known
      } finally {
        this.reading = false;
      }
    }
    return this.entries;
  }

  async close(): Promise<void> {
    await this.fh.close().catch(() => undefined);
  }
}

/**
 * The change hashes of the point a run writes, taken as its chunks settle in index order and written to a temp file
 * beside the cache block by block; finish() binds it to the committed manifest and renames it into place. A chunk the
 * run never settles is, by `unset`, a zero chunk (a scan's unallocated chunk) or the parent's (a tracked source's
 * unchanged chunk; not known without the parent's hashes). Nothing here fails the run: a write that fails leaves no
 * cache, and the next scan takes ids.
 */
export class ChangeHashWriter {
  private blockNo = 0;
  /** The current block's entries and which of them the run set; undefined until a chunk of the block settles. */
  private entries: Buffer | undefined;
  private setMask: Uint8Array | undefined;
  private lastIndex = -1;
  private failed = false;
  /** Why no cache file will come of this run: the first error of the folder, a write or the rename. */
  private error: unknown;
  private chain: Promise<void>;
  private readonly tmp: string;
  private fh: fsp.FileHandle | undefined;

  constructor(
    private readonly place: ChangeHashPlace,
    /** What a chunk the run does not settle holds: zeros, or the parent's data (its own reader: the scan has one). */
    private readonly unset: 'zero' | ChangeHashReader | undefined,
  ) {
    this.tmp = `${place.file}.${randomBytes(6).toString('hex')}.tmp`;
    const tmp = this.tmp;
    this.chain = (async () => {
      await makeDirs(path.dirname(place.file), 0o700); // not Node's recursive mkdir: it spins forever under /proc
      await removeStaleTemps(place.file);
      this.fh = await fsp.open(tmp, 'wx', 0o600);
    })().catch((err: unknown) => this.fail(err));
  }

  /** Chunk `index` settled with this hash (undefined: not known). In ascending index order. */
  put(index: number, hash: Uint8Array | undefined): void {
    if (this.failed || index >= this.place.grid.count) return;
    if (index <= this.lastIndex) throw new Error(`change hash of chunk ${index} after chunk ${this.lastIndex}`);
    this.lastIndex = index;
    const b = Math.floor(index / BLOCK_ENTRIES);
    while (this.blockNo < b) this.flush();
    const i = index - b * BLOCK_ENTRIES;
    const n = entriesIn(this.place.grid.count, b);
    this.entries ??= Buffer.alloc(n * CHANGE_HASH_BYTES);
    this.setMask ??= new Uint8Array(n);
    this.setMask[i] = 1;
    if (hash) this.entries.set(hash.subarray(0, CHANGE_HASH_BYTES), i * CHANGE_HASH_BYTES);
  }

  /**
   * Writes the current block (unset entries from the parent's, or a zero chunk's) and starts the next. A block no
   * chunk of the run settled in gets its memory only when its turn to be written comes: a tracked run that skips most
   * of a large disk queues no buffers for it.
   */
  private flush(): void {
    const b = this.blockNo;
    const held = this.entries && this.setMask ? { entries: this.entries, setMask: this.setMask } : undefined;
    this.chain = this.chain.then(async () => {
      if (this.failed || !this.fh) return;
      const n = entriesIn(this.place.grid.count, b);
      if (!held && this.unset === 'zero') {
        // No chunk of this block was read (a hole of a sparse disk): every entry is a zero chunk's, one fill. Per entry,
        // a 16 TiB sparse disk's cache (64 KiB chunks: 268 million entries) took over a minute after its commit.
        await this.fh.writev(this.zeroBlock(b, n), blockOffset(b));
        return;
      }
      const { entries, setMask } = held ?? { entries: Buffer.alloc(n * CHANGE_HASH_BYTES), setMask: new Uint8Array(n) };
      if (setMask.some((s) => s === 0) && this.unset) {
        const from = this.unset === 'zero' ? undefined : await this.unset.block(b);
        const { grid, seed } = this.place;
        for (let i = 0; i < setMask.length; i++) {
          if (setMask[i] !== 0) continue;
          if (from) from.copy(entries, i * CHANGE_HASH_BYTES, i * CHANGE_HASH_BYTES, (i + 1) * CHANGE_HASH_BYTES);
          else if (this.unset === 'zero') zeroChunkHash(seed, grid.length(b * BLOCK_ENTRIES + i)).copy(entries, i * CHANGE_HASH_BYTES);
        }
      }
      const sum = Buffer.alloc(8);
      sum.writeBigUInt64LE(xxh64(entries, BigInt(b)));
      await this.fh.writev([entries, sum], blockOffset(b));
    });
    this.chain.catch((err: unknown) => this.fail(err));
    this.blockNo++;
    this.entries = undefined;
    this.setMask = undefined;
  }

  /** Block b of n entries, all of zero chunks, and its checksum. */
  private zeroBlock(b: number, n: number): Buffer[] {
    const { grid, seed } = this.place;
    const entries = Buffer.allocUnsafe(n * CHANGE_HASH_BYTES).fill(zeroChunkHash(seed, grid.chunkSize));
    const last = b * BLOCK_ENTRIES + n - 1;
    if (grid.length(last) !== grid.chunkSize) zeroChunkHash(seed, grid.length(last)).copy(entries, (n - 1) * CHANGE_HASH_BYTES);
    const sum = Buffer.alloc(8);
    sum.writeBigUInt64LE(xxh64(entries, BigInt(b)));
    return [entries, sum];
  }

  /** After the commit of `manifest`: the rest of the blocks, the header, then the rename. Never throws. */
  async finish(manifest: PointManifest): Promise<boolean> {
    try {
      while (this.blockNo < blockCount(this.place.grid.count)) {
        this.flush();
        await this.chain;
      }
      if (this.failed || !this.fh) throw new Error('not written');
      await this.fh.write(header(this.place, pointFingerprint(manifest)), 0, HEADER_BYTES, 0);
      await this.fh.close();
      this.fh = undefined;
      await fsp.rename(this.tmp, this.place.file);
      return true;
    } catch (err) {
      this.error ??= err;
      await this.abort();
      return false;
    }
  }

  /** After finish() returned false: why (the caller says so; nothing here does). */
  get failure(): unknown {
    return this.error;
  }

  private fail(err: unknown): void {
    this.failed = true;
    this.error ??= err;
  }

  /** The run did not commit: no cache from it (the parent's, if any, stays). Never throws. */
  async abort(): Promise<void> {
    this.failed = true;
    await this.chain.catch(() => undefined);
    await this.fh?.close().catch(() => undefined);
    this.fh = undefined;
    await fsp.rm(this.tmp, { force: true }).catch(() => undefined);
  }
}
