// Writes a disk as it was at a point, byte-exact and sparse where the data is zero. Every chunk is verified
// on the way; the output only gets its final name once every byte is written and synced.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { EncryptionKey } from '../crypto/keys.js';
import { ErrorCodes, RnodeError } from '../errors.js';
import { validateDiskId } from '../format/layout.js';
import { isZeroEntry } from '../format/table.js';
import { isZero } from '../native/index.js';
import type { ObjectStore } from '../store/types.js';
import { forEachBounded, readChunk } from './chunk-reader.js';
import { BufferPool } from '../pipeline/buffer-pool.js';
import { newReadSlot, withWorkerKey } from '../pipeline/chunk-codec.js';
import { requireChainSeal } from './encryption.js';
import { loadChain, resolvePoint } from './points.js';
import { chainView } from './view.js';

export interface RecoverOptions {
  store: ObjectStore;
  disk: string;
  point?: string;
  out: string;
  /** The key of an encrypted disk (required for one, refused for an unencrypted one). */
  encryption?: EncryptionKey;
  concurrency?: number;
  onProgress?: (p: { bytesWritten: number; chunksDone: number; diskSize: number }) => void;
  /** Stops before the next chunk (those in flight finish); the partial output is removed, as on any failure. */
  signal?: AbortSignal;
}

export interface RecoverResult {
  disk: string;
  point: number;
  out: string;
  diskSize: number;
  chunkSize: number;
  chunksRestored: number;
  bytesFetched: number;
  bytesWritten: number;
  seconds: number;
}

/** Holes are punched at this granularity: runs of zero blocks inside a chunk are not written. */
const SPARSE_BLOCK = 4096;

export async function recover(opts: RecoverOptions): Promise<RecoverResult> {
  const started = performance.now();
  const { store } = opts;
  const disk = validateDiskId(opts.disk);
  const seq = await resolvePoint(store, disk, opts.point);
  const chain = await loadChain(store, disk, seq);
  const { diskSize, chunkSize } = chain[0];
  // Before the output exists: a missing or wrong key leaves nothing behind.
  const seal = requireChainSeal(chain, opts.encryption, disk);

  const target = await openOutput(opts.out, diskSize);
  let bytesFetched = 0;
  let bytesWritten = 0;
  let chunksRestored = 0;
  try {
    const nonZero = async function* () {
      for await (const e of chainView(store, chain)) if (!isZeroEntry(e)) yield e;
    };
    const concurrency = opts.concurrency ?? 8;
    const slots = new BufferPool(concurrency, () => newReadSlot(chunkSize));
    await withWorkerKey(opts.encryption, () => forEachBounded(nonZero(), concurrency, async (e) => {
      if (opts.signal?.aborted) throw new RnodeError(ErrorCodes.CANCELLED, `recovery was cancelled; ${target.tmp ? 'no output was left behind' : `${opts.out} holds part of the point`}`);
      const slot = await slots.acquire();
      try {
        const plain = await readChunk(store, disk, chunkSize, e, seq, slot, seal);
        bytesFetched += e.storedLength;
        // Not `bytesWritten += await ...`: that reads the total before the await and loses concurrent updates.
        const written = await writeSparse(target.fh, plain, e.index * chunkSize, target.sparse);
        bytesWritten += written;
      } finally {
        slots.release(slot);
      }
      chunksRestored++;
      opts.onProgress?.({ bytesWritten, chunksDone: chunksRestored, diskSize });
    }));
    await target.fh.sync();
    await target.fh.close();
    if (target.tmp) await fsp.rename(target.tmp, opts.out);
  } catch (err) {
    await target.fh.close().catch(() => undefined);
    // A partial file must never look like a finished restore.
    if (target.tmp) await fsp.rm(target.tmp, { force: true });
    throw outputError(err, opts.out);
  }
  return {
    disk, point: seq, out: opts.out, diskSize, chunkSize, chunksRestored, bytesFetched, bytesWritten,
    seconds: (performance.now() - started) / 1000,
  };
}

async function openOutput(out: string, diskSize: number): Promise<{ fh: fsp.FileHandle; tmp?: string; sparse: boolean }> {
  let st: fs.Stats | undefined;
  try {
    st = await fsp.stat(out);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw outputError(err, out);
  }
  try {
    if (st?.isBlockDevice()) {
      // A device cannot be renamed into place, and its old bytes are not zeros: write every byte.
      const fh = await fsp.open(out, 'r+');
      return { fh, sparse: false };
    }
    if (st?.isDirectory()) {
      throw new RnodeError(ErrorCodes.USAGE, `--out ${out} is a directory; give a file or block device path`);
    }
    const tmp = path.join(path.dirname(out), `.${path.basename(out)}.rnode-partial`);
    const fh = await fsp.open(tmp, 'w');
    await fh.truncate(diskSize);
    return { fh, tmp, sparse: true };
  } catch (err) {
    throw outputError(err, out);
  }
}

async function writeSparse(fh: fsp.FileHandle, plain: Buffer, position: number, sparse: boolean): Promise<number> {
  if (!sparse) {
    await writeAll(fh, plain, position);
    return plain.length;
  }
  let written = 0;
  let runStart = -1;
  const flush = async (end: number) => {
    await writeAll(fh, plain.subarray(runStart, end), position + runStart);
    written += end - runStart;
    runStart = -1;
  };
  for (let o = 0; o < plain.length; o += SPARSE_BLOCK) {
    const zero = isZero(plain.subarray(o, Math.min(o + SPARSE_BLOCK, plain.length)));
    if (!zero && runStart < 0) runStart = o;
    else if (zero && runStart >= 0) await flush(o);
  }
  if (runStart >= 0) await flush(plain.length);
  return written;
}

async function writeAll(fh: fsp.FileHandle, buf: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesWritten } = await fh.write(buf, done, buf.length - done, position + done);
    done += bytesWritten;
  }
}

function outputError(err: unknown, out: string): unknown {
  if (err instanceof RnodeError) return err;
  const e = err as NodeJS.ErrnoException;
  if (e && typeof e.code === 'string') {
    return new RnodeError(ErrorCodes.OUTPUT_IO, `writing ${out} failed: ${e.code}; check the path, its permissions and free space`, { cause: err });
  }
  return err;
}
