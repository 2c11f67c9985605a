// What prune, stats and check walk in a v2 domain: its disks (one listing of r2/<domain>/disks/), each disk's
// committed manifests, pending checkpoints and table segments, and the chunk ids a point's own table references.
// In an encrypted domain a disk's name is keyed (one-way), so its id is learnt from inside its newest manifest or
// checkpoint and then checked twice: the name must be the keyed name of that id, and the object must open under it.
import { ErrorCodes, RnodeError, isRnodeError } from '../errors.js';
import { isZeroEntry, type ChunkEntry } from '../format/table.js';
import type { ObjectStore } from '../store/types.js';
import type { Domain } from './domain.js';
import { ENVELOPE_HEADER_BYTES } from './envelope.js';
import { classify, r2 } from './names.js';
import { decodeManifestV4, decodePendingV2, decodeTableV3, type V2PointManifest } from './point-format.js';

export interface V2SegmentObject {
  key: string;
  point: number;
  generation: number;
  segment: number;
  size: number;
}

/** One disk of a domain as its keys show it. */
export interface V2DiskObjects {
  dname: string;
  points: number[];
  pending: number[];
  segments: V2SegmentObject[];
  /** Bytes of every object under the disk's prefix (manifests, tables, checkpoints). */
  metadataBytes: number;
}

/** Every disk of a domain with its objects, from one listing. */
export async function listV2Disks(store: ObjectStore, domain: string): Promise<Map<string, V2DiskObjects>> {
  const disks = new Map<string, V2DiskObjects>();
  const disk = (dname: string) => {
    let d = disks.get(dname);
    if (!d) disks.set(dname, (d = { dname, points: [], pending: [], segments: [], metadataBytes: 0 }));
    return d;
  };
  for await (const o of store.list(r2.disksPrefix(domain))) {
    const h = classify(o.key);
    if (!h || !('dname' in h) || h.domain !== domain) continue;
    const d = disk(h.dname);
    d.metadataBytes += o.size;
    if (h.kind === 'manifest') d.points.push(h.point);
    else if (h.kind === 'pending') d.pending.push(h.point);
    else if (h.kind === 'table') d.segments.push({ key: o.key, point: h.point, generation: h.generation, segment: h.segment, size: o.size });
  }
  for (const d of disks.values()) {
    d.points.sort((a, b) => a - b);
    d.pending.sort((a, b) => a - b);
  }
  return disks;
}

/** The v2 point numbers of a disk, ascending. */
export async function listV2PointSeqs(store: ObjectStore, domain: Domain, disk: string): Promise<number[]> {
  const seqs: number[] = [];
  for await (const o of store.list(r2.pointsPrefix(domain.name, domain.dname(disk)))) {
    const h = classify(o.key);
    if (h?.kind === 'manifest') seqs.push(h.point);
  }
  return seqs.sort((a, b) => a - b);
}

export async function loadV2Point(store: ObjectStore, domain: Domain, disk: string, seq: number): Promise<V2PointManifest> {
  const key = r2.point(domain.name, domain.dname(disk), seq);
  let bytes: Buffer;
  try {
    bytes = await store.get(key);
  } catch (err) {
    if (isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) {
      throw new RnodeError(ErrorCodes.POINT_NOT_FOUND, `point ${seq} of disk ${disk} does not exist; list points with "rnode points"`);
    }
    throw err;
  }
  return decodeManifestV4(bytes, domain, disk, seq);
}

/** The point and its v2 ancestors, newest first. */
export async function loadV2Chain(store: ObjectStore, domain: Domain, disk: string, seq: number): Promise<V2PointManifest[]> {
  const chain = [await loadV2Point(store, domain, disk, seq)];
  for (let m = chain[0]; m.parent !== null; ) {
    const parent = await loadV2Point(store, domain, disk, m.parent).catch((err) => {
      if (isRnodeError(err, ErrorCodes.POINT_NOT_FOUND)) {
        throw new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `point ${m.point} of disk ${disk} needs point ${m.parent}, which is missing; the store is damaged`);
      }
      throw err;
    });
    chain.push(parent);
    m = parent;
  }
  return chain;
}

/** A point's own table records (ascending index), each segment checked against the digest its manifest pins. */
export async function* v2TableEntries(store: ObjectStore, domain: Domain, m: V2PointManifest): AsyncIterable<ChunkEntry> {
  let total = 0;
  for (const [n, ref] of m.table.segments.entries()) {
    let bytes: Buffer;
    try {
      bytes = await store.get(ref.key);
    } catch (err) {
      if (isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) {
        throw new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `chunk table ${ref.key} of point ${m.point} of disk ${m.disk} is missing; restore from another point`,
          { details: { key: ref.key } });
      }
      throw err;
    }
    const place = { disk: m.disk, point: m.point, parent: m.parent, generation: m.table.generation, segment: n };
    const entries = decodeTableV3(bytes, domain, place, ref.key, ref.digest);
    if (entries.length !== ref.records) {
      throw new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `chunk table ${ref.key} does not match its manifest; restore from another point`, { details: { key: ref.key } });
    }
    total += entries.length;
    yield* entries;
  }
  if (total !== m.table.records) {
    throw new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `point ${m.point} of disk ${m.disk} lists ${m.table.records} chunk records but its tables hold ${total}`);
  }
}

/** The disk as a chain of v2 points shows it: newest record per index (zero records included), ascending. */
export async function* v2ChainView(store: ObjectStore, domain: Domain, chain: V2PointManifest[]): AsyncIterable<ChunkEntry> {
  const its = chain.map((m) => v2TableEntries(store, domain, m)[Symbol.asyncIterator]());
  const heads: Array<ChunkEntry | undefined> = await Promise.all(its.map(async (it) => (await it.next()).value as ChunkEntry | undefined));
  try {
    for (;;) {
      let min = Infinity;
      for (const h of heads) if (h && h.index < min) min = h.index;
      if (min === Infinity) return;
      let winner: ChunkEntry | undefined;
      for (let i = 0; i < its.length; i++) {
        if (heads[i]?.index === min) {
          winner ??= heads[i];
          const r = await its[i].next();
          heads[i] = r.done ? undefined : r.value;
        }
      }
      yield winner!;
    }
  } finally {
    await Promise.all(its.map((it) => it.return?.()));
  }
}

/**
 * The disk id behind a disk name. `plain`: the name. Encrypted: read from the newest manifest (else checkpoint) and
 * accepted only if the name is its keyed name; the object itself is opened (authenticated) by whoever reads it next.
 * undefined when the disk has neither (only tables of a first checkpoint in flight).
 */
export async function diskIdOf(store: ObjectStore, domain: Domain, d: V2DiskObjects): Promise<string | undefined> {
  if (!domain.key) return d.dname;
  const candidates = [...d.points.map((p) => r2.point(domain.name, d.dname, p)).reverse(), ...d.pending.map((p) => r2.pending(domain.name, d.dname, p)).reverse()];
  for (const key of candidates) {
    let bytes: Buffer;
    try {
      bytes = await store.get(key);
    } catch (err) {
      if (isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) continue;
      throw err;
    }
    const body = domain.key.peekMetadataUnauthenticated(bytes.subarray(ENVELOPE_HEADER_BYTES));
    let disk: unknown;
    try {
      disk = JSON.parse(body?.toString('utf8') ?? '').disk;
    } catch {
      disk = undefined;
    }
    if (typeof disk === 'string' && safeDname(domain, disk) === d.dname) return disk;
    throw new RnodeError(ErrorCodes.METADATA_FORGED, `${key} does not belong to its disk name (moved, forged, or sealed with another key); run "rnode check"`,
      { details: { key } });
  }
  return undefined;
}

function safeDname(domain: Domain, disk: string): string | undefined {
  try {
    return domain.dname(disk);
  } catch {
    return undefined;
  }
}

/** The parent a pending checkpoint names (its tables' envelopes are bound to it). */
export async function pendingParent(store: ObjectStore, domain: Domain, disk: string, seq: number): Promise<number | null | undefined> {
  let bytes: Buffer;
  try {
    bytes = await store.get(r2.pending(domain.name, domain.dname(disk), seq));
  } catch (err) {
    if (isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) return undefined; // committed or abandoned since the listing
    throw err;
  }
  const ck = decodePendingV2(bytes, domain, disk, seq) as { parent?: unknown };
  const parent = ck?.parent;
  if (parent === null || (Number.isSafeInteger(parent) && (parent as number) >= 0 && (parent as number) < seq)) return parent as number | null;
  const what = r2.pending(domain.name, domain.dname(disk), seq);
  throw new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `checkpoint ${what} names no valid parent; run "rnode check"`, { details: { key: what } });
}

/** Decodes one table segment of a point being written (no manifest pins it yet: the envelope binds its place). */
export async function pendingSegmentEntries(store: ObjectStore, domain: Domain, disk: string, s: V2SegmentObject, parent: number | null): Promise<ChunkEntry[] | undefined> {
  let bytes: Buffer;
  try {
    bytes = await store.get(s.key);
  } catch (err) {
    if (isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) return undefined;
    throw err;
  }
  return decodeTableV3(bytes, domain, { disk, point: s.point, parent, generation: s.generation, segment: s.segment }, s.key);
}

export const nonZero = (e: ChunkEntry): boolean => !isZeroEntry(e) && e.id !== undefined;
