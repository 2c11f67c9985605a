// Prune's marks: what prune knows of a domain's unused packs. A pack is first *seen* unused (writers may still use
// it), *marked* when still unused a grace period later (writers must not reuse it, nor commit a point that needs it),
// and deleted when still unused a grace period after that; its tombstone (*deleted*) stays a while so a writer
// holding an older index never reuses it. One object per domain, r2/<domain>/prune/marks, in an envelope
// (PRUNE_MARKS; sealed in an encrypted domain). Rules and the race they answer: docs/prune.md.
// Body: u32 LE count | count entries of 25 bytes (pack id (16) | u8 state | u64 LE ms since the epoch) | u64 LE
// generation; states: 1 marked, 2 deleted, 3 seen. The generation goes up by one on every write; marks written before
// generations end after the entries and read as generation 0.
// Replays: an older marks object put back (replayed, or a stale copy) is authentic and opens, and its older 'marked'
// entries would let the next prune delete a pack without the grace period writers rely on (issue #14). So writers
// record the generation they read in every checkpoint and manifest, and never accept a generation below one they saw;
// prune fails (PRUNE_MARKS_REPLAYED) when a checkpoint or manifest recorded a newer generation than the marks hold.
// What is left: a replay no writer has seen past yet (no point or checkpoint recorded a newer generation), or one made
// together with deleting the points and checkpoints that did, goes unseen (docs/prune.md, "Replayed marks").
import { ErrorCodes, RnodeError, isRnodeError } from '../errors.js';
import type { ObjectStore } from '../store/types.js';
import type { Domain } from './domain.js';
import { EnvelopeKind, envelopeContext, openEnvelope, sealEnvelope } from './envelope.js';
import { OBJECT_ID_BYTES, isObjectId, r2, type ObjectId } from './names.js';

const MARKS_NAME = 'marks';
const ENTRY_BYTES = OBJECT_ID_BYTES + 1 + 8;
const GENERATION_BYTES = 8;
const STATE_MARKED = 1;
const STATE_DELETED = 2;
const STATE_SEEN = 3;

export type MarkState = 'seen' | 'marked' | 'deleted';
const STATE_IDS: Record<MarkState, number> = { marked: STATE_MARKED, deleted: STATE_DELETED, seen: STATE_SEEN };
const STATE_NAMES: Record<number, MarkState> = { [STATE_MARKED]: 'marked', [STATE_DELETED]: 'deleted', [STATE_SEEN]: 'seen' };

export interface PackMark {
  state: MarkState;
  /** When the pack entered this state, in ms since the epoch. */
  at: number;
}

/** Pack id -> what prune knows of it, and the generation of the marks object it was read from (0: none, or written before generations). */
export class PruneMarks {
  constructor(
    readonly packs: Map<ObjectId, PackMark> = new Map(),
    public generation = 0,
  ) {}

  /**
   * True when a writer must not use this pack: not as a dedup target, and not in a point it commits (a run that
   * reused or wrote a blob of it refuses to commit): it is marked for deletion, or deleted.
   */
  blocks(packId: ObjectId): boolean {
    const s = this.packs.get(packId)?.state;
    return s === 'marked' || s === 'deleted';
  }

  get size(): number {
    return this.packs.size;
  }
}

export function pruneMarksKey(domain: string): string {
  return r2.prune(domain, MARKS_NAME);
}

export function encodePruneMarks(domain: Domain, marks: PruneMarks): Buffer {
  const body = Buffer.alloc(4 + marks.size * ENTRY_BYTES + GENERATION_BYTES);
  body.writeUInt32LE(marks.size, 0);
  let o = 4;
  for (const [id, m] of [...marks.packs].sort(([a], [b]) => (a < b ? -1 : 1))) {
    Buffer.from(id, 'hex').copy(body, o);
    body.writeUInt8(STATE_IDS[m.state], o + 16);
    body.writeBigUInt64LE(BigInt(Math.max(0, Math.floor(m.at))), o + 17);
    o += ENTRY_BYTES;
  }
  body.writeBigUInt64LE(BigInt(marks.generation), o);
  return sealEnvelope(EnvelopeKind.PRUNE_MARKS, envelopeContext.prune(domain.name, MARKS_NAME), body, domain.key);
}

export function decodePruneMarks(b: Buffer, domain: Domain): PruneMarks {
  const what = pruneMarksKey(domain.name);
  const body = openEnvelope(b, EnvelopeKind.PRUNE_MARKS, envelopeContext.prune(domain.name, MARKS_NAME), what, domain.key);
  const bad = (why: string) =>
    new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `prune marks ${what} are corrupt (${why}); run "rnode check"`, { details: { key: what } });
  if (body.length < 4) throw bad('truncated');
  const count = body.readUInt32LE(0);
  const entriesEnd = 4 + count * ENTRY_BYTES;
  if (body.length !== entriesEnd && body.length !== entriesEnd + GENERATION_BYTES) throw bad('length does not match the entry count');
  const generation = body.length === entriesEnd ? 0 : Number(body.readBigUInt64LE(entriesEnd));
  if (!Number.isSafeInteger(generation)) throw bad('generation out of range');
  const packs = new Map<ObjectId, PackMark>();
  for (let i = 0, o = 4; i < count; i++, o += ENTRY_BYTES) {
    const id = body.subarray(o, o + OBJECT_ID_BYTES).toString('hex');
    const state = body.readUInt8(o + 16);
    const at = Number(body.readBigUInt64LE(o + 17));
    if (!isObjectId(id) || !STATE_NAMES[state] || !Number.isSafeInteger(at)) throw bad(`entry ${i} is invalid`);
    packs.set(id, { state: STATE_NAMES[state], at });
  }
  return new PruneMarks(packs, generation);
}

/** The domain's marks as stored now (none yet: empty). Writers call this at start, at each checkpoint and before commit. */
export async function readPruneMarks(store: ObjectStore, domain: Domain): Promise<PruneMarks> {
  let bytes: Buffer;
  try {
    bytes = await store.get(pruneMarksKey(domain.name));
  } catch (err) {
    if (isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) return new PruneMarks();
    throw err;
  }
  return decodePruneMarks(bytes, domain);
}

/** Writes the marks as the next generation (marks.generation goes up by one first). */
export async function writePruneMarks(store: ObjectStore, domain: Domain, marks: PruneMarks): Promise<void> {
  marks.generation++;
  await store.put(pruneMarksKey(domain.name), encodePruneMarks(domain, marks));
}

/**
 * Fails when the marks are older than a generation already recorded (`recorded`, e.g. "recorded by point 3 of disk
 * d"): an older marks object was put back, and its marks cannot be trusted to be a grace period old. `outcome` says
 * what the caller left undone.
 */
export function checkMarksGeneration(domain: Domain, marks: PruneMarks, generation: number, recorded: string, outcome: string): void {
  if (marks.generation >= generation) return;
  const key = pruneMarksKey(domain.name);
  throw new RnodeError(
    ErrorCodes.PRUNE_MARKS_REPLAYED,
    `prune marks ${key} are generation ${marks.generation}, older than generation ${generation} ${recorded}: an older marks object was put back ` +
      `(replayed, or restored from a stale copy); ${outcome}. Put the current marks object back, or run "rnode prune --reset-marks" to start the marks afresh`,
    { details: { key, generation: marks.generation, recorded: generation } },
  );
}

/**
 * The marks as one writer reads them through its run (at its start, at each checkpoint and before its commit): their
 * generation never goes below one it read or recorded before, else PRUNE_MARKS_REPLAYED. `generation` is what the
 * writer records in its checkpoints and manifest.
 */
export class WriterMarks {
  constructor(
    private readonly store: ObjectStore,
    private readonly domain: Domain,
    public generation: number,
    private recorded: string,
  ) {}

  /** Reads the marks again; returns the packs the writer must not use (marked or deleted). */
  async blockedPacks(): Promise<Set<ObjectId>> {
    const marks = await readPruneMarks(this.store, this.domain);
    checkMarksGeneration(this.domain, marks, this.generation, this.recorded, 'the point was not committed');
    if (marks.generation > this.generation) {
      this.generation = marks.generation;
      this.recorded = 'read earlier by this replicate';
    }
    return new Set([...marks.packs.keys()].filter((id) => marks.blocks(id)));
  }
}
