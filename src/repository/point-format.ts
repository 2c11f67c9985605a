// The v2 point format: table segments v3 and manifests v4, both in envelopes (sealed in an encrypted domain).
//
// Table segment v3 = envelope TABLE (context: domain, disk id, point, parent, generation, segment number), body:
//   u32 LE count | count records of 48 bytes sorted by index:
//   u64 index | chunk id (32) | u32 plainLength | u8 flags (1 ZERO) | 3 reserved
// Manifest v4 = envelope MANIFEST (context: domain, disk id, point), body: the JSON of a PointManifest with version 4;
// its table.segments are {records, first, last, digest}: digest is the BLAKE3-256 (hex) of the segment object's
// exact bytes, so the manifest pins every segment (a replayed older segment of the same place fails). Segment keys
// are not stored: they come from names.ts. Pending checkpoints are envelope PENDING (context: domain, disk, point).
// Both carry marksGeneration: the generation of prune's marks the writer read last (absent before generations: 0).
import { blake3 } from '../native/index.js';
import { CHUNK_ID_BYTES } from '../crypto/keys.js';
import { ErrorCodes, RnodeError } from '../errors.js';
import { Codec } from '../format/codecs.js';
import { MANIFEST_FORMAT, type PointManifest, type SegmentRef } from '../format/manifest.js';
import { TableFlag, type ChunkEntry } from '../format/table.js';
import type { Domain } from './domain.js';
import { EnvelopeKind, envelopeContext, openEnvelope, sealEnvelope } from './envelope.js';
import { r2 } from './names.js';

export const MANIFEST_VERSION_V2 = 4;
export const TABLE_V3_RECORD_BYTES = 48;

/** Where a v2 segment belongs: its envelope context binds all of it. */
export interface V2SegmentPlace {
  disk: string;
  point: number;
  parent: number | null;
  generation: number;
  segment: number;
}

/** v2 stats beyond the legacy ones. */
export interface V2PointStats {
  bytesDeduplicated: number;
  chunksDeduplicated: number;
  packsWritten: number;
}

/** Where a v2 point lives: set on every v2 manifest read or written (not stored in its body). */
export interface V2Place {
  domain: string;
  dname: string;
}

/** What a v4 manifest stores beyond a PointManifest. */
export interface V4ManifestFields {
  /** The generation of prune's marks its writer read last before committing (prune-marks.ts); absent: 0. */
  marksGeneration?: number;
}

/** A PointManifest of version 4 as held in memory. */
export type V2PointManifest = PointManifest & V4ManifestFields & { r2: V2Place; stats: PointManifest['stats'] & V2PointStats };

export function isV2Point(m: PointManifest): m is V2PointManifest {
  return m.version === MANIFEST_VERSION_V2;
}

const tableContext = (domain: string, p: V2SegmentPlace) => envelopeContext.table(domain, p.disk, p.point, p.parent, p.generation, p.segment);

export function segmentDigest(bytes: Uint8Array): string {
  return blake3(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)).toString('hex');
}

export function encodeTableV3(domain: Domain, place: V2SegmentPlace, entries: readonly ChunkEntry[]): Buffer {
  const body = Buffer.alloc(4 + entries.length * TABLE_V3_RECORD_BYTES);
  body.writeUInt32LE(entries.length, 0);
  let o = 4;
  for (const e of entries) {
    const zero = (e.flags & TableFlag.ZERO) !== 0;
    if (!zero && e.id?.length !== CHUNK_ID_BYTES) throw new RnodeError(ErrorCodes.INTERNAL, `chunk ${e.index} has no 32-byte id`);
    body.writeBigUInt64LE(BigInt(e.index), o);
    if (!zero) e.id!.copy(body, o + 8);
    body.writeUInt32LE(e.plainLength, o + 40);
    body.writeUInt8(zero ? TableFlag.ZERO : 0, o + 44);
    o += TABLE_V3_RECORD_BYTES;
  }
  return sealEnvelope(EnvelopeKind.TABLE, tableContext(domain.name, place), body, domain.key);
}

/** A v2 table record as the rest of rnode sees a table entry (see ChunkEntry.id). */
export function v2Entry(index: number, id: Buffer | undefined, plainLength: number, point: number): ChunkEntry {
  if (!id) return { index, xxh64: 0n, strong: Buffer.alloc(16), writer: 0, plainLength, storedLength: 0, flags: TableFlag.ZERO, codec: Codec.NONE };
  return {
    index,
    xxh64: id.readBigUInt64LE(0),
    strong: id.subarray(0, 16),
    writer: point,
    plainLength,
    storedLength: 0,
    flags: 0,
    codec: Codec.NONE,
    id,
  };
}

/**
 * Decodes a v3 segment read from `what`; digest (from the manifest) must match its bytes. Records must be in
 * index order with reserved bytes zero; a zero record has an all-zero id.
 */
export function decodeTableV3(b: Buffer, domain: Domain, place: V2SegmentPlace, what: string, digest?: string): ChunkEntry[] {
  if (digest !== undefined && segmentDigest(b) !== digest) {
    throw new RnodeError(
      domain.key ? ErrorCodes.METADATA_FORGED : ErrorCodes.MANIFEST_CORRUPT,
      `chunk table ${what} is not the segment its manifest names (replaced, replayed or damaged); restore from another point or store`,
      { details: { key: what } },
    );
  }
  const body = openEnvelope(b, EnvelopeKind.TABLE, tableContext(domain.name, place), what, domain.key);
  const bad = (why: string) =>
    new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `chunk table ${what} is corrupt (${why}); restore from another point`, { details: { key: what } });
  if (body.length < 4) throw bad('truncated');
  const count = body.readUInt32LE(0);
  if (body.length !== 4 + count * TABLE_V3_RECORD_BYTES) throw bad('length does not match its record count');
  const out: ChunkEntry[] = new Array(count);
  let prev = -1;
  for (let i = 0, o = 4; i < count; i++, o += TABLE_V3_RECORD_BYTES) {
    const index = Number(body.readBigUInt64LE(o));
    if (!Number.isSafeInteger(index)) throw bad(`record ${i} has an index out of range`);
    if (!(index > prev)) throw bad('records out of order');
    prev = index;
    const flags = body.readUInt8(o + 44);
    if ((flags & ~TableFlag.ZERO) !== 0 || body.readUIntLE(o + 45, 3) !== 0) throw bad(`record ${i} has unknown flags or reserved bytes set`);
    const id = body.subarray(o + 8, o + 40);
    const zero = flags === TableFlag.ZERO;
    if (zero && id.some((x) => x !== 0)) throw bad(`record ${i} is a zero chunk with an id`);
    out[i] = v2Entry(index, zero ? undefined : Buffer.from(id), body.readUInt32LE(o + 40), place.point);
  }
  return out;
}

/** The stored body of a manifest: segment keys and the in-memory place left out. */
export function encodeManifestV4(domain: Domain, m: PointManifest & V4ManifestFields): Buffer {
  const { r2: _place, ...rest } = m as Partial<V2PointManifest> & PointManifest;
  const body = {
    ...rest,
    version: MANIFEST_VERSION_V2,
    table: { ...m.table, segments: m.table.segments.map(({ records, first, last, digest }) => ({ records, first, last, digest })) },
  };
  return sealEnvelope(EnvelopeKind.MANIFEST, envelopeContext.manifest(domain.name, m.disk, m.point), Buffer.from(JSON.stringify(body)), domain.key);
}

/** Decodes the manifest of point `point` of disk `disk`, filling segment keys and the place from names.ts. */
export function decodeManifestV4(b: Buffer, domain: Domain, disk: string, point: number): V2PointManifest {
  const dname = domain.dname(disk);
  const what = r2.point(domain.name, dname, point);
  const body = openEnvelope(b, EnvelopeKind.MANIFEST, envelopeContext.manifest(domain.name, disk, point), what, domain.key);
  const bad = (why: string) =>
    new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `manifest ${what} is corrupt (${why}); run "rnode verify" and restore from another point`, {
      details: { key: what },
    });
  let m: any;
  try {
    m = JSON.parse(body.toString('utf8'));
  } catch {
    throw bad('not valid JSON');
  }
  if (!m || m.format !== MANIFEST_FORMAT) throw bad('not an rnode point manifest');
  if (m.version !== MANIFEST_VERSION_V2) {
    throw new RnodeError(
      ErrorCodes.FORMAT_VERSION,
      `manifest ${what} has format version ${m.version}; this rnode reads version ${MANIFEST_VERSION_V2} here, upgrade rnode`,
    );
  }
  const okInt = (v: unknown) => Number.isSafeInteger(v) && (v as number) >= 0;
  if (m.disk !== disk || m.point !== point) throw bad(`it names point ${m.point} of disk ${m.disk}`);
  if (
    !(m.parent === null || (okInt(m.parent) && m.parent < point)) ||
    !okInt(m.diskSize) ||
    !okInt(m.chunkSize) ||
    !m.table ||
    !okInt(m.table.generation) ||
    !Array.isArray(m.table.segments) ||
    (m.marksGeneration !== undefined && !okInt(m.marksGeneration)) ||
    m.table.segments.some(
      (s: any) =>
        !s ||
        !okInt(s.records) ||
        !Number.isSafeInteger(s.first) ||
        !Number.isSafeInteger(s.last) ||
        typeof s.digest !== 'string' ||
        !/^[0-9a-f]{64}$/.test(s.digest),
    )
  ) {
    throw bad('missing or invalid fields');
  }
  if ((domain.key !== undefined) !== (m.encryption !== undefined) || (m.encryption && m.encryption.keyId !== domain.key?.keyId)) {
    throw bad('its encryption field does not match its domain');
  }
  m.table.segments = m.table.segments.map((s: SegmentRef, n: number) => ({
    ...s,
    key: r2.segment(domain.name, dname, point, m.table.generation, n),
  }));
  m.r2 = { domain: domain.name, dname };
  return m as V2PointManifest;
}

export function encodePendingV2(domain: Domain, disk: string, point: number, checkpoint: unknown): Buffer {
  return sealEnvelope(EnvelopeKind.PENDING, envelopeContext.pending(domain.name, disk, point), Buffer.from(JSON.stringify(checkpoint)), domain.key);
}

/** The checkpoint JSON of a pending point; throws (METADATA_FORGED / MANIFEST_CORRUPT) when it does not open. */
export function decodePendingV2(b: Buffer, domain: Domain, disk: string, point: number): unknown {
  const what = r2.pending(domain.name, domain.dname(disk), point);
  return JSON.parse(openEnvelope(b, EnvelopeKind.PENDING, envelopeContext.pending(domain.name, disk, point), what, domain.key).toString('utf8'));
}
