// Helpers for the core tests: temp dirs, deterministic disk images (random, text, zeros, holes), byte-exact
// comparison by size + SHA-256, and one-call replicate/recover through the library on an FsStore.
import { createCipheriv, createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Test } from 'tap';
import { FsStore } from '../../src/store/index.js';
import type { ObjectStore } from '../../src/store/index.js';
import { openSource, type BlockSource } from '../../src/source/index.js';
import { delegatingSource } from '../../src/source/types.js';
import { replicate, type ReplicateOptions, type ReplicateResult } from '../../src/jobs/replicate.js';
import { recover, type RecoverOptions, type RecoverResult } from '../../src/jobs/restore.js';
import { codecWorkers } from '../../src/pipeline/codec-workers.js';
import type { EncryptionKey } from '../../src/crypto/keys.js';
import type { ChunkEntry } from '../../src/format/table.js';
import { Domain } from '../../src/repository/domain.js';
import { ChunkIndex } from '../../src/repository/index-file.js';
import { r2 } from '../../src/repository/names.js';
import { loadPoint } from '../../src/repository/points.js';
import { tableEntries } from '../../src/repository/view.js';

export const KiB = 1024;
export const MiB = 1024 * 1024;

type Teardown = Pick<Test, 'teardown'>;

/** A fresh temp dir removed when the test ends. */
export function tmpDir(t: Teardown, tag = 'core'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `rnode-${tag}-`));
  // Retries: a process the test started (an agent writing its state) may still add a file while the folder goes.
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 50 }));
  return dir;
}

/** Deterministic incompressible bytes (AES-CTR keystream of the seed). */
export function randomData(length: number, seed: number): Buffer {
  const key = createHash('sha256').update(`rnode-test-${seed}`).digest().subarray(0, 16);
  return createCipheriv('aes-128-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(length));
}

/** Deterministic compressible text. */
export function textData(length: number, seed: number): Buffer {
  const words = ['chunk', 'point', 'store', 'replica', 'disk', 'extent', 'manifest', 'verify', 'lz4', `s${seed}`];
  const parts: string[] = [];
  let n = 0;
  for (let i = 0; n < length; i++) {
    const w = words[(i * 7 + seed) % words.length] + (i % 13 === 0 ? '\n' : ' ');
    parts.push(w);
    n += w.length;
  }
  return Buffer.from(parts.join(''), 'latin1').subarray(0, length);
}

/** Writes a whole image of random bytes. */
export function writeRandomImage(file: string, size: number, seed = 1): void {
  fs.writeFileSync(file, randomData(size, seed));
}

/** Creates a file of `size` bytes that is one hole (no block allocated). */
export function writeHoleImage(file: string, size: number): void {
  const fd = fs.openSync(file, 'w');
  try {
    fs.ftruncateSync(fd, size);
  } finally {
    fs.closeSync(fd);
  }
}

/** Overwrites bytes at an offset without truncating. */
export function writeAt(file: string, offset: number, data: Uint8Array): void {
  const fd = fs.openSync(file, 'r+');
  try {
    let done = 0;
    while (done < data.length) done += fs.writeSync(fd, data, done, data.length - done, offset + done);
  } finally {
    fs.closeSync(fd);
  }
}

/** Flips one byte (xor 0xff) of a file in place. */
export function flipByte(file: string, offset: number): void {
  const b = fs.readFileSync(file);
  if (offset >= b.length) throw new Error(`flipByte: offset ${offset} beyond ${file} (${b.length} bytes)`);
  b[offset] ^= 0xff;
  fs.writeFileSync(file, b);
}

export function sha256File(file: string): string {
  const h = createHash('sha256');
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.alloc(4 * MiB);
    let pos = 0;
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, pos);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
      pos += n;
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

/** Size and digest of a file as it is now, to compare a restore against later. */
export interface Fingerprint {
  size: number;
  sha256: string;
}
export function fingerprint(file: string): Fingerprint {
  return { size: fs.statSync(file).size, sha256: sha256File(file) };
}

/** First offset where two files differ (-1 when equal), for failure messages. */
export function firstDifference(a: string, b: string): number {
  const x = fs.readFileSync(a);
  const y = fs.readFileSync(b);
  const n = Math.min(x.length, y.length);
  for (let i = 0; i < n; i++) if (x[i] !== y[i]) return i;
  return x.length === y.length ? -1 : n;
}

/** Bytes the filesystem has allocated for a file (st_blocks is in 512-byte units). */
export function allocatedBytes(file: string): number {
  return fs.statSync(file).blocks * 512;
}

/**
 * Every file under dir, as '/'-joined paths relative to it, sorted. Missing dir: []. An fs store's lock folder
 * (.rnode-tmp.locks: the empty files ifMatch puts lock, never objects) is left out; temp files are listed.
 */
export function listFiles(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  const out: string[] = [];
  const walk = (d: string, rel: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory() && e.name === '.rnode-tmp.locks') continue;
      if (e.isDirectory()) walk(path.join(d, e.name), r);
      else out.push(r);
    }
  };
  walk(dir, '');
  return out.sort();
}

/** An FsStore without fsync: the tests do not crash the machine, only processes. */
export function fsStore(dir: string): FsStore {
  return new FsStore(dir, { fsync: false });
}

/** Replicates an image file as one point through the library. */
export async function snap(
  store: ObjectStore,
  image: string,
  disk: string,
  opts: Partial<Omit<ReplicateOptions, 'store' | 'source' | 'disk'>> & { wrapSource?: (s: BlockSource) => BlockSource } = {},
): Promise<ReplicateResult> {
  const { wrapSource, ...rest } = opts;
  const raw = await openSource(image);
  const source = wrapSource ? wrapSource(raw) : raw;
  try {
    return await replicate({ store, source, disk, ...rest });
  } finally {
    await raw.close();
  }
}

/**
 * A store folder (under a fresh tmpDir) and point(disk, seed, size): replicates `size` random bytes of `seed` (256 KiB
 * by default) as the disk's next point, in 64 KiB chunks, through the library.
 */
export function randomPoints(
  t: Teardown,
  tag: string,
): { dir: string; storeDir: string; image: string; point(disk: string, seed: number, size?: number): Promise<ReplicateResult> } {
  const dir = tmpDir(t, tag);
  const storeDir = path.join(dir, 'store');
  const image = path.join(dir, 'disk.img');
  const point = (disk: string, seed: number, size = 256 * KiB) => {
    fs.writeFileSync(image, randomData(size, seed));
    return snap(fsStore(storeDir), image, disk, { chunkSize: 64 * KiB });
  };
  return { dir, storeDir, image, point };
}

/** Restores a point (number or 'latest') to out through the library (opts: e.g. the encryption key). */
export function restore(
  store: ObjectStore,
  disk: string,
  point: number | string,
  out: string,
  opts: Partial<Pick<RecoverOptions, 'encryption'>> = {},
): Promise<RecoverResult> {
  return recover({ store, disk, point: String(point), out, ...opts });
}

/**
 * 128 chunks of `chunk` bytes and a short last one (1234 bytes): 40 random, 20 text, 20 written zeros, a 20-chunk hole,
 * then random to the end. Returns the image's size.
 */
export function mixedChunkImage(file: string, chunk: number): number {
  const size = 128 * chunk + 1234;
  writeHoleImage(file, size);
  writeAt(file, 0, randomData(40 * chunk, 1));
  writeAt(file, 40 * chunk, textData(20 * chunk, 2));
  writeAt(file, 60 * chunk, Buffer.alloc(20 * chunk));
  writeAt(file, 100 * chunk, randomData(28 * chunk + 1234, 3));
  return size;
}

/**
 * Five chunks of a mixedChunkImage changed, one of each kind: one byte flipped (random), text turned to zeros, zeros
 * and the hole turned to data, and the short last chunk. Returns how many chunks changed.
 */
export function changeFiveChunks(file: string, chunk: number, size: number): number {
  writeAt(file, 3 * chunk + 17, Buffer.from([fs.readFileSync(file).readUInt8(3 * chunk + 17) ^ 0xff]));
  writeAt(file, 45 * chunk, Buffer.alloc(chunk));
  writeAt(file, 65 * chunk + 100, randomData(1000, 4));
  writeAt(file, 85 * chunk, textData(chunk, 5));
  writeAt(file, size - 10, randomData(10, 6));
  return 5;
}

/**
 * A BlockSource wrapper that counts the bytes actually read from the underlying source: through read() (`reads`
 * calls), and by the codec workers through its lent fd (`elsewhere` bytes: an incremental's scan, a full point).
 */
export function countingSource(inner: BlockSource): BlockSource & { bytes: number; reads: number; elsewhere: number } {
  const c = delegatingSource(inner, {
    bytes: 0,
    reads: 0,
    elsewhere: 0,
    async read(offset: number, buf: Buffer, length: number) {
      const n = await inner.read(offset, buf, length);
      c.bytes += n;
      c.reads++;
      return n;
    },
    lendFd: () => inner.lendFd?.(),
    readElsewhere(bytes: number) {
      c.bytes += bytes;
      c.elsewhere += bytes;
      inner.readElsewhere?.(bytes);
    },
  });
  return c;
}

type Asserts = Pick<Test, 'equal' | 'teardown'>;

/** Asserts that file holds exactly the bytes fingerprinted in `want` (size and SHA-256; first diff offset on failure). */
export function assertSameBytes(t: Asserts, file: string, want: Fingerprint, what: string, original?: string): boolean {
  const got = fingerprint(file);
  const ok = t.equal(got.size, want.size, `${what}: size`) && t.equal(got.sha256, want.sha256, `${what}: SHA-256 of every byte`);
  if (!ok && original && fs.existsSync(original)) {
    t.equal(firstDifference(file, original), -1, `${what}: first differing offset`);
  }
  return ok;
}

/** Restores a point into dir and asserts it is byte-exact; returns the restored path. */
export async function expectRestore(
  t: Asserts,
  store: ObjectStore,
  disk: string,
  point: number | string,
  want: Fingerprint,
  dir: string,
  what = `point ${point}`,
  opts: Partial<Pick<RecoverOptions, 'encryption'>> = {},
): Promise<string> {
  const out = path.join(dir, `restored-${disk}-${point}-${Math.random().toString(36).slice(2, 8)}.img`);
  await restore(store, disk, point, out, opts);
  assertSameBytes(t, out, want, `${what} restores byte-exact`);
  return out;
}

/**
 * Stops the process-wide codec worker threads when the test file ends, so that a worker kept alive by mistake
 * (as happened when a 'message' listener was added after unref()) cannot stall a test file until tap's
 * timeout; test/core/cli.test.ts checks separately that the binary exits on its own.
 */
export function stopCodecWorkersAtEnd(t: Teardown): void {
  t.teardown(() => codecWorkers().close());
}

/**
 * Where chunk `index` of point `point` is stored in a repository v2 fs store: its pack file and the blob's byte range
 * there (found through the point's table and the domain's index objects, as a reader does).
 */
export async function blobPlace(
  storeDir: string,
  disk: string,
  point: number,
  index: number,
  key?: EncryptionKey,
): Promise<{ file: string; offset: number; length: number; packId: string }> {
  const store = fsStore(storeDir);
  const m = await loadPoint(store, disk, point, key);
  let found: ChunkEntry | undefined;
  for await (const e of tableEntries(store, m, key)) if (e.index === index) found = e;
  if (!found?.id) throw new Error(`point ${point} of disk ${disk} has no v2 record of chunk ${index}`);
  const domain = Domain.of(key);
  const [l] = (await ChunkIndex.load(store, domain)).lookup(found.id);
  if (!l) throw new Error(`chunk ${index} is in no index`);
  return { file: path.join(storeDir, r2.pack(domain.name, l.packId)), offset: l.entry.offset, length: l.entry.length, packId: l.packId };
}

/** Pack files of an fs store (every domain). */
export function packFiles(storeDir: string): string[] {
  return listFiles(path.join(storeDir, 'r2'))
    .filter((f) => f.includes('/packs/'))
    .map((f) => path.join(storeDir, 'r2', f));
}

/** v2 point manifests of a plain-domain disk in an fs store, as file names. */
export function v2PointFiles(storeDir: string, disk: string): string[] {
  return listFiles(path.join(storeDir, 'r2', 'plain', 'disks', disk, 'points'));
}
