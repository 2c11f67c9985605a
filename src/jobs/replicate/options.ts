// The options, figures and result of a replicate run (src/jobs/replicate.ts), and the checkpoint an interrupted run
// leaves for the next one to continue from.
import type { EncryptionKey } from '../../crypto/keys.js';
import type { CodecId } from '../../format/codecs.js';
import type { PointEncryption, SegmentRef } from '../../format/manifest.js';
import type { StageEvent, StageTimes } from '../../pipeline/stages.js';
import type { BlockSource } from '../../source/types.js';
import type { ObjectStore } from '../../store/types.js';
import type { LeaseOptions } from '../../repository/lease.js';

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
   * The disk id was taken from the source file's name (no --disk): a disk whose latest point was made from another
   * file is refused (RNODE_USAGE) rather than continued.
   */
  diskNamedAfterSource?: boolean;
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
  /**
   * Points in a chain of delta tables (default MAX_CHAIN_POINTS): when the parent's chain is this long, the new point's
   * table stands alone, so no read of a point (an incremental's comparison, a restore) walks more tables than this.
   */
  maxChain?: number;
  signal?: AbortSignal;
  onProgress?: (p: ReplicateProgress) => void;
  /** Hears each chunk's read, encode and write as it ends (the timeline behind ReplicateResult.stages). */
  onStage?: (e: StageEvent) => void;
  /** Called right before the manifest is written (after the lease check). */
  beforeCommit?: () => Promise<void>;
  /** The one-writer-per-disk lease: options, or false to skip it (the caller holds it). */
  lease?: LeaseOptions | false;
  /**
   * A directory of this node's where each committed point's change hashes are kept (change-hashes.ts): the next
   * incremental from a raw source compares chunks by them at memory speed before taking any chunk id. Absent: none.
   */
  changeHashDir?: string;
  /** Where changeHashDir came from, as messages name it: --cache-dir, RNODE_CACHE_DIR; default "cache folder". */
  changeHashDirFrom?: string;
  /**
   * Hears, once, after the commit, why this run's change hashes could not be kept under changeHashDir (the folder cannot
   * be used, a write failed): the point is made all the same, and the next incremental compares its chunks by id. The
   * library says nothing itself; its caller decides whether and where to warn.
   */
  onChangeHashesNotKept?: (err: unknown) => void;
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
  /** The point this one's table is a delta against; null when it stands alone (see rebasedFrom). */
  parent: number | null;
  full: boolean;
  /**
   * Set on an incremental point whose table stands alone: it was compared with point rebasedFrom, whose chain had
   * reached maxChain points, and its table carries that chain's entries.
   */
  rebasedFrom?: number;
  fullReason?: string;
  /** Why a change-tracking source was read in full (tracking reset, no marker...). */
  rescanReason?: string;
  resumed: boolean;
  /**
   * How an incremental that read the whole disk found its unchanged chunks: by this node's change hashes of the
   * parent (memory speed), or by chunk ids (keyed BLAKE3) where it holds none. Absent when it read only changes.
   */
  comparedBy?: 'change-hashes' | 'chunk-ids';
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
  /**
   * Set when the source (a raw file) was written while this run read it (its identity, mtime included, changed): the
   * point holds each chunk as it was read, not the file as it was at one moment (SOURCE_CHANGED_WARNING).
   */
  sourceChangedWhileRead?: true;
}

/** What an interrupted run leaves (sealed, as the pending object of its point) for the next run to continue from. */
export interface Checkpoint {
  format: 'rnode-pending';
  /**
   * The disk's id. An encrypted repository names a disk by a keyed hash: a prune learns the disk of a first point that
   * has no manifest yet only from here (without it, one stopped first replicate held up every sweep of the repository).
   */
  disk?: string;
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

/** The figures of a run, kept in its checkpoints so a resumed run reports the whole point. */
export interface RunStats {
  bytesRead: number;
  bytesWritten: number;
  chunksChanged: number;
  chunksZero: number;
  chunksData: number;
  chunksDeduplicated: number;
  bytesDeduplicated: number;
  packsWritten: number;
}

/** What one chunk adds to a run's RunStats. */
export type Delta = Partial<RunStats>;

/** What a replicate whose source was written while it was read (sourceChangedWhileRead) says, after the point. */
export const SOURCE_CHANGED_WARNING =
  'the source was written while it was read: the point holds each chunk as it was read, which may be no state the disk ' +
  'was ever in; for a consistent point, replicate a snapshot or a disk nothing writes (a stopped VM, an NBD export of a snapshot)';
