// The point manifest: JSON naming the point, its parent, its chunk-table segments and its stats, sealed with
// an xxh64 of its own canonical text. Writing it is the commit of the point.
// Version 2 is an encrypted point: it carries `encryption` ({alg, keyId}; the key id is a one-way fingerprint of
// the master key, never the key), its chunks are chunk format version 2 and its table records hold keyed digests.
// An rnode that reads only version 1 refuses such a point instead of writing unencrypted points onto its chain.
// Version 3 is an encrypted point whose metadata is authenticated: the manifest carries `mac`, an HMAC-SHA256 under
// the key hierarchy's metadata subkey bound to (disk, point, parent); each segment ref carries its segment's MAC, and
// the segments are table version 2 (src/format/table.ts). Version 2 is only read (points written before version 3).
import type { EncryptionKey } from '../crypto/keys.js';
import { ErrorCodes, RnodeError } from '../errors.js';
import { xxh64Hex } from './checksum.js';

export const MANIFEST_FORMAT = 'rnode-point';
export const MANIFEST_VERSION = 1;
/** Encrypted, metadata not authenticated: written by older rnode versions, read only. */
export const MANIFEST_VERSION_ENCRYPTED = 2;
/** Encrypted, every metadata object authenticated: what rnode writes for an encrypted point. */
export const MANIFEST_VERSION_AUTHENTICATED = 3;

export interface PointEncryption {
  alg: 'aes-256-gcm';
  keyId: string;
}

export interface SegmentRef {
  key: string;
  records: number;
  /** First and last chunk index in the segment (both inclusive); -1 when empty. */
  first: number;
  last: number;
  /** Version 3: the segment's MAC (hex), so the manifest's own MAC covers the segment's exact bytes. */
  mac?: string;
  /** Version 4 (repository v2): BLAKE3-256 (hex) of the segment object's exact bytes. */
  digest?: string;
}

export interface PointStats {
  chunksTotal: number;
  chunksChanged: number;
  chunksZero: number;
  bytesRead: number;
  bytesWritten: number;
  seconds: number;
  /** Version 4: plaintext bytes and chunks found already stored in the repository (not written again). */
  bytesDeduplicated?: number;
  chunksDeduplicated?: number;
  /** Version 4: pack objects this point wrote. */
  packsWritten?: number;
}

export interface PointManifest {
  format: typeof MANIFEST_FORMAT;
  version: number;
  disk: string;
  point: number;
  /** The point this one's table is a delta against; null when the table alone describes the whole disk. */
  parent: number | null;
  /** True when the source was read as a full sync (not an incremental against the previous point). */
  full: boolean;
  createdAt: string;
  diskSize: number;
  chunkSize: number;
  source: { kind: string; location: string; marker?: string; fullReason?: string; rescanReason?: string };
  table: { generation: number; records: number; segments: SegmentRef[] };
  /** Fencing token of the writer's lease when it committed. */
  fence?: number;
  /** Present exactly when the point is encrypted (versions 2 and 3). */
  encryption?: PointEncryption;
  stats: PointStats;
  /** Version 3: HMAC-SHA256 (hex) of the canonical manifest without this field (see manifestMac). */
  mac?: string;
}

function canonical(m: PointManifest): string {
  return JSON.stringify(m);
}

/** The MAC a version 3 manifest must carry: over its canonical text without `mac`, bound to disk, point and parent. */
export function manifestMac(m: PointManifest, key: EncryptionKey): string {
  const { mac: _mac, ...rest } = m;
  return key
    .metaMac({ kind: 'manifest', disk: m.disk, point: m.point, parent: m.parent }, Buffer.from(canonical(rest as PointManifest)))
    .toString('hex');
}

/** Encodes a manifest; with key (an encrypted point) as version 3 with its MAC. */
export function encodeManifest(m: PointManifest, key?: EncryptionKey): Buffer {
  if (key) {
    const { mac: _mac, ...rest } = m;
    const body = { ...rest, version: MANIFEST_VERSION_AUTHENTICATED } as PointManifest;
    m = { ...body, mac: manifestMac(body, key) };
  }
  return Buffer.from(JSON.stringify({ ...m, checksum: xxh64Hex(Buffer.from(canonical(m))) }, null, 1) + '\n');
}

/**
 * Checks a version 3 manifest's MAC with the disk's key; `what` is its object key. Runs before any table or chunk
 * of the point is used, so a forged manifest (re-pointed parent, edited segment list) never reaches the output.
 */
export function authenticateManifest(m: PointManifest, key: EncryptionKey, what: string): void {
  if (m.version !== MANIFEST_VERSION_AUTHENTICATED) {
    throw new RnodeError(
      ErrorCodes.METADATA_FORGED,
      `manifest ${what} is version ${m.version} (not authenticated) on a disk whose metadata is authenticated: it was rewritten by someone without the key; restore from another point or store`,
      { details: { key: what } },
    );
  }
  if (m.mac !== manifestMac(m, key)) {
    throw new RnodeError(
      ErrorCodes.METADATA_FORGED,
      `manifest ${what} fails its MAC: it was modified, moved from another point or disk, or forged; restore from another point or store`,
      { details: { key: what } },
    );
  }
}

export function decodeManifest(b: Buffer, what: string): PointManifest {
  const bad = (why: string) =>
    new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `manifest ${what} is corrupt (${why}); run "rnode verify" and restore from another point`);
  let raw: any;
  try {
    raw = JSON.parse(b.toString('utf8'));
  } catch {
    throw bad('not valid JSON');
  }
  if (!raw || typeof raw !== 'object' || raw.format !== MANIFEST_FORMAT) throw bad('not an rnode point manifest');
  if (raw.version !== MANIFEST_VERSION && raw.version !== MANIFEST_VERSION_ENCRYPTED && raw.version !== MANIFEST_VERSION_AUTHENTICATED) {
    throw new RnodeError(
      ErrorCodes.FORMAT_VERSION,
      `manifest ${what} has format version ${raw.version}; this rnode reads versions ${MANIFEST_VERSION} to ${MANIFEST_VERSION_AUTHENTICATED}, upgrade rnode`,
    );
  }
  const { checksum, ...rest } = raw;
  if (typeof checksum !== 'string' || checksum !== xxh64Hex(Buffer.from(canonical(rest)))) throw bad('checksum mismatch');
  const m = rest as PointManifest;
  const okInt = (v: unknown) => Number.isSafeInteger(v) && (v as number) >= 0;
  if (
    !okInt(m.point) ||
    !(m.parent === null || okInt(m.parent)) ||
    !okInt(m.diskSize) ||
    !okInt(m.chunkSize) ||
    !m.table ||
    !Array.isArray(m.table.segments) ||
    typeof m.disk !== 'string'
  ) {
    throw bad('missing or invalid fields');
  }
  const e = m.encryption;
  const encrypted = m.version === MANIFEST_VERSION_ENCRYPTED || m.version === MANIFEST_VERSION_AUTHENTICATED;
  const authenticated = m.version === MANIFEST_VERSION_AUTHENTICATED;
  if (
    authenticated !== (typeof m.mac === 'string') ||
    (authenticated && !/^[0-9a-f]{64}$/.test(m.mac!)) ||
    m.table.segments.some((r) => authenticated !== (typeof r?.mac === 'string'))
  ) {
    throw bad(authenticated ? 'an authenticated point without its MACs' : 'MACs in a point of a version that has none');
  }
  if (encrypted !== (e !== undefined) || (e && (e.alg !== 'aes-256-gcm' || typeof e.keyId !== 'string' || !/^[0-9a-f]{32}$/.test(e.keyId)))) {
    throw bad(encrypted ? 'an encrypted point without a valid encryption field' : 'an encryption field in an unencrypted point');
  }
  return m;
}
