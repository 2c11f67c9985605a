// `rnode check`: the whole repository's structure. Per v2 domain: the config, every index object and pack trailer
// opens, every index entry matches its pack's trailer, every chunk a committed point references has a copy in an
// existing pack; with readData every blob is read, its stored xxh64 checked, decrypted, decoded and its chunk id
// recomputed. Legacy disks go through verify (--point all). Every problem is reported, not just the first.
import type { EncryptionKey } from '../crypto/keys.js';
import { ErrorCodes, RnodeError, isRnodeError } from '../errors.js';
import type { ChunkEntry } from '../format/table.js';
import { copyBytes } from '../native/index.js';
import { decodeBlobInto, newReadSlot, recycleReadSlot, withWorkerDomain, type ReadSlot } from '../pipeline/chunk-codec.js';
import type { ObjectStore } from '../store/types.js';
import { Domain } from '../repository/domain.js';
import { ChunkIndex, listIndexIds, openIndex, type ChunkLocation, type IndexPart } from '../repository/index-file.js';
import { PLAIN_DOMAIN, classify, r2, type ObjectId } from '../repository/names.js';
import { readPruneMarks } from '../repository/prune-marks.js';
import {
  BLOB_ENTRY_BYTES,
  PACK_TAIL_BYTES,
  blobEntryAt,
  decodePack,
  encodeTrailerBody,
  readPackTrailer,
  type BlobEntry,
} from '../repository/pack.js';
import {
  checkKeyOpensOne,
  listDomains,
  listLegacyDisks,
  listV2Disks,
  listV2PointSeqs,
  loadV2Point,
  staleDiskObjects,
  v2DiskId,
  type V2DiskObjects,
} from '../repository/points.js';
import { isDamage, referencesChunk, tableEntries } from '../repository/view.js';
import { repairDomain, type RepairResult } from './repair.js';
import { verify } from './verify.js';

const MAX_PROBLEMS = 1000;

export interface CheckProblem {
  code: string;
  message: string;
  key?: string;
}

export interface DomainCheck {
  domain: string;
  disks: number;
  points: number;
  packs: number;
  indexObjects: number;
  indexEntries: number;
  /** References from committed points' own tables to chunk ids (each checked to have a copy). */
  chunksReferenced: number;
  /** Index entries of packs that no longer exist (left until the next index compaction; not a problem). */
  danglingIndexEntries: number;
  /** Blobs in packs that no index lists (a writer's pack before its checkpoint, or a repack's before its index). */
  unindexedBlobs: number;
  /**
   * Table segments no committed point names (left by a prune that stopped between a disk's manifests and its tables;
   * the next prune deletes them). Not a problem: no point reads them.
   */
  unreferencedTableSegments: number;
  blobsRead: number;
  bytesRead: number;
  /**
   * Listed, then gone before they were read: a prune running beside the check deleted them. Not problems: the check
   * goes on without them, and a chunk a point still needs from such a pack is reported missing.
   */
  removedDuringCheck: { packs: number; indexObjects: number; points: number };
  /** With repair: what repairDomain did with the damaged blobs readData found. */
  repair?: RepairResult;
}

export interface CheckResult {
  ok: boolean;
  readData: boolean;
  domains: DomainCheck[];
  /** Encrypted domains of other keys than the one given: not checked. */
  skipped: Array<{ domain: string; code: string }>;
  legacy: { disks: number; points: number; chunksChecked: number };
  problems: CheckProblem[];
  seconds: number;
}

export interface CheckOptions {
  store: ObjectStore;
  encryption?: EncryptionKey;
  readData?: boolean;
  /**
   * With readData: rewrite each pack holding a damaged blob without it (repairDomain), so that the next replicate of
   * that data stores it anew instead of reusing the damaged copy. The only thing check writes.
   */
  repair?: boolean;
  /** Stops between objects (check only reads, unless repair). */
  signal?: AbortSignal;
}

/**
 * Readers' errors advise running check; inside check's own report that advice is noise. Advice to run it with --repair
 * is what to do next, and stays (cut, it left "...: it indexes the intact chunks again" with no command).
 */
export function withoutCheckAdvice(message: string): string {
  return message.replace(/; run "rnode check(?![^"]*--repair)[^"]*"( and )?/, (_m, and: string | undefined) => (and ? '; ' : ''));
}

export async function check(opts: CheckOptions): Promise<CheckResult> {
  const started = performance.now();
  const { store } = opts;
  const key = opts.encryption;
  const problems: CheckProblem[] = [];
  const report = (err: unknown) => {
    if (!(err instanceof RnodeError)) throw err;
    if (problems.length < MAX_PROBLEMS)
      problems.push({
        code: err.code,
        message: withoutCheckAdvice(err.message),
        ...(typeof err.details.key === 'string' ? { key: err.details.key } : {}),
      });
  };
  const domains = await listDomains(store);
  const skipped = domains.filter((d) => d !== PLAIN_DOMAIN && d !== key?.domain).map((domain) => ({ domain, code: ErrorCodes.KEY_REQUIRED }));
  const legacyDisks = await listLegacyDisks(store);
  // "ok" for a store with nothing in it would pass a check of the wrong folder, or of a mount point whose volume is
  // not mounted: there is nothing to vouch for.
  if (domains.length === 0 && legacyDisks.length === 0) {
    throw new RnodeError(
      ErrorCodes.STORE_EMPTY,
      `${store.location} holds no rnode data: no repository and no legacy disk to check; check --store (the folder, bucket or prefix ` +
        'that holds the points, and that its volume is mounted)',
    );
  }
  if (!key && skipped.length > 0) {
    throw new RnodeError(
      ErrorCodes.KEY_REQUIRED,
      `the store holds encrypted repositories (${skipped.map((s) => s.domain).join(', ')}); pass the key with --encryption-key-file to check them`,
    );
  }
  if (opts.repair && !opts.readData)
    throw new RnodeError(ErrorCodes.USAGE, '--repair needs --read-data: only reading every blob finds the damaged ones');
  checkKeyOpensOne(store.location, domains, key);
  const out: CheckResult = {
    ok: false,
    readData: opts.readData === true,
    domains: [],
    skipped,
    legacy: { disks: legacyDisks.length, points: 0, chunksChecked: 0 },
    problems,
    seconds: 0,
  };
  for (const name of domains.filter((d) => d === PLAIN_DOMAIN || d === key?.domain)) {
    out.domains.push(
      await checkDomain(store, name === PLAIN_DOMAIN ? undefined : key, name, opts.readData === true, report, opts.signal, opts.repair === true),
    );
  }
  for (const disk of legacyDisks) {
    opts.signal?.throwIfAborted();
    let r = await verify({ store, disk, point: 'all', encryption: key, signal: opts.signal }).catch((err) => err as Error);
    // A key is for the encrypted disks: an unencrypted legacy disk is checked without it.
    if (key && isRnodeError(r, ErrorCodes.KEY_MISMATCH))
      r = await verify({ store, disk, point: 'all', signal: opts.signal }).catch((err) => err as Error);
    opts.signal?.throwIfAborted();
    if (r instanceof Error) {
      report(r);
      continue;
    }
    out.legacy.points += r.points.length;
    out.legacy.chunksChecked += r.chunksChecked;
    for (const p of r.problems)
      if (problems.length < MAX_PROBLEMS) problems.push({ code: p.code, message: `legacy disk ${disk}: ${withoutCheckAdvice(p.message)}` });
  }
  out.ok = problems.length === 0;
  out.seconds = (performance.now() - started) / 1000;
  return out;
}

const sameEntry = (a: BlobEntry, b: BlobEntry) =>
  a.id.equals(b.id) &&
  a.offset === b.offset &&
  a.length === b.length &&
  a.plainLength === b.plainLength &&
  a.codec === b.codec &&
  a.flags === b.flags &&
  a.payloadXxh64 === b.payloadXxh64;

/** What each step of a domain's check shares: where, with which key, its counts and the problem sink. */
interface DomainScope {
  store: ObjectStore;
  name: string;
  domain: Domain;
  c: DomainCheck;
  report: (err: unknown) => void;
  signal?: AbortSignal;
  /**
   * Index objects read so far: their ids, and the bodies of those that opened (80 bytes an entry, no object each: a
   * million chunks were 555 MB as one ChunkLocation each), until the ChunkIndex is made of them.
   */
  indexIds: ObjectId[];
  parts: IndexPart[];
  /** Packs and index objects listed but gone when read (a concurrent prune deleted them). */
  vanishedPacks: Set<ObjectId>;
  vanishedIndexes: Set<ObjectId>;
  /** Blobs found damaged by readData (offsets by pack): what repair leaves out. */
  damaged: Map<ObjectId, Set<number>>;
  /** Index objects that could not be read (damaged): what repair deletes once their blobs are indexed again. */
  damagedIndexes: ObjectId[];
  /** Packs whose trailer could not be read (damaged, or forged), with the error and their size: see standInTrailers. */
  damagedTrailers: Map<ObjectId, { err: RnodeError; size: number }>;
}

/** A listed object whose read found it gone: deleted since the listing (the store is read-after-write consistent). */
const isGone = (err: unknown) => isRnodeError(err, ErrorCodes.STORE_NOT_FOUND);

/** What the index says of a trailer's entry: an index entry names it (INDEXED), and one also matches it (GOOD). */
const INDEXED = 1;
const GOOD = 3;

/**
 * A pack's trailer entries kept compact: their 64-byte records in offset order, with no object each (a store of a
 * million chunks has a million), and one mark per entry for what the index says of it.
 */
class PackTrailer {
  readonly count: number;
  readonly #records: Buffer;
  readonly marks: Uint8Array;

  constructor(entries: readonly BlobEntry[]) {
    this.count = entries.length;
    this.#records = encodeTrailerBody(entries);
    this.marks = new Uint8Array(entries.length);
  }

  #offset(i: number): number {
    return this.#records.readUInt32LE(4 + i * BLOB_ENTRY_BYTES + 32);
  }

  /** The position of the entry at offset, or -1 (offsets ascend: decodeTrailerBody checks it). */
  find(offset: number): number {
    let lo = 0;
    let hi = this.count;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.#offset(mid) < offset) lo = mid + 1;
      else hi = mid;
    }
    return lo < this.count && this.#offset(lo) === offset ? lo : -1;
  }

  entry(i: number): BlobEntry {
    return blobEntryAt(this.#records, 4 + i * BLOB_ENTRY_BYTES);
  }
}

/** Pack id -> its trailer; undefined for a pack whose trailer was reported unreadable. */
type Trailers = Map<ObjectId, PackTrailer | undefined>;

/** Whether a location is one its pack's trailer confirms (matchIndexToTrailers marked it). */
function isGood(trailers: Trailers, l: ChunkLocation): boolean {
  const t = trailers.get(l.packId);
  const i = t ? t.find(l.entry.offset) : -1;
  return i >= 0 && t!.marks[i] === GOOD;
}

async function checkDomain(
  store: ObjectStore,
  key: EncryptionKey | undefined,
  name: string,
  readData: boolean,
  report: (err: unknown) => void,
  signal: AbortSignal | undefined,
  repair = false,
): Promise<DomainCheck> {
  const c: DomainCheck = {
    domain: name,
    disks: 0,
    points: 0,
    packs: 0,
    indexObjects: 0,
    indexEntries: 0,
    chunksReferenced: 0,
    danglingIndexEntries: 0,
    unindexedBlobs: 0,
    unreferencedTableSegments: 0,
    blobsRead: 0,
    bytesRead: 0,
    removedDuringCheck: { packs: 0, indexObjects: 0, points: 0 },
  };
  let domain: Domain;
  try {
    domain = await Domain.openListed(store, key);
  } catch (err) {
    // A config that is damaged or missing: its own error says which.
    report(err);
    return c;
  }
  const scope: DomainScope = {
    store,
    name,
    domain,
    c,
    report,
    signal,
    indexIds: [],
    parts: [],
    vanishedPacks: new Set(),
    vanishedIndexes: new Set(),
    damaged: new Map(),
    damagedIndexes: [],
    damagedTrailers: new Map(),
  };
  // Prune's marks: every replicate and prune of the repository reads them, and damaged ones stop both.
  await readPruneMarks(store, domain).catch((err: unknown) => report(err));
  // The points to check are listed first: a writer stores a point's packs and index objects before its manifest, so
  // the listings below hold every chunk of these points. A point committed later (a replicate beside the check) is
  // not checked: its chunks may be in index objects written after they were read, and were reported missing.
  const disks = await listV2Disks(store, name);
  // Packs are read before the references are checked: one a concurrent prune deletes before it is read then counts
  // as absent, and a point still needing one of its chunks is reported (CHUNK_MISSING).
  await readIndexes(scope);
  const trailers: Trailers = new Map();
  const listed = await readTrailers(scope, trailers);
  if (readData) await readBlobs(scope, trailers, listed);
  if (scope.vanishedPacks.size > 0 || scope.vanishedIndexes.size > 0) {
    // A prune deleted some of what was listed; what it wrote before deleting (merged index objects, repacked packs)
    // is read too, so a chunk it moved is found where it is now. Indexes first, as writers put packs before indexes.
    await readIndexes(scope);
    const fresh = await readTrailers(scope, trailers);
    if (readData) await readBlobs(scope, trailers, fresh);
  }
  const index = await ChunkIndex.fromParts(scope.indexIds, scope.parts);
  scope.parts = []; // the index holds its own copy: the bodies are not kept while the points are read
  c.indexObjects = scope.indexIds.length;
  c.indexEntries = index.size;
  c.packs = trailers.size;
  c.removedDuringCheck.packs = scope.vanishedPacks.size;
  c.removedDuringCheck.indexObjects = scope.vanishedIndexes.size;
  const standIns = standInTrailers(scope, index, trailers);
  if (readData && standIns.length > 0) await readBlobs(scope, trailers, standIns, true);
  matchIndexToTrailers(scope, index, trailers);
  await checkPointReferences(scope, disks, index, trailers);
  if (repair) {
    // Blobs of intact trailers no readable index object names: indexed again (those found damaged are left out).
    const unindexed: ChunkLocation[] = [];
    for (const [packId, t] of trailers) for (let i = 0; t && i < t.count; i++) if (t.marks[i] === 0) unindexed.push({ packId, entry: t.entry(i) });
    if (scope.damaged.size > 0 || unindexed.length > 0 || scope.damagedIndexes.length > 0) {
      c.repair = await repairDomain({ store, domain, damaged: scope.damaged, unindexed, damagedIndexes: scope.damagedIndexes });
    }
  }
  return c;
}

/** Every index object not read yet, each on its own so one bad object does not hide the others. */
async function readIndexes({ store, name, domain, report, indexIds, parts, vanishedIndexes, damagedIndexes }: DomainScope): Promise<void> {
  const known = new Set(indexIds);
  for (const id of await listIndexIds(store, name)) {
    if (known.has(id) || vanishedIndexes.has(id)) continue;
    try {
      const body = openIndex(await store.get(r2.index(name, id)), domain, id);
      indexIds.push(id);
      parts.push({ body, source: indexIds.length });
    } catch (err) {
      if (isGone(err))
        vanishedIndexes.add(id); // merged by a prune's index compaction since the listing
      else {
        indexIds.push(id);
        // Damaged, or (encrypted) failing authentication: either way --repair indexes its intact blobs again and
        // deletes it; a forged one left in place blocked every disk of the repository for good.
        if (isDamage(err) || isRnodeError(err, ErrorCodes.METADATA_FORGED)) damagedIndexes.push(id);
        report(err);
      }
    }
  }
}

/** The trailer of every pack not read yet; returns the ids of those read now. */
async function readTrailers(
  { store, name, domain, report, signal, vanishedPacks, damagedTrailers }: DomainScope,
  trailers: Trailers,
): Promise<ObjectId[]> {
  const read: ObjectId[] = [];
  for await (const o of store.list(r2.packsPrefix(name))) {
    signal?.throwIfAborted();
    const h = classify(o.key);
    if (h?.kind !== 'pack' || h.domain !== name || trailers.has(h.id) || vanishedPacks.has(h.id)) continue;
    try {
      const { entries } = await readPackTrailer(store, name, h.id, domain.key);
      trailers.set(h.id, new PackTrailer(entries));
      read.push(h.id);
    } catch (err) {
      if (isGone(err)) {
        vanishedPacks.add(h.id);
        continue;
      }
      trailers.set(h.id, undefined);
      // A sealed trailer that fails authentication: its pack's blobs are sealed one by one and its index entries are
      // too, so they stand in for it as safely as for a damaged plain trailer (readers trust nothing more).
      if (isDamage(err) || isRnodeError(err, ErrorCodes.METADATA_FORGED)) damagedTrailers.set(h.id, { err, size: o.size });
      else report(err);
    }
  }
  return read;
}

/**
 * A pack whose trailer is damaged but whose length still holds every blob the index objects place in it: readers
 * (recover, verify) find its blobs there, so its chunks are not missing. The index's entries of it stand in for its
 * trailer, and the pack is one for --repair to rewrite (no damaged blob known yet: --read-data finds any). A pack
 * cut short keeps its trailer error alone: the chunks past its end are missing, and --repair rewrites it with the
 * blobs before its end. Reports each damaged trailer; returns the packs given a stand-in.
 */
function standInTrailers({ name, damagedTrailers, damaged, report }: DomainScope, index: ChunkIndex, trailers: Trailers): ObjectId[] {
  const byPack = new Map<ObjectId, Map<number, BlobEntry>>();
  for (const l of index.locations()) {
    if (!damagedTrailers.has(l.packId)) continue;
    let entries = byPack.get(l.packId);
    if (!entries) byPack.set(l.packId, (entries = new Map()));
    entries.set(l.entry.offset, l.entry); // two index objects may name one blob
  }
  const standIns: ObjectId[] = [];
  for (const [packId, { err, size }] of damagedTrailers) {
    const entries = [...(byPack.get(packId)?.values() ?? [])].sort((a, b) => a.offset - b.offset);
    const fits = entries.length > 0 && entries.every((e) => e.offset + e.length <= size - PACK_TAIL_BYTES);
    if (!fits) {
      report(err);
      // A pack cut short: --repair copies the blobs its length still holds (each checked against its index entry),
      // leaves out those past its end, and deletes it. Left as it was, dedup went on finding its lost chunks, and a
      // replicate --full committed points over them that never restored.
      if (entries.length > 0 && !damaged.has(packId))
        damaged.set(packId, new Set(entries.filter((e) => e.offset + e.length > size).map((e) => e.offset)));
      continue;
    }
    trailers.set(packId, new PackTrailer(entries));
    if (!damaged.has(packId)) damaged.set(packId, new Set());
    standIns.push(packId);
    // Its advice (restore elsewhere) does not hold: the chunks are not lost with the trailer.
    const message = withoutCheckAdvice(err.message).replace(/; restore from another point or store$/, '');
    report(
      new RnodeError(
        err.code,
        `${message}; its chunks are still read where the index places them: check --read-data verifies each, and --repair ` +
          'rewrites the pack with a trailer of its own',
        { details: { key: r2.pack(name, packId) } },
      ),
    );
  }
  damagedTrailers.clear();
  return standIns;
}

/** Index entries against pack trailers: a location is good when its pack's trailer has the same entry (marked GOOD there). */
function matchIndexToTrailers({ name, c, report }: DomainScope, index: ChunkIndex, trailers: Trailers): void {
  for (const l of index.locations()) {
    if (!trailers.has(l.packId)) {
      c.danglingIndexEntries++;
      continue;
    }
    const t = trailers.get(l.packId);
    if (!t) continue; // its trailer was reported
    const i = t.find(l.entry.offset);
    const where = r2.index(name, l.indexId ?? '0'.repeat(32));
    if (i >= 0) t.marks[i] |= INDEXED;
    if (i < 0 || !sameEntry(t.entry(i), l.entry)) {
      report(
        new RnodeError(
          ErrorCodes.MANIFEST_CORRUPT,
          `index ${where} places chunk ${l.entry.id.toString('hex').slice(0, 16)}… at offset ${l.entry.offset} of pack ${l.packId}, ` +
            'which its trailer does not confirm; the index or the pack is damaged',
          { details: { key: where } },
        ),
      );
      continue;
    }
    t.marks[i] = GOOD;
  }
  for (const t of trailers.values()) for (const mark of t?.marks ?? []) if (mark === 0) c.unindexedBlobs++;
}

/**
 * Every chunk a point of `disks` (listed before the indexes) references has a good copy, and every point's parent
 * exists. A point that cannot be read is checked again against a new listing: one a concurrent prune deleted since is
 * not a problem.
 */
async function checkPointReferences(
  { store, name, domain, c, report, signal, vanishedPacks }: DomainScope,
  disks: Map<string, V2DiskObjects>,
  index: ChunkIndex,
  trailers: Trailers,
): Promise<void> {
  for (const d of disks.values()) {
    // As stats and `rnode disks` count them: a disk whose first point is still being written is not one yet.
    if (d.points.length > 0) c.disks++;
    let disk: string | undefined;
    try {
      disk = await v2DiskId(store, d, domain.key);
    } catch (err) {
      report(err);
      continue;
    }
    if (disk === undefined) continue;
    const seqs = new Set(d.points);
    // Only counted when every point's manifest was read: an unread one's segments are not known to be unreferenced.
    let named: Set<string> | undefined = new Set<string>();
    for (const seq of d.points) {
      signal?.throwIfAborted();
      c.points++;
      try {
        const m = await loadV2Point(store, disk, seq, domain.key);
        for (const ref of m.table.segments) named?.add(ref.key);
        if (m.parent !== null && !seqs.has(m.parent)) {
          report(
            new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `point ${seq} of disk ${disk} needs point ${m.parent}, which is missing`, {
              details: { key: r2.point(name, d.dname, seq) },
            }),
          );
        }
        for await (const e of tableEntries(store, m, domain.key)) {
          if (!referencesChunk(e)) continue;
          c.chunksReferenced++;
          const copies = index.lookup(e.id!);
          if (!copies.some((l) => isGood(trailers, l))) {
            const gone = copies.find((l) => vanishedPacks.has(l.packId));
            report(
              new RnodeError(
                ErrorCodes.CHUNK_MISSING,
                `chunk ${e.index} of point ${seq} of disk ${disk} (id ${e.id!.toString('hex').slice(0, 16)}…) is in no intact pack` +
                  (gone ? ` (pack ${gone.packId} was deleted during the check while this point still uses it)` : ''),
                { details: { key: r2.point(name, d.dname, seq) } },
              ),
            );
          }
        }
      } catch (err) {
        named = undefined;
        if (isRnodeError(err) && !(await stillListed(store, disk, seq, domain.key))) {
          c.points--;
          c.removedDuringCheck.points++;
          continue;
        }
        report(err);
      }
    }
    if (named) c.unreferencedTableSegments += staleDiskObjects(name, d, named).segments.length;
  }
}

/** Whether a point is still listed; a listing that fails says yes, so the point's own error is reported. */
async function stillListed(store: ObjectStore, disk: string, seq: number, key: EncryptionKey | undefined): Promise<boolean> {
  return listV2PointSeqs(store, disk, key).then(
    (seqs) => seqs.includes(seq),
    () => true,
  );
}

/**
 * --read-data: every blob of every readable pack goes through the checker restore, verify and export use
 * (decodeBlobInto: stored xxh64, decrypted, decoded on the codec workers, chunk id recomputed).
 */
async function readBlobs(
  { store, name, domain, c, report, signal, vanishedPacks, damaged }: DomainScope,
  trailers: Trailers,
  ids: ObjectId[],
  standIns = false,
): Promise<void> {
  const markDamaged = (id: ObjectId, offset: number) => {
    let set = damaged.get(id);
    if (!set) damaged.set(id, (set = new Set()));
    set.add(offset);
  };
  let slot: ReadSlot | undefined;
  let slotPlain = 0;
  await withWorkerDomain(domain, async () => {
    for (const id of ids) {
      signal?.throwIfAborted();
      const t = trailers.get(id);
      if (!t) continue;
      const what = r2.pack(name, id);
      let pack: Buffer;
      try {
        pack = await store.get(what);
        // A stand-in trailer (standInTrailers) is the index's: the pack's own was reported damaged.
        if (!standIns) decodePack(pack, name, id, domain.key);
      } catch (err) {
        if (isGone(err)) {
          // Deleted since its trailer was read: absent from here on, so the references are checked without it.
          trailers.delete(id);
          vanishedPacks.add(id);
        } else report(err);
        continue;
      }
      for (let i = 0; i < t.count; i++) {
        const e = t.entry(i);
        c.blobsRead++;
        c.bytesRead += e.length;
        if (!slot || e.plainLength > slotPlain || e.length > slot.object.length) {
          if (slot) recycleReadSlot(slot);
          slotPlain = Math.max(e.plainLength, slotPlain);
          slot = newReadSlot(slotPlain);
        }
        const where = `at offset ${e.offset} of pack ${what} (id ${e.id.toString('hex').slice(0, 16)}…)`;
        if (e.length > slot.object.length) {
          markDamaged(id, e.offset);
          report(
            new RnodeError(ErrorCodes.CHUNK_CORRUPT, `chunk ${where} is corrupt: its trailer says ${e.length} bytes, more than a chunk can take`, {
              details: { key: what },
            }),
          );
          continue;
        }
        copyBytes(pack.subarray(e.offset, e.offset + e.length), slot.object);
        const expect: ChunkEntry = {
          index: -1,
          xxh64: 0n,
          strong: EMPTY,
          writer: 0,
          plainLength: e.plainLength,
          storedLength: e.length,
          flags: 0,
          codec: 0,
          id: e.id,
        };
        try {
          await decodeBlobInto(slot, e.length, expect, e, domain, where);
        } catch (err) {
          // Only a blob that fails its checksums or its id is damaged: one of a codec or format this build does not
          // know is another rnode's, and repair must not drop it.
          if (isRnodeError(err, ErrorCodes.CHUNK_CORRUPT)) markDamaged(id, e.offset);
          report(
            isRnodeError(err)
              ? new RnodeError(err.code, `${err.message}; points using this chunk cannot be restored from this copy`, { details: { key: what } })
              : err,
          );
        }
      }
    }
  });
  if (slot) recycleReadSlot(slot);
}

const EMPTY = Buffer.alloc(0);
