// The packs of one replicate run: new chunks' blobs appended to the open pack, closed packs put to the store, and
// the domain's chunk index, which says where every stored chunk is, so a chunk already stored (by any point of any
// disk) is reused instead of stored again. Each pack is built in one of the run's pack buffers (packPlan): a closed
// pack's put holds its buffer, and the next pack waits for a free one. That wait is how a slow store holds up the
// appends, and with them the reader.
import type { ObjectStore } from '../../store/types.js';
import { failpoint } from '../../failpoint.js';
import { BufferPool } from '../../pipeline/buffer-pool.js';
import type { IdFilter } from '../../pipeline/id-filter.js';
import type { ChunkEntry } from '../../format/table.js';
import type { Domain } from '../../repository/domain.js';
import type { ChunkIndex, ChunkLocation } from '../../repository/index-file.js';
import { r2 } from '../../repository/names.js';
import { discardPages } from '../../native/index.js';
import { PackBuilder } from '../../repository/pack.js';
import type { WriterMarks } from '../../repository/prune-marks.js';
import type { RunState } from './run-state.js';

export interface PackWriterOptions {
  store: ObjectStore;
  domain: Domain;
  /** Every chunk already in the domain; this run's new chunks are added as they are appended. */
  index: ChunkIndex;
  /** The ids the codec workers see, so they compress only chunks that are probably new (the index still decides). */
  known: IdFilter;
  /** Prune's marks: a marked pack's chunks are never reused. */
  marks: WriterMarks;
  /** Packs of other runs reused by the checkpoint this run continues. */
  reused: string[];
  packSize: number;
  packBuffers: number;
  run: RunState;
  /** The run's stop signal: packs still waiting to be sent are dropped (PutOptions.stop). */
  stop?: AbortSignal;
}

/** What the packs closed since the last index object hold, and their puts. */
export interface ClosedPacks {
  puts: Promise<void>[];
  locations: ChunkLocation[];
}

export class PackWriter {
  /** Packs written by other runs that this point's chunks are in (re-checked against prune's marks at commit). */
  readonly reused: Set<string>;
  /** Where the blobs this run reuses from each pack end, at the furthest: the pack must be at least that long. */
  readonly reusedEnds = new Map<string, number>();
  /** Packs whose put failed, with the error: their chunks are not stored and no index object names them. */
  readonly failedPuts = new Map<string, unknown>();
  private readonly written = new Set<string>();
  private readonly slots: BufferPool<{ buffer?: Buffer }>;
  private open: { pack: PackBuilder; slot: { buffer?: Buffer } } | undefined;
  private closed: ClosedPacks = { puts: [], locations: [] };
  private marked = new Set<string>();
  /**
   * Appends take turns, so the lookup and the add of an id are one step, and two chunks with the same content in
   * flight at once are stored once. The turn goes to the lowest chunk index waiting: a checkpoint covers chunks in
   * index order, so an early chunk encoded late must not queue behind the chunks after it (a cut among their puts
   * then left nothing to checkpoint).
   */
  private readonly turns = new BufferPool(1, () => ({}));

  constructor(private readonly o: PackWriterOptions) {
    this.reused = new Set(o.reused);
    this.slots = new BufferPool<{ buffer?: Buffer }>(o.packBuffers, () => ({}));
  }

  /**
   * The run is over: its idle pack buffers' pages go back to the system now rather than when a GC finds the buffers
   * (a long-running agent's RSS followed GC timing). A put still running keeps its buffer, and so does the open pack
   * of a failed run: the GC frees those.
   */
  releaseBuffers(): void {
    this.slots.close((slot) => slot.buffer && discardPages(slot.buffer));
  }

  /** The packs this run wrote (re-checked against prune's marks at commit, like the reused ones). */
  get ownPacks(): ReadonlySet<string> {
    return this.written;
  }

  /** Reads prune's marks again: chunks in packs marked since are stored anew from now on. */
  async refreshMarks(): Promise<void> {
    this.marked = await this.o.marks.blockedPacks();
  }

  /** True when the repository's index has the chunk id somewhere (a dropped one it has not). */
  holds(id: Buffer): boolean {
    return this.o.index.has(id);
  }

  /** A place to reuse chunk id from: any location whose pack prune has not marked. */
  reusable(id: Buffer): ChunkLocation | undefined {
    return this.o.index.lookup(id).find((l) => !this.marked.has(l.packId));
  }

  /** Records that this point's chunk is at l (a pack of another run is then re-checked before the commit). */
  reuse(l: ChunkLocation): void {
    if (this.written.has(l.packId)) return;
    this.reused.add(l.packId);
    this.reusedEnds.set(l.packId, Math.max(this.reusedEnds.get(l.packId) ?? 0, l.entry.offset + l.entry.length));
  }

  /**
   * Appends a new chunk's blob to the open pack (opening one when a pack buffer is free), or returns where the chunk
   * already is.
   */
  async append(
    chunkIndex: number,
    id: Buffer,
    blob: Buffer,
    meta: { plainLength: number; codec: number; payloadXxh64: bigint },
  ): Promise<ChunkLocation | undefined> {
    const turn = await this.turns.acquire(chunkIndex);
    try {
      const stored = this.reusable(id);
      if (stored) return stored;
      if (this.open?.pack.wouldOverflow(blob.length, this.o.store.maxPutBytes)) this.close();
      if (!this.open) {
        const slot = await this.slots.acquire();
        this.open = { pack: new PackBuilder(this.o.domain.name, this.o.packSize, this.o.domain.key, undefined, slot.buffer), slot };
      }
      const { pack } = this.open;
      const e = pack.add(blob, { id, ...meta });
      this.o.index.add({ packId: pack.id, entry: e });
      this.o.known.add(id);
      this.written.add(pack.id);
      if (pack.size >= this.o.packSize) this.close();
      return undefined;
    } finally {
      this.turns.release(turn);
    }
  }

  /** The packs of this run the chunks of entries are in: a checkpoint of those records needs them stored. */
  packsOf(entries: ChunkEntry[]): Set<string> {
    const needed = new Set<string>();
    for (const e of entries) for (const l of e.id ? this.o.index.lookup(e.id) : []) if (this.written.has(l.packId)) needed.add(l.packId);
    return needed;
  }

  /** True when the chunk of e is in a pack of this run whose put failed: it is not stored. */
  lost(e: ChunkEntry): boolean {
    return e.id !== undefined && this.o.index.lookup(e.id).some((l) => this.failedPuts.has(l.packId));
  }

  /** Closes the open pack and hands over every pack closed since the last call: the next index object names them. */
  takeClosed(): ClosedPacks {
    this.close();
    const closed = this.closed;
    this.closed = { puts: [], locations: [] };
    return closed;
  }

  /** Closes the open pack and starts its put, which gives the pack's buffer back when it ends. */
  private close(): void {
    if (!this.open || this.open.pack.count === 0) return;
    const { pack: closing, slot } = this.open;
    this.open = undefined;
    for (const entry of closing.entries) this.closed.locations.push({ packId: closing.id, entry });
    const { run } = this.o;
    const put = (async () => {
      // A failed put's buffer is neither reused nor discarded: a store may still hold it (a ws send queued past a timeout).
      slot.buffer = undefined;
      try {
        const bytes = closing.finish();
        await this.o.store.put(r2.pack(this.o.domain.name, closing.id), bytes, this.o.stop ? { stop: this.o.stop } : undefined);
        slot.buffer = closing.buffer;
        run.stored(bytes.length);
        run.stats.packsWritten++;
        failpoint('after-pack');
      } finally {
        this.slots.release(slot);
      }
    })();
    put.catch((err) => {
      this.failedPuts.set(closing.id, err);
      run.fail(err);
    });
    this.closed.puts.push(put);
  }
}
