// Checks that points are restorable without writing anything: manifests, chains, tables and every chunk
// they reference (digests included). Reports every problem it finds rather than stopping at the first.
// An encrypted point is checked in full with its key; without it, only what the stored bytes promise (headers
// and payload xxh64) is checked, and the result says so.
import type { EncryptionKey } from '../crypto/keys.js';
import { RnodeError } from '../errors.js';
import { validateDiskId } from '../repository/names.js';
import type { PointManifest } from '../format/manifest.js';
import { isZeroEntry, type ChunkEntry } from '../format/table.js';
import type { ObjectStore } from '../store/types.js';
import { forEachBounded } from '../pipeline/bounded.js';
import { checkStoredChunk, readChunk } from '../pipeline/chunk-reader.js';
import { BufferPool } from '../pipeline/buffer-pool.js';
import { newReadSlot, recycleReadSlot, withWorkerKey } from '../pipeline/chunk-codec.js';
import { chainKey, checkChainAuthenticity, readDiskMarker, type DiskMarker } from '../repository/encryption.js';
import { explainNoPoints, listPointSeqs, loadChain, loadPoint, resolvePoint } from '../repository/points.js';
import { chainViewAcrossRebase, tableEntries } from '../repository/view.js';

export interface VerifyProblem {
  code: string;
  message: string;
  point?: number;
  index?: number;
  offset?: number;
}

export interface VerifyResult {
  disk: string;
  points: number[];
  chunksChecked: number;
  /** Plaintext bytes whose contents were checked, or stored bytes when `checked` is 'stored-bytes'. */
  bytesChecked: number;
  /** True when the points are encrypted. */
  encrypted: boolean;
  /**
   * 'contents': every chunk decoded (decrypted) and its plaintext digests checked. 'stored-bytes': encrypted
   * points without their key; headers and the xxh64 of each stored object only, which catches damage in the
   * store but cannot prove the plaintext.
   */
  checked: 'contents' | 'stored-bytes';
  problems: VerifyProblem[];
  /**
   * --point all: points listed at the start and deleted since (a prune running beside verify), whose reads then
   * failed; skipped, not problems. `points` does not list them.
   */
  removed: number[];
  ok: boolean;
  seconds: number;
}

const MAX_PROBLEMS = 1000;

export interface VerifyOptions {
  store: ObjectStore;
  disk: string;
  /** A number, "latest" (default) or "all". */
  point?: string;
  /** The key of an encrypted disk; without it encrypted points are checked as stored bytes only. */
  encryption?: EncryptionKey;
  concurrency?: number;
  onProgress?: (p: { chunksChecked: number }) => void;
  /** Stops between chunks (verify only reads; a stopped run's read slots are left to the GC). */
  signal?: AbortSignal;
}

export async function verify(opts: VerifyOptions): Promise<VerifyResult> {
  return withWorkerKey(opts.encryption, () => verifyPoints(opts));
}

async function verifyPoints(opts: VerifyOptions): Promise<VerifyResult> {
  const started = performance.now();
  const { store } = opts;
  const disk = validateDiskId(opts.disk);
  const all = opts.point === 'all';
  const seqs = all ? await listPointSeqs(store, disk, opts.encryption) : [await resolvePoint(store, disk, opts.point, opts.encryption)];
  if (seqs.length === 0) await explainNoPoints(store, disk, opts.encryption);
  // A wrong key (or a key for an unencrypted disk) stops verify before any chunk is read: it is a mistake in the
  // command, not damage in the store. Unreadable manifests are left to the loop below, which reports them.
  for (const seq of seqs) {
    const m = await loadPoint(store, disk, seq, opts.encryption).catch(() => undefined);
    if (m) chainKey([m], opts.encryption, disk);
  }
  let marker: DiskMarker | undefined;
  let encrypted = false;
  let storedOnly = false;
  const problems: VerifyProblem[] = [];
  const report = (err: unknown, point: number) => {
    if (!(err instanceof RnodeError)) throw err;
    if (problems.length < MAX_PROBLEMS) {
      problems.push({
        code: err.code,
        message: err.message,
        point,
        ...(err.details.index !== undefined ? { index: err.details.index as number, offset: err.details.offset as number } : {}),
      });
    }
  };
  try {
    marker = await readDiskMarker(store, disk, opts.encryption);
  } catch (err) {
    report(err, seqs[0]);
  }
  const concurrency = opts.concurrency ?? 8;
  let slots: BufferPool<ReturnType<typeof newReadSlot>> | undefined;
  let slotSize = 0;
  let chunksChecked = 0;
  let bytesChecked = 0;
  const removed: number[] = [];
  for (const seq of seqs) {
    opts.signal?.throwIfAborted();
    const problemsBefore = problems.length;
    await verifyOne(seq);
    // A point of the listing that failed and is listed no longer was deleted meanwhile: nothing to restore, no damage.
    if (all && problems.length > problemsBefore && !(await stillListed(seq))) {
      problems.splice(problemsBefore);
      removed.push(seq);
    }
  }
  slots?.close(recycleReadSlot);
  return {
    disk,
    points: seqs.filter((s) => !removed.includes(s)),
    chunksChecked,
    bytesChecked,
    encrypted,
    checked: storedOnly ? 'stored-bytes' : 'contents',
    problems,
    removed,
    ok: problems.length === 0,
    seconds: (performance.now() - started) / 1000,
  };

  /** Whether a point is still listed; a listing that fails says yes, so the point's own problems are reported. */
  async function stillListed(seq: number): Promise<boolean> {
    return listPointSeqs(store, disk, opts.encryption).then(
      (now) => now.includes(seq),
      () => true,
    );
  }

  async function verifyOne(seq: number): Promise<void> {
    let chain: PointManifest[];
    try {
      chain = await loadChain(store, disk, seq, opts.encryption);
    } catch (err) {
      report(err, seq);
      return;
    }
    const m = chain[0];
    let key;
    try {
      if (marker) checkChainAuthenticity(chain, undefined, marker, disk);
      key = chainKey(chain, opts.encryption, disk);
      checkChainAuthenticity(chain, key.seal ? opts.encryption : undefined, marker, disk);
    } catch (err) {
      report(err, seq);
      return;
    }
    encrypted ||= key.encrypted;
    const stored = key.encrypted && !key.seal;
    storedOnly ||= stored;
    // One point: everything it restores from. All points: each point's own table once, which together covers
    // every chunk any of them references (a rebased table carries the entries of pruned ancestors).
    const metaKey = key.seal ? opts.encryption : undefined;
    // Retention may rebase a point while it is verified (its ancestors' tables deleted): the point as the store holds
    // it then, held to the same rules.
    const reload = async () => {
      const now = await loadChain(store, disk, seq, opts.encryption);
      if (marker) checkChainAuthenticity(now, undefined, marker, disk);
      checkChainAuthenticity(now, key.seal ? opts.encryption : undefined, marker, disk);
      return now;
    };
    const entries: AsyncIterable<ChunkEntry> = all ? tableEntries(store, m, metaKey) : chainViewAcrossRebase(store, chain, metaKey, reload);
    const nonZero = async function* () {
      try {
        for await (const e of entries) if (!isZeroEntry(e)) yield e;
      } catch (err) {
        report(err, seq);
      }
    };
    if (!slots || slots.count === 0 || m.chunkSize !== slotSize) {
      slotSize = m.chunkSize;
      slots?.close(recycleReadSlot);
      slots = new BufferPool(concurrency, () => newReadSlot(m.chunkSize));
    }
    const pool = slots;
    await forEachBounded(
      nonZero(),
      concurrency,
      async (e) => {
        const slot = await pool.acquire();
        try {
          if (stored) await checkStoredChunk(store, disk, m.chunkSize, e, seq, slot);
          else await readChunk(store, disk, m.chunkSize, e, seq, slot, key.seal);
          chunksChecked++;
          bytesChecked += stored ? e.storedLength : e.plainLength;
          opts.onProgress?.({ chunksChecked });
        } catch (err) {
          report(err, seq);
        } finally {
          pool.release(slot);
        }
      },
      opts.signal,
    );
  }
}
