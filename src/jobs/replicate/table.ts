// The table of the point a replicate run writes, and its checkpoints. Records arrive in chunk index order; every
// few thousand (or every checkpointMillis) they become a table segment, and each segment is made durable in the order
// a crash needs: the packs its chunks are in, one index object for the packs closed since the last one, the segment,
// then the checkpoint that lets the next run continue after it. A pack whose put failed (a stopped run's pack waiting
// for bandwidth, a store that failed) cuts the records there: the checkpoint covers the records before the first chunk
// in it, and no later checkpoint is written.
import type { BlockSource } from '../../source/types.js';
import type { ObjectStore } from '../../store/types.js';
import { failpoint } from '../../failpoint.js';
import type { SegmentRef } from '../../format/manifest.js';
import { isZeroEntry, type ChunkEntry } from '../../format/table.js';
import { encodeIndex } from '../../repository/index-file.js';
import { r2 } from '../../repository/names.js';
import { newObjectId } from '../../repository/pack.js';
import { encodePendingV2, encodeTableV3, segmentDigest } from '../../repository/point-format.js';
import type { Lease } from '../../repository/lease.js';
import type { WriterMarks } from '../../repository/prune-marks.js';
import type { Checkpoint, RunStats } from './options.js';
import type { ClosedPacks, PackWriter } from './packs.js';
import type { PointPlan, ResumeFrom } from './plan.js';
import type { RunState } from './run-state.js';

export interface TableWriterOptions {
  store: ObjectStore;
  source: BlockSource;
  /** The source's identity: a checkpoint is continued only by a run reading the same data. */
  identity: string | undefined;
  plan: PointPlan;
  from: ResumeFrom;
  packs: PackWriter;
  marks: WriterMarks;
  run: RunState;
  /** The disk's lease: checked before every segment and checkpoint, whose keys a new holder writes too. */
  lease: Lease | undefined;
  /** Records per segment and checkpoint, and at most this long between checkpoints while records wait. */
  checkpointRecords: number;
  checkpointMillis: number;
}

export class TableWriter {
  readonly segments: SegmentRef[];
  /** Records in the segments written or being written. */
  records: number;
  /** Set when a checkpoint could not be written: no later one is tried. */
  checkpointFailure: unknown = undefined;
  /** Checkpoints this run made durable. */
  checkpointsWritten = 0;
  private pending: ChunkEntry[] = [];
  /** The run's figures as each pending record's chunk was settled, before it counted: a cut there keeps these. */
  private pendingFigures: RunStats[] = [];
  /** Set when a checkpoint was cut at a pack whose put failed: the records after it are not stored. */
  private cut = false;
  /**
   * A table that stands alone though the run compares with a parent (a closed chain) carries the parent's entries:
   * they arrive here as the scan's merge reads them (carry), a little ahead of the chunks settling.
   */
  private carried: ChunkEntry[] = [];
  private carriedHead = 0;
  private lastCheckpoint = Date.now();
  /** Records covered by a durable checkpoint. */
  private recordsDone: number;
  /** The first chunk after the last durable checkpoint's (the resumed one's at first). */
  private checkpointedTo: number;
  /** Segments become durable one after the other, in order. */
  private chain: Promise<void> = Promise.resolve();
  /**
   * The packs this run wrote that its checkpoints' records name. A checkpoint lists them with the reused ones: to a
   * run that continues it they are another run's packs, checked before its commit (prune may have deleted one before
   * the checkpoint named it, and the run was then cut).
   */
  private readonly ownNamed = new Set<string>();

  constructor(private readonly o: TableWriterOptions) {
    this.segments = [...o.from.segments];
    this.records = o.from.records;
    this.recordsDone = o.from.records;
    this.checkpointedTo = o.from.nextIndex;
  }

  /** Records not yet in a segment (carried ones included). */
  get waiting(): number {
    return this.pending.length + this.carried.length - this.carriedHead;
  }

  /** The parent's next entry, in index order (only for a table that stands alone: plan.tableParent null). */
  carry(e: ChunkEntry): void {
    this.carried.push(e);
  }

  /**
   * Chunk `index` is decided, in index order: e is its new record, or null when the run stores nothing for it
   * (unchanged, or zero as before). A delta table records e; a table standing alone records the chunk's content
   * whatever it is (e, else the parent's entry), and no zero records.
   */
  settle(index: number, e: ChunkEntry | null): void {
    if (this.o.plan.tableParent !== null) {
      if (e) this.record(e);
      return;
    }
    this.carryBefore(index);
    const parentEntry = this.carried[this.carriedHead]?.index === index ? this.carried[this.carriedHead++] : undefined;
    const kept = e ?? parentEntry;
    if (kept && !isZeroEntry(kept)) this.record(kept);
  }

  private record(e: ChunkEntry): void {
    this.pending.push(e);
    this.pendingFigures.push({ ...this.o.run.stats });
  }

  /** Records the carried entries before `index`: chunks the run never decided, so unchanged. */
  private carryBefore(index: number): void {
    const q = this.carried;
    while (this.carriedHead < q.length && q[this.carriedHead].index < index) {
      const c = q[this.carriedHead++];
      // Below the resumed checkpoint's end the segments already hold them.
      if (c.index >= this.o.from.nextIndex && !isZeroEntry(c)) this.record(c);
    }
    if (this.carriedHead > 1024 && this.carriedHead * 2 > q.length) {
      this.carried = q.slice(this.carriedHead);
      this.carriedHead = 0;
    }
  }

  /** A segment is due: enough records wait, or some have waited checkpointMillis. */
  get due(): boolean {
    return (
      this.pending.length >= this.o.checkpointRecords || (this.pending.length > 0 && Date.now() - this.lastCheckpoint >= this.o.checkpointMillis)
    );
  }

  /** Resolves when every segment begun so far is durable, or its writing failed (checkpointFailure). */
  settled(): Promise<void> {
    return this.chain;
  }

  /** Turns the waiting records into a segment, and writes it with its checkpoint (chunks before nextIndex covered). */
  flush(nextIndex: number): void {
    if (this.o.plan.tableParent === null) this.carryBefore(nextIndex);
    const batch: Batch = {
      entries: this.pending,
      figures: this.pendingFigures,
      nextIndex,
      settled: { ...this.o.run.stats },
      // Every chunk these records name is in a pack closed now or before: the index object written next covers them.
      closed: this.o.packs.takeClosed(),
    };
    this.pending = [];
    this.pendingFigures = [];
    this.lastCheckpoint = Date.now();
    // Checkpoints go on after a chunk failed (they cover chunks already stored); only their own failure stops them.
    this.chain = this.chain
      .then(() => this.write(batch))
      .catch((err) => {
        this.checkpointFailure ??= err;
        this.o.run.fail(err);
      }); // stops the scan
  }

  /**
   * Makes a batch durable: its packs' index object, its segment, then the checkpoint. The puts are small and go at
   * once past a bandwidth limit (control): a stopped run's last checkpoint does not wait behind the packs it dropped.
   */
  private async write(batch: Batch): Promise<void> {
    if (this.checkpointFailure || this.cut) return;
    const { store, plan, packs, run } = this.o;
    const { domain, disk, seq } = plan;
    await Promise.allSettled(batch.closed.puts);
    // The index object names only the packs stored.
    const stored = batch.closed.locations.filter((l) => !packs.failedPuts.has(l.packId));
    if (stored.length) {
      const indexId = newObjectId();
      const ib = encodeIndex(domain, indexId, stored);
      await store.put(r2.index(domain.name, indexId), ib, { control: true });
      run.stats.bytesWritten += ib.length;
      failpoint('after-index');
    }
    // A pack closed since the last checkpoint may hold only chunks encoded ahead of these records: its failed put is
    // not this checkpoint's. One that holds a chunk of these records cuts them before that chunk.
    const lost = packs.failedPuts.size ? batch.entries.findIndex((e) => packs.lost(e)) : -1;
    const entries = lost < 0 ? batch.entries : batch.entries.slice(0, lost);
    const nextIndex = lost < 0 ? batch.nextIndex : batch.entries[lost].index;
    const figures = lost < 0 ? batch.settled : batch.figures[lost];
    if (lost >= 0) {
      this.cut = true;
      // Cut where the last checkpoint ends: nothing to add (a checkpoint of no progress made the next run say it
      // resumed while it read the point again).
      if (nextIndex <= this.checkpointedTo) return;
    }
    const place = { disk, point: seq, parent: plan.tableParent, generation: 0, segment: this.segments.length };
    const bytes = encodeTableV3(domain, place, entries);
    const ref: SegmentRef = {
      key: r2.segment(domain.name, domain.dname(disk), seq, 0, place.segment),
      records: entries.length,
      first: entries.length ? entries[0].index : -1,
      last: entries.length ? entries[entries.length - 1].index : -1,
      digest: segmentDigest(bytes),
    };
    this.segments.push(ref);
    this.records += entries.length;
    // The packs of this run its records' chunks are in: the checkpoint needs those stored, and only those.
    for (const id of packs.packsOf(entries)) this.ownNamed.add(id);
    await this.o.lease?.held();
    await store.put(ref.key, bytes, { control: true });
    run.stats.bytesWritten += bytes.length;
    failpoint('after-segment');
    await this.o.lease?.held();
    const checkpoint: Checkpoint = {
      format: 'rnode-pending',
      disk,
      point: seq,
      parent: place.parent,
      scan: plan.scan,
      diskSize: plan.grid.diskSize,
      chunkSize: plan.grid.chunkSize,
      source: { kind: this.o.source.kind, location: this.o.source.location, ...(this.o.identity ? { identity: this.o.identity } : {}) },
      ...(domain.key ? { keyId: domain.key.keyId } : {}),
      segments: [...this.segments],
      records: this.recordsDone + entries.length,
      nextIndex,
      // The figures of the chunks it covers (settled in index order); bytes and packs written are the durable ones.
      stats: { ...figures, bytesWritten: run.stats.bytesWritten, packsWritten: run.stats.packsWritten },
      reused: [...new Set([...packs.reused, ...this.ownNamed])],
      marksGeneration: this.o.marks.generation,
    };
    await store.put(r2.pending(domain.name, domain.dname(disk), seq), encodePendingV2(domain, disk, seq, checkpoint), { control: true });
    this.recordsDone += entries.length;
    this.checkpointedTo = nextIndex;
    this.checkpointsWritten++;
    failpoint('after-checkpoint');
    // Prune may have marked packs since: chunks in them are stored again from now on.
    await packs.refreshMarks();
  }
}

/** The records of one flush, with what their checkpoint needs. */
interface Batch {
  entries: ChunkEntry[];
  /** figures[i]: the run's figures before entries[i]'s chunk. */
  figures: RunStats[];
  /** The first chunk after these records' chunks. */
  nextIndex: number;
  /** The run's figures of every chunk before nextIndex. */
  settled: RunStats;
  closed: ClosedPacks;
}
