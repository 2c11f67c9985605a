// Writes one recovery point: reads the chunks the source says may have changed, stores the ones that did,
// then commits the manifest last. A crash at any step leaves the old set of points intact; the pending
// checkpoint lets the next run continue where this one stopped.
// Points are written in the repository v2 format (docs/repository-v2.md): each chunk is named by its keyed 32-byte
// id; a chunk already in the domain (any point of any disk) is not stored again; new ones are appended to packs,
// and every checkpoint puts the closed packs, then one index object for them, then the table segment and the
// checkpoint itself. Legacy points stay readable; the first point after them is a full v2 point.
import type { EncryptionKey } from '../crypto/keys.js';
import { ErrorCodes, RnodeError, isRnodeError } from '../errors.js';
import { failpoint } from '../failpoint.js';
import { Codec, DEFAULT_CODEC, type CodecId } from '../format/codecs.js';
import { MANIFEST_FORMAT, type PointEncryption, type PointManifest, type SegmentRef } from '../format/manifest.js';
import { TableFlag, TABLE_SEGMENT_RECORDS, type ChunkEntry, isZeroEntry } from '../format/table.js';
import { isZero } from '../native/index.js';
import { BufferPool } from '../pipeline/buffer-pool.js';
import { withWorkerDomain } from '../pipeline/chunk-codec.js';
import { codecWorkers, maxObjectBytes } from '../pipeline/codec-workers.js';
import { IdFilter } from '../pipeline/id-filter.js';
import { recycleShared, takeShared } from '../pipeline/shared-slots.js';
import { ChunkGrid, chunksOf, DEFAULT_CHUNK_SIZE, validateChunkSize } from '../pipeline/grid.js';
import { StageClock, type StageEvent, type StageTimes } from '../pipeline/stages.js';
import type { BlockSource } from '../source/types.js';
import type { ObjectStore } from '../store/types.js';
import { checkChainAuthenticity, checkWriteKey, readDiskMarker } from '../repository/encryption.js';
import { Domain, leaseName, MIN_PACK_SIZE, validatePackSize } from '../repository/domain.js';
import { ChunkIndex, encodeIndex, type ChunkLocation } from '../repository/index-file.js';
import { r2, validateDiskId } from '../repository/names.js';
import { newObjectId, packBufferBytes, PackBuilder, packSizeFor } from '../repository/pack.js';
import {
  encodeManifestV4, encodePendingV2, encodeTableV3, isV2Point, MANIFEST_VERSION_V2, segmentDigest, v2Entry, type V4ManifestFields,
} from '../repository/point-format.js';
import { WriterMarks } from '../repository/prune-marks.js';
import { checkClaim, ensureClaim, readClaim } from '../repository/claims.js';
import { listPointSeqs, listV2PointSeqs, loadChain, loadPoint, loadV2Checkpoint } from '../repository/points.js';
import { chainView, Cursor } from '../repository/view.js';
import { Lease, type LeaseOptions } from '../repository/lease.js';

export interface ReplicateOptions {
  store: ObjectStore;
  source: BlockSource;
  disk: string;
  /** Defaults to the previous point's chunk size, or 1 MiB for the first point. */
  chunkSize?: number;
  codec?: CodecId;
  /** Target pack size in bytes for this run (default: the repository's, 16 MiB when it is created). */
  packSize?: number;
  /** Encrypt the point's chunks with this key (the disk's earlier points must have been written with it). */
  encryption?: EncryptionKey;
  /**
   * Chunks that may wait for the store (default from bufferBytes): with the depth of reading and encoding, set from
   * the number of codec workers, it bounds how far the reader runs ahead of the oldest unfinished chunk.
   */
  concurrency?: number;
  /**
   * Bytes of the buffers holding stored data on its way to the store (default 64 MiB): the pack being filled and the
   * packs in puts (see packPlan; a small budget makes the run's packs smaller). Reading and encoding hold a fixed few
   * chunk buffers on top, set by the number of codec workers. Runs sharing a node split its budget.
   */
  bufferBytes?: number;
  /** Read every allocated chunk even if the source tracks changes. */
  forceFull?: boolean;
  /** Continue a pending point left by an interrupted run (default true). */
  resume?: boolean;
  /** Records per table segment and checkpoint. */
  checkpointRecords?: number;
  /** Also checkpoint at least this often while records are buffered. */
  checkpointMillis?: number;
  signal?: AbortSignal;
  onProgress?: (p: ReplicateProgress) => void;
  /** Hears each chunk's read, encode and write as it ends (the timeline behind ReplicateResult.stages). */
  onStage?: (e: StageEvent) => void;
  /** Called right before the manifest is written (after the lease check). */
  beforeCommit?: () => Promise<void>;
  /** The one-writer-per-disk lease: options, or false to skip it (the caller holds it). */
  lease?: LeaseOptions | false;
}

export interface ReplicateProgress {
  phase: 'scan' | 'commit';
  bytesRead: number;
  bytesWritten: number;
  chunksDone: number;
  /** Disk offset reached by the scan. */
  position: number;
  diskSize: number;
}

export interface ReplicateResult {
  disk: string;
  point: number;
  parent: number | null;
  full: boolean;
  fullReason?: string;
  /** Why a change-tracking source was read in full (tracking reset, no marker...). */
  rescanReason?: string;
  resumed: boolean;
  diskSize: number;
  chunkSize: number;
  bytesRead: number;
  bytesWritten: number;
  chunksTotal: number;
  chunksChanged: number;
  chunksZero: number;
  /** Chunks (and their plaintext bytes) found already stored in the repository: not written again. */
  chunksDeduplicated: number;
  bytesDeduplicated: number;
  /** Pack objects written. */
  packsWritten: number;
  seconds: number;
  /** Where the time went (see StageTimes). */
  stages: StageTimes;
  /** Set when the point is encrypted: the algorithm and the key id (never the key). */
  encryption?: PointEncryption;
}

interface Checkpoint {
  format: 'rnode-pending';
  point: number;
  parent: number | null;
  scan: boolean;
  diskSize: number;
  chunkSize: number;
  source: { kind: string; location: string; identity?: string };
  /** Key id of the chunks written so far; a run with another key (or none) starts afresh. */
  keyId?: string;
  segments: SegmentRef[];
  records: number;
  nextIndex: number;
  stats: RunStats;
  /** Packs written by other runs that this point's chunks are in (re-checked against prune's marks at commit). */
  reused: string[];
  /** The generation of prune's marks the run had read when it wrote this checkpoint (absent before generations: 0). */
  marksGeneration?: number;
}

interface RunStats {
  bytesRead: number;
  bytesWritten: number;
  chunksChanged: number;
  chunksZero: number;
  chunksData: number;
  chunksDeduplicated: number;
  bytesDeduplicated: number;
  packsWritten: number;
}

type Delta = Partial<RunStats>;

/** The default of ReplicateOptions.bufferBytes. */
const DEFAULT_BUFFER_BYTES = 64 * 1024 * 1024;

/**
 * Pack buffers of a run, at most: one being filled and two in puts. A pack is one large write, and two keep the
 * device busy; more only hold memory.
 */
const MAX_PACK_BUFFERS = 3;

/** What one candidate chunk became: its table record (null: nothing to record) and what it cost. */
interface Outcome {
  entry: ChunkEntry | null;
  delta: Delta;
}

/** A candidate chunk: read it, or (when only the parent knows it) decide without reading. */
interface Candidate {
  index: number;
  read: boolean;
  parent?: ChunkEntry;
}

export async function replicate(opts: ReplicateOptions): Promise<ReplicateResult> {
  const disk = validateDiskId(opts.disk);
  // Start the codec workers now: they load their modules while the lease and the previous point are read, instead
  // of holding up the first chunks (~0.3 s of an otherwise idle pipeline at the start of each run).
  codecWorkers();
  const domain = Domain.of(opts.encryption);
  return Lease.holding(opts.store, leaseName(disk, opts.encryption), opts.lease,
    (lease) => withWorkerDomain(domain, () => replicateLeased(opts, lease)));
}

async function replicateLeased(opts: ReplicateOptions, lease: Lease | undefined): Promise<ReplicateResult> {
  const started = performance.now();
  const { store, source } = opts;
  const disk = validateDiskId(opts.disk);
  const codec = opts.codec ?? DEFAULT_CODEC;

  const seqs = await listPointSeqs(store, disk, opts.encryption);
  const latest = seqs.length ? await loadPoint(store, disk, seqs[seqs.length - 1], opts.encryption) : undefined;
  const marker = await readDiskMarker(store, disk, opts.encryption);
  checkWriteKey(latest, opts.encryption, disk, marker);
  // The disk's claim names the repository its v2 points are in: a writer with no key or another key is refused here,
  // where it could not otherwise see an encrypted disk's keyed names. Claimed now, before any object is written.
  const claim = await readClaim(store, disk);
  checkClaim(claim, opts.encryption, disk);
  // An unencrypted disk's v2 points are listed without a key: a key given for it would start a second, encrypted
  // chain of the same disk id. (Another key's encrypted disk cannot be seen: its names are keyed; it is another
  // repository of the store.)
  if (opts.encryption && !latest && (await listV2PointSeqs(store, disk, undefined)).length > 0) {
    throw new RnodeError(ErrorCodes.KEY_MISMATCH,
      `disk ${disk} is not encrypted and a disk's points never mix encrypted and unencrypted chunks; leave out the key, or replicate to a new --disk id to start an encrypted disk`,
      { details: { disk } });
  }
  const domain = await Domain.openOrCreate(store, opts.encryption, opts.packSize);
  if (!claim) await ensureClaim(store, disk, opts.encryption);
  // A store with an object limit (a ws node's, learnt in its handshake, which the reads above made) gets packs that fit
  // it, whatever the repository's or --pack-size says.
  const packs = packPlan(packSizeFor(store, validatePackSize(opts.packSize ?? domain.config.packSize), MIN_PACK_SIZE), opts.packSize !== undefined, opts.bufferBytes);
  const packSize = packs.packSize;
  const dname = domain.dname(disk);
  const workers = codecWorkers();
  const chunkSize = validateChunkSize(opts.chunkSize ?? latest?.chunkSize ?? DEFAULT_CHUNK_SIZE);
  const grid = new ChunkGrid(source.size, chunkSize);
  const seq = (latest?.point ?? 0) + 1;

  // The table is a delta against the latest point whenever the geometry matches; otherwise it stands alone.
  let parent: PointManifest | undefined = latest;
  let fullReason: string | undefined;
  if (!latest) fullReason = 'first point of the disk';
  else if (latest.diskSize !== source.size) { parent = undefined; fullReason = `disk size changed from ${latest.diskSize} to ${source.size}`; }
  else if (latest.chunkSize !== chunkSize) { parent = undefined; fullReason = `chunk size changed from ${latest.chunkSize} to ${chunkSize}`; }
  else if (!isV2Point(latest)) { parent = undefined; fullReason = 'repository format upgraded'; }

  // What to read: changed extents when the source tracks changes and has a usable marker, else allocated areas.
  let changed: AsyncIterable<number> | undefined;
  if (parent && !opts.forceFull && source.tracksChanges) {
    if (!parent.source.marker || parent.source.kind !== source.kind) {
      fullReason = 'previous point has no change marker from this source';
    } else {
      const peeked = await peekChanged(source, parent.source.marker, grid);
      if (peeked.error) fullReason = `change tracking unusable: ${peeked.error.message}`;
      else changed = peeked.indexes;
    }
  } else if (parent && opts.forceFull) fullReason = 'full sync requested';
  else if (parent && !source.tracksChanges) fullReason = undefined; // raw: every point is a scan, compared by content
  // A point is full when its table stands alone; it is a scan when every allocated chunk is read.
  const full = parent === undefined;
  const scan = changed === undefined;
  const rescanReason = scan && !full ? fullReason : undefined;
  if (!full) fullReason = undefined;
  const toRead = changed ?? chunksOf(source.allocatedExtents(), grid);
  // Unread chunks the parent has data for: zero now on a scan (unallocated), unchanged on a tracked read.
  const unreadIsZero = scan;

  const identity = await source.identity?.();
  const ck = await openCheckpoint(opts, store, domain, disk, seq, parent?.point ?? null, scan, grid, source, identity);
  // Every chunk already in the domain, and prune's marks (a marked pack's chunks are never reused), never older than
  // the marks this disk's latest point or this point's checkpoint saw (an older marks object put back is a replay).
  const index = await ChunkIndex.load(store, domain);
  // The ids the codec workers see, so they compress only chunks that are probably new (the index still decides).
  const known = new IdFilter(index.size + grid.count);
  for (const id of index.ids()) known.add(id);
  const latestGeneration = latest && isV2Point(latest) ? latest.marksGeneration ?? 0 : 0;
  const marks = ck.marksGeneration > latestGeneration
    ? new WriterMarks(store, domain, ck.marksGeneration, `recorded by the checkpoint of point ${seq} of disk ${disk}`)
    : new WriterMarks(store, domain, latestGeneration, `recorded by point ${latest?.point} of disk ${disk}`);
  let marked = await marks.blockedPacks();
  const reused = new Set<string>(ck.reused);
  const written = new Set<string>();
  // Stats of the chunks settled in index order, so a checkpoint holds exactly the work it covers.
  const stats = { ...ck.stats };
  // Live figures for progress only (chunks still in flight included).
  const live = { bytesRead: ck.stats.bytesRead, bytesWritten: ck.stats.bytesWritten };
  const segments: SegmentRef[] = [...ck.segments];
  let records = ck.records;
  const changeMarker = await source.changeMarker();

  const checkpointRecords = opts.checkpointRecords ?? TABLE_SEGMENT_RECORDS;
  const checkpointMillis = opts.checkpointMillis ?? 15_000;
  let pendingEntries: ChunkEntry[] = [];
  let lastCheckpoint = Date.now();
  let flushedNextIndex = ck.nextIndex;
  let segmentChain: Promise<void> = Promise.resolve();
  let failure: unknown;
  let checkpointFailure: unknown;

  // The open pack, the packs closed since the last index object (their puts and their entries). Each pack is built in
  // one of the run's pack buffers (packPlan): a closed pack's put holds its buffer, and the next pack waits for a free
  // one. That wait is how a slow store holds up the appends, and with them the reader.
  const packSlots = new BufferPool<{ buffer?: Buffer }>(packs.buffers, () => ({}));
  let open: { pack: PackBuilder; slot: { buffer?: Buffer } } | undefined;
  let unindexed: ChunkLocation[] = [];
  let packPuts: Promise<void>[] = [];
  /** Packs whose put failed, with the error: their chunks are not stored and no index object names them. */
  const failedPuts = new Map<string, unknown>();
  /** Closes the open pack and starts its put, which gives the pack's buffer back when it ends. */
  const closePack = (): void => {
    if (!open || open.pack.count === 0) return;
    const { pack: closing, slot } = open;
    open = undefined;
    for (const entry of closing.entries) unindexed.push({ packId: closing.id, entry });
    const put = (async () => {
      try {
        const bytes = closing.finish();
        await store.put(r2.pack(domain.name, closing.id), bytes);
        stats.bytesWritten += bytes.length;
        stats.packsWritten++;
        live.bytesWritten += bytes.length;
        failpoint('after-pack');
      } finally {
        slot.buffer = closing.buffer;
        packSlots.release(slot);
      }
    })();
    put.catch((err) => { failedPuts.set(closing.id, err); failure ??= err; wake(); });
    packPuts.push(put);
  };

  const flushSegment = (nextIndex: number) => {
    const entries = pendingEntries;
    const place = { disk, point: seq, parent: parent?.point ?? null, generation: 0, segment: segments.length };
    const bytes = encodeTableV3(domain, place, entries);
    pendingEntries = [];
    lastCheckpoint = Date.now();
    const ref: SegmentRef = {
      key: r2.segment(domain.name, dname, seq, 0, segments.length),
      records: entries.length,
      first: entries.length ? entries[0].index : -1,
      last: entries.length ? entries[entries.length - 1].index : -1,
      digest: segmentDigest(bytes),
    };
    segments.push(ref);
    records += entries.length;
    // Every chunk these records name is in a pack closed now or before: the index object below covers them.
    closePack();
    const puts = packPuts;
    const locations = unindexed;
    packPuts = [];
    unindexed = [];
    // The packs of this run its records' chunks are in: the checkpoint needs those stored, and only those.
    const needed = new Set<string>();
    for (const e of entries) for (const l of e.id ? index.lookup(e.id) : []) if (written.has(l.packId)) needed.add(l.packId);
    // The stats of the chunks settled so far (in index order); bytes and packs written are added once durable.
    const settled = { ...stats };
    const snapshot = (): Checkpoint => ({
      format: 'rnode-pending', point: seq, parent: parent?.point ?? null, scan, diskSize: grid.diskSize, chunkSize,
      source: { kind: source.kind, location: source.location, ...(identity ? { identity } : {}) }, ...(domain.key ? { keyId: domain.key.keyId } : {}),
      segments: segments.slice(0, place.segment + 1), records: recordsDone + entries.length, nextIndex,
      stats: { ...settled, bytesWritten: stats.bytesWritten, packsWritten: stats.packsWritten }, reused: [...reused],
      marksGeneration: marks.generation,
    });
    // Checkpoints go on after a chunk failed (they cover chunks already stored); only their own failure stops them.
    segmentChain = segmentChain.then(async () => {
      if (checkpointFailure) return;
      // A pack closed since the last checkpoint may hold only chunks encoded ahead of these records: its failed put
      // is not this checkpoint's (it used to drop it, and a cut run then left no checkpoint at all). The index object
      // names only the packs stored; a checkpoint is written only if the packs of its own records are.
      await Promise.allSettled(puts);
      const stored = locations.filter((l) => !failedPuts.has(l.packId));
      if (stored.length) {
        const indexId = newObjectId();
        const ib = encodeIndex(domain, indexId, stored);
        await store.put(r2.index(domain.name, indexId), ib);
        stats.bytesWritten += ib.length;
        failpoint('after-index');
      }
      const lost = [...needed].find((id) => failedPuts.has(id));
      if (lost !== undefined) throw failedPuts.get(lost);
      await store.put(ref.key, bytes);
      stats.bytesWritten += bytes.length;
      failpoint('after-segment');
      await store.put(r2.pending(domain.name, dname, seq), encodePendingV2(domain, disk, seq, snapshot()));
      recordsDone += entries.length;
      failpoint('after-checkpoint');
      // Prune may have marked packs since: chunks in them are stored again from now on.
      marked = await marks.blockedPacks();
    }).catch((err) => { checkpointFailure ??= err; failure ??= err; }); // stops the scan
  };
  let recordsDone = ck.records;

  /** A place to reuse chunk id from: any location whose pack prune has not marked. */
  const reusable = (id: Buffer): ChunkLocation | undefined => index.lookup(id).find((l) => !marked.has(l.packId));
  const dedupHit = (l: ChunkLocation, length: number, n: number, entry: ChunkEntry): Outcome => {
    if (!written.has(l.packId)) reused.add(l.packId);
    return { entry, delta: { bytesRead: n, chunksData: 1, chunksChanged: 1, chunksDeduplicated: 1, bytesDeduplicated: length } };
  };
  /**
   * Appends a new chunk's blob to the open pack (opening one when a pack buffer is free), or returns where the chunk
   * already is: appends take turns, so the lookup and the add of an id are one step, and two chunks with the same
   * content in flight at once are stored once. The turn goes to the lowest chunk index waiting: a checkpoint covers
   * chunks in index order, so an early chunk encoded late must not queue behind the chunks after it (a cut among
   * their puts then left nothing to checkpoint).
   */
  const appendTurns = new BufferPool(1, () => ({}));
  const append = async (index_: number, id: Buffer, blob: Buffer, meta: { plainLength: number; codec: number; payloadXxh64: bigint }): Promise<ChunkLocation | undefined> => {
    const turn = await appendTurns.acquire(index_);
    try {
      const stored = reusable(id);
      if (stored) return stored;
      if (open?.pack.wouldOverflow(blob.length, store.maxPutBytes)) closePack();
      if (!open) {
        const slot = await packSlots.acquire();
        open = { pack: new PackBuilder(domain.name, packSize, domain.key, undefined, slot.buffer), slot };
      }
      const { pack } = open;
      const e = pack.add(blob, { id, ...meta });
      index.add({ packId: pack.id, entry: e });
      known.add(id);
      written.add(pack.id);
      if (pack.size >= packSize) closePack();
      return undefined;
    } finally {
      appendTurns.release(turn);
    }
  };

  // A durable put waits for the device far longer than a chunk takes to read and encode. With one buffer pair per
  // chunk held from read to the end of its put, the puts held every pair and the workers sat idle (issue 13). Now
  // chunk buffers are held only until a chunk's blob is copied into its pack, and the pack buffers wait for the store.
  const { encodeDepth, reorderWindow } = pipelineDepths(chunkSize, opts.concurrency, opts.bufferBytes);
  // One trip to a worker per chunk (its id and, when it is probably new, its blob): a plaintext buffer is held from
  // read to the end of that trip, an object buffer across the trip and the blob's append to its pack.
  const plainPool = new BufferPool(encodeDepth, () => takeShared(chunkSize));
  const outPool = new BufferPool(encodeDepth, () => takeShared(maxObjectBytes(chunkSize)));
  const clock = new StageClock(opts.onStage);
  /** Chunks waiting for an object buffer or a pack buffer: then the store is what holds the reader up. */
  let waitingForStore = 0;
  const storeWait = async <T>(p: Promise<T>): Promise<T> => {
    waitingForStore++;
    try { return await p; } finally { waitingForStore--; }
  };
  // Results complete out of order; the table needs them in index order, so they wait here (bounded by the pools).
  const done = new Map<number, Outcome>();
  const candidateIndex = new Map<number, number>();
  let nextOrdinal = 0;
  let flushOrdinal = 0;
  const inflight = new Set<Promise<void>>();

  let windowWaiter: (() => void) | undefined;
  const wake = () => { const w = windowWaiter; windowWaiter = undefined; w?.(); };
  const settle = (ordinal: number, outcome: Outcome) => {
    done.set(ordinal, outcome);
    while (done.has(flushOrdinal)) {
      const { entry: e, delta } = done.get(flushOrdinal)!;
      done.delete(flushOrdinal);
      for (const k of Object.keys(delta) as Array<keyof Delta>) stats[k] += delta[k] ?? 0;
      flushedNextIndex = candidateIndex.get(flushOrdinal)! + 1;
      candidateIndex.delete(flushOrdinal);
      flushOrdinal++;
      if (e) pendingEntries.push(e);
      if (pendingEntries.length >= checkpointRecords ||
          (pendingEntries.length > 0 && Date.now() - lastCheckpoint >= checkpointMillis)) {
        flushSegment(flushedNextIndex);
      }
    }
    wake();
  };

  /** Reads, encodes and stores chunk c; releasePlain gives its plaintext buffer back as soon as the encode is done. */
  const processChunk = async (c: Candidate, plainSlot: Buffer, releasePlain: () => void): Promise<Outcome> => {
    const offset = grid.offset(c.index);
    const length = grid.length(c.index);
    const n = await clock.time(c.index, 'read', () => source.read(offset, plainSlot, length));
    if (n !== length) {
      throw new RnodeError(ErrorCodes.SOURCE_CHANGED, `source ${source.location} ended at ${offset + n}, expected ${grid.diskSize} bytes; was it truncated while replicating?`);
    }
    live.bytesRead += n;
    const plain = plainSlot.subarray(0, length);
    if (isZero(plain)) {
      const delta: Delta = { bytesRead: n, chunksZero: scan ? 0 : 1 };
      if (!c.parent || isZeroEntry(c.parent)) return { entry: null, delta };
      return { entry: zeroEntry(c.index, length), delta: { ...delta, chunksChanged: 1 } };
    }
    // Unchanged when the 32-byte ids agree (never a shorter digest): nothing to record or store.
    const parentId = c.parent?.id && c.parent.plainLength === length ? c.parent.id : undefined;
    const out = await storeWait(outPool.acquire(c.index)); // the earliest chunk first: a checkpoint covers chunks in index order
    try {
      const start = performance.now();
      const r = await workers.idEncodeBlob(plain, out, codec, { idName: domain.name, keyId: domain.key?.keyId, parentId, known: known.words });
      const { id, hashMs } = r;
      if (parentId?.equals(id)) {
        clock.encoded(c.index, start, { hashMs, packMs: 0 });
        return { entry: null, delta: { bytesRead: n, chunksData: 1 } };
      }
      const entry = v2Entry(c.index, id, length, seq);
      const hit = reusable(id);
      if (hit) {
        clock.encoded(c.index, start, { hashMs, packMs: r.skipped ? 0 : r.packMs, sealMs: r.skipped ? 0 : r.sealMs });
        return dedupHit(hit, length, n, entry);
      }
      // Skipped on a false hint (the filter, or copies only in packs prune marked): this chunk is stored after all.
      const encoded = r.skipped ? await workers.encodeBlob(plain, out, codec, id, domain.key?.keyId) : r;
      clock.encoded(c.index, start, { hashMs, packMs: encoded.packMs, sealMs: encoded.sealMs });
      releasePlain(); // the next chunks' reads and encodes now overlap this one's append
      const blob = out.subarray(0, encoded.payloadLength);
      // A chunk's write is its append to the open pack, with any wait for a pack buffer (the store's pace).
      const late = await storeWait(clock.time(c.index, 'write', () =>
        append(c.index, id, blob, { plainLength: length, codec: encoded.codec, payloadXxh64: encoded.payloadXxh64 })));
      // Another chunk with the same content was stored while this one was encoded.
      if (late) return dedupHit(late, length, n, entry);
      return { entry, delta: { bytesRead: n, chunksData: 1, chunksChanged: 1 } };
    } finally {
      outPool.release(out);
    }
  };

  let parentView: Cursor<ChunkEntry> | undefined;
  if (parent) {
    const chain = await loadChain(store, disk, parent.point, opts.encryption);
    // The parent's records decide what this point stores: a forged parent table must not be built upon.
    checkChainAuthenticity(chain, opts.encryption, marker, disk);
    parentView = new Cursor(chainView(store, chain, opts.encryption));
  }
  let position = ck.nextIndex * chunkSize;
  await workers.ready(); // no chunk waits on a worker still starting while the chunks after it run ahead
  try {
    for await (const c of candidates(toRead, parentView)) {
      if (failure) break;
      if (opts.signal?.aborted) throw new RnodeError(ErrorCodes.CANCELLED, 'replication was cancelled; the point was not committed');
      if (lease?.signal.aborted) throw lease.signal.reason;
      if (c.index < ck.nextIndex) continue; // already in the checkpoint
      position = grid.offset(c.index);
      const ordinal = nextOrdinal++;
      candidateIndex.set(ordinal, c.index);
      if (!c.read) {
        const zeroNow = unreadIsZero && c.parent && !isZeroEntry(c.parent);
        settle(ordinal, zeroNow ? { entry: zeroEntry(c.index, grid.length(c.index)), delta: { chunksChanged: 1 } } : { entry: null, delta: {} });
        continue;
      }
      // The reader stands still here when the pipeline is full; whoever holds the buffers is the bottleneck.
      const stalledFor = waitingForStore > 0 ? 'write' : 'encode';
      const waitStart = performance.now();
      while (nextOrdinal - flushOrdinal > reorderWindow && !failure) await new Promise<void>((r) => { windowWaiter = r; });
      const plainSlot = await plainPool.acquire();
      clock.waited(stalledFor, performance.now() - waitStart);
      if (failure) { plainPool.release(plainSlot); break; }
      let plainHeld = true;
      const releasePlain = () => { if (plainHeld) { plainHeld = false; plainPool.release(plainSlot); } };
      const p: Promise<void> = processChunk(c, plainSlot, releasePlain).then(
        (e) => settle(ordinal, e),
        (err) => { failure ??= err; wake(); },
      ).finally(() => { releasePlain(); inflight.delete(p); });
      inflight.add(p);
      opts.onProgress?.({ phase: 'scan', bytesRead: live.bytesRead, bytesWritten: live.bytesWritten, chunksDone: flushOrdinal, position, diskSize: grid.diskSize });
    }
  } catch (err) {
    failure ??= err;
  } finally {
    await Promise.all(inflight);
    // A failed run still closes the blobs it appended, so the checkpoint below can cover what it settled.
    // Every chunk is settled and stored: the buffers go back for the next run.
    plainPool.close(recycleShared);
    outPool.close(recycleShared);
    await parentView?.close();
  }
  await segmentChain;
  if (failure) {
    // Keep what was stored in order: the next run resumes after it instead of redoing it.
    if (pendingEntries.length > 0 && !checkpointFailure) {
      flushSegment(flushedNextIndex);
      await segmentChain;
    }
    throw failure;
  }
  if (pendingEntries.length > 0 || segments.length === 0) flushSegment(grid.count);
  await segmentChain;
  if (failure) throw failure;

  // On a scan every chunk not read as data is zero, holes included.
  if (scan) stats.chunksZero = grid.count - stats.chunksData;
  // Every pack, index and table segment is durable: commit.
  opts.onProgress?.({ phase: 'commit', bytesRead: stats.bytesRead, bytesWritten: stats.bytesWritten, chunksDone: flushOrdinal, position: grid.diskSize, diskSize: grid.diskSize });
  await lease?.check();
  await opts.beforeCommit?.();
  await checkReused(store, domain, marks, reused);
  failpoint('before-commit');
  const seconds = (performance.now() - started) / 1000;
  const manifest: PointManifest & V4ManifestFields = {
    format: MANIFEST_FORMAT, version: MANIFEST_VERSION_V2, ...(domain.key ? { encryption: { alg: 'aes-256-gcm' as const, keyId: domain.key.keyId } } : {}), disk, point: seq, parent: parent?.point ?? null, full,
    createdAt: new Date().toISOString(), diskSize: grid.diskSize, chunkSize,
    source: { kind: source.kind, location: source.location, ...(changeMarker ? { marker: changeMarker } : {}), ...(fullReason ? { fullReason } : {}), ...(rescanReason ? { rescanReason } : {}) },
    table: { generation: 0, records, segments },
    ...(lease ? { fence: lease.token } : {}),
    marksGeneration: marks.generation,
    stats: {
      chunksTotal: grid.count, chunksChanged: stats.chunksChanged, chunksZero: stats.chunksZero,
      bytesRead: stats.bytesRead, bytesWritten: stats.bytesWritten, seconds,
      bytesDeduplicated: stats.bytesDeduplicated, chunksDeduplicated: stats.chunksDeduplicated, packsWritten: stats.packsWritten,
    },
  };
  const mbytes = encodeManifestV4(domain, manifest);
  const mkey = r2.point(domain.name, dname, seq);
  try {
    await store.put(mkey, mbytes, { ifNoneMatch: true });
  } catch (err) {
    if (!isRnodeError(err, ErrorCodes.STORE_PRECONDITION)) throw err;
    // A retried create can fail because its first attempt landed: the commit is ours if the bytes are.
    const existing = await store.get(mkey).catch(() => undefined);
    if (!existing?.equals(mbytes)) {
      throw new RnodeError(ErrorCodes.LEASE_LOST, `point ${seq} of disk ${disk} was committed by another writer; run again to write the next point`);
    }
  }
  failpoint('after-commit');
  await store.delete(r2.pending(domain.name, dname, seq)).catch(() => undefined);
  return {
    disk, point: seq, parent: manifest.parent, full, ...(fullReason ? { fullReason } : {}), ...(rescanReason ? { rescanReason } : {}), resumed: ck.resumed,
    diskSize: grid.diskSize, chunkSize, bytesRead: stats.bytesRead, bytesWritten: stats.bytesWritten + mbytes.length,
    chunksTotal: grid.count, chunksChanged: stats.chunksChanged, chunksZero: stats.chunksZero,
    chunksDeduplicated: stats.chunksDeduplicated, bytesDeduplicated: stats.bytesDeduplicated, packsWritten: stats.packsWritten,
    seconds, stages: clock.times,
    ...(manifest.encryption ? { encryption: manifest.encryption } : {}),
  };
}

function defaultConcurrency(chunkSize: number, bufferBytes = DEFAULT_BUFFER_BYTES): number {
  // Puts in flight, capped at ~64 MiB of object buffers. Durable puts wait for the device, so the device needs many
  // in its queue: the 1.5 GiB bench image replicated in ~4.0 s with 16 in flight against ~5.3 s with 8.
  return Math.max(2, Math.min(16, Math.floor(bufferBytes / chunkSize)));
}

/**
 * The pipeline's depths: encodeDepth plaintext buffers and as many object buffers (one chunk being encoded and one
 * queued per codec worker, two being read: every worker stays fed with little memory); writeDepth (concurrency, or
 * defaultConcurrency); and from both, how far the reader may run ahead of the oldest unfinished chunk (finished ones
 * wait for it to keep the table in order).
 */
export function pipelineDepths(chunkSize: number, concurrency?: number, bufferBytes?: number): { writeDepth: number; encodeDepth: number; reorderWindow: number } {
  const writeDepth = Math.max(2, concurrency ?? defaultConcurrency(chunkSize, bufferBytes));
  const encodeDepth = 2 * codecWorkers().size + 2;
  return { writeDepth, encodeDepth, reorderWindow: 2 * (encodeDepth + writeDepth) };
}

/**
 * A run's pack size and pack buffers, within bufferBytes: as many buffers as fit, from two (one being filled, one in
 * a put) to MAX_PACK_BUFFERS. A budget too small for two of the repository's packs makes this run's packs smaller (a
 * pack size the caller gave is kept, even past the budget).
 */
export function packPlan(packSize: number, given: boolean, bufferBytes = DEFAULT_BUFFER_BYTES): { packSize: number; buffers: number } {
  if (!given) {
    // A multiple of 64 KiB whose buffer (the pack, a blob past it, its trailer) is at most half the budget.
    const step = 64 * 1024;
    while (packSize > MIN_PACK_SIZE && 2 * packBufferBytes(packSize) > bufferBytes) packSize = Math.max(MIN_PACK_SIZE, (Math.ceil(packSize / step) - 1) * step);
  }
  return { packSize, buffers: Math.max(2, Math.min(MAX_PACK_BUFFERS, Math.floor(bufferBytes / packBufferBytes(packSize)))) };
}

function zeroEntry(index: number, length: number): ChunkEntry {
  return { index, xxh64: 0n, strong: Buffer.alloc(16), writer: 0, plainLength: length, storedLength: 0, flags: TableFlag.ZERO, codec: Codec.NONE };
}

/** Merges the ascending indexes to read with the parent's view, so each index is decided once, in order. */
async function* candidates(toRead: AsyncIterable<number>, parentView: Cursor<ChunkEntry> | undefined): AsyncIterable<Candidate> {
  const reads = new Cursor(toRead);
  await reads.next();
  if (parentView) await parentView.next();
  try {
    for (;;) {
      const r = reads.current;
      const p = parentView?.current;
      if (r === undefined && p === undefined) return;
      if (p === undefined || (r !== undefined && r < p.index)) {
        yield { index: r!, read: true };
        await reads.next();
      } else if (r === undefined || p.index < r) {
        yield { index: p.index, read: false, parent: p };
        await parentView!.next();
      } else {
        yield { index: r, read: true, parent: p };
        await reads.next();
        await parentView!.next();
      }
    }
  } finally {
    await reads.close();
  }
}

async function peekChanged(source: BlockSource, marker: string, grid: ChunkGrid):
    Promise<{ indexes?: AsyncIterable<number>; error?: RnodeError }> {
  // The first page is where a tracking reset shows up; ask for it before committing to an incremental.
  const it = source.changedExtentsSince(marker)[Symbol.asyncIterator]();
  let first: IteratorResult<{ offset: number; length: number }>;
  try {
    first = await it.next();
  } catch (err) {
    if (isRnodeError(err, ErrorCodes.CHANGE_MARKER_INVALID)) return { error: err };
    throw err;
  }
  async function* rest() {
    if (first.done) return;
    yield first.value;
    for (;;) {
      const r = await it.next();
      if (r.done) return;
      yield r.value;
    }
  }
  return { indexes: chunksOf(rest(), grid) };
}

async function openCheckpoint(opts: ReplicateOptions, store: ObjectStore, domain: Domain, disk: string, seq: number, parent: number | null,
    scan: boolean, grid: ChunkGrid, source: BlockSource, identity: string | undefined) {
  const fresh = {
    resumed: false, segments: [] as SegmentRef[], records: 0, nextIndex: 0, reused: [] as string[], marksGeneration: 0,
    stats: { bytesRead: 0, bytesWritten: 0, chunksChanged: 0, chunksZero: 0, chunksData: 0, chunksDeduplicated: 0, bytesDeduplicated: 0, packsWritten: 0 } as RunStats,
  };
  let ck: Checkpoint | undefined;
  try {
    // Sealed in an encrypted domain: a forged checkpoint (one that would skip chunks) does not open.
    ck = (await loadV2Checkpoint(store, disk, seq, domain.key)) as Checkpoint | undefined;
  } catch (err) {
    if (isRnodeError(err, ErrorCodes.METADATA_FORGED) || isRnodeError(err, ErrorCodes.MANIFEST_CORRUPT) || err instanceof SyntaxError) return fresh;
    throw err;
  }
  // The marks generation any checkpoint that opens saw counts, resumed or not (this run overwrites it).
  const g = ck?.marksGeneration;
  const marksGeneration = typeof g === 'number' && Number.isSafeInteger(g) && g > 0 ? g : 0;
  // Only a checkpoint of the very same point (same parent, geometry, source and mode) can be continued.
  if (opts.resume === false || ck?.format !== 'rnode-pending' || ck.point !== seq || ck.parent !== parent || ck.scan !== scan ||
      ck.diskSize !== grid.diskSize || ck.chunkSize !== grid.chunkSize ||
      ck.source?.kind !== source.kind || ck.source?.location !== source.location || !Array.isArray(ck.segments) ||
      ck.keyId !== opts.encryption?.keyId || !Array.isArray(ck.reused) ||
      // The data read before the cut must be the data now; a source that cannot tell is never resumed.
      identity === undefined || ck.source?.identity !== identity) {
    return { ...fresh, marksGeneration };
  }
  const segments = ck.segments.map((r, n) => ({ ...r, key: r2.segment(domain.name, domain.dname(disk), seq, 0, n) }));
  return { resumed: true, segments, records: ck.records, nextIndex: ck.nextIndex, stats: { ...fresh.stats, ...ck.stats }, reused: ck.reused, marksGeneration };
}

/**
 * Before a commit: every pack this point reuses chunks from (written by other runs) must still be there and not
 * marked by prune; otherwise a prune running beside this replicate may delete it after the commit. Fails (never
 * commits) so the next run stores those chunks again. The marks are read even when nothing was reused: the manifest
 * records their generation.
 */
async function checkReused(store: ObjectStore, domain: Domain, marks: WriterMarks, reused: Set<string>): Promise<void> {
  const marked = await marks.blockedPacks();
  if (reused.size === 0) return;
  const ids = [...reused];
  let next = 0;
  const check = async () => {
    while (next < ids.length) {
      const id = ids[next++];
      let gone = marked.has(id);
      if (!gone) {
        try {
          await store.head(r2.pack(domain.name, id));
        } catch (err) {
          if (!isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) throw err;
          gone = true;
        }
      }
      if (gone) {
        throw new RnodeError(ErrorCodes.CHUNK_MISSING,
          `pack ${r2.pack(domain.name, id)}, which this point reuses chunks from, was ${marked.has(id) ? 'marked for deletion' : 'deleted'} by a prune running meanwhile; ` +
          'the point was not committed: run replicate again (it stores those chunks anew)', { retryable: true, details: { key: r2.pack(domain.name, id) } });
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(8, ids.length) }, check));
}
