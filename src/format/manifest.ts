// The point manifest: JSON naming the point, its parent, its chunk-table segments and its stats, sealed with
// an xxh64 of its own canonical text. Writing it is the commit of the point.
// Version 2 is an encrypted point: it carries `encryption` ({alg, keyId}; the key id is a one-way fingerprint of
// the master key, never the key), its chunks are chunk format version 2 and its table records hold keyed digests.
// An rnode that reads only version 1 refuses such a point instead of writing unencrypted points onto its chain.
import { ErrorCodes, RnodeError } from '../errors.js';
import { xxh64Hex } from './checksum.js';

export const MANIFEST_FORMAT = 'rnode-point';
export const MANIFEST_VERSION = 1;
export const MANIFEST_VERSION_ENCRYPTED = 2;

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
}

export interface PointStats {
  chunksTotal: number;
  chunksChanged: number;
  chunksZero: number;
  bytesRead: number;
  bytesWritten: number;
  seconds: number;
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
  /** Present exactly when the point is encrypted (version 2). */
  encryption?: PointEncryption;
  stats: PointStats;
}

function canonical(m: PointManifest): string {
  return JSON.stringify(m);
}

export function encodeManifest(m: PointManifest): Buffer {
  return Buffer.from(JSON.stringify({ ...m, checksum: xxh64Hex(Buffer.from(canonical(m))) }, null, 1) + '\n');
}

export function decodeManifest(b: Buffer, what: string): PointManifest {
  const bad = (why: string) => new RnodeError(ErrorCodes.MANIFEST_CORRUPT,
    `manifest ${what} is corrupt (${why}); run "rnode verify" and restore from another point`);
  let raw: any;
  try {
    raw = JSON.parse(b.toString('utf8'));
  } catch {
    throw bad('not valid JSON');
  }
  if (!raw || typeof raw !== 'object' || raw.format !== MANIFEST_FORMAT) throw bad('not an rnode point manifest');
  if (raw.version !== MANIFEST_VERSION && raw.version !== MANIFEST_VERSION_ENCRYPTED) {
    throw new RnodeError(ErrorCodes.FORMAT_VERSION,
      `manifest ${what} has format version ${raw.version}; this rnode reads versions ${MANIFEST_VERSION} and ${MANIFEST_VERSION_ENCRYPTED}, upgrade rnode`);
  }
  const { checksum, ...rest } = raw;
  if (typeof checksum !== 'string' || checksum !== xxh64Hex(Buffer.from(canonical(rest)))) throw bad('checksum mismatch');
  const m = rest as PointManifest;
  const okInt = (v: unknown) => Number.isSafeInteger(v) && (v as number) >= 0;
  if (!okInt(m.point) || !(m.parent === null || okInt(m.parent)) || !okInt(m.diskSize) || !okInt(m.chunkSize) ||
      !m.table || !Array.isArray(m.table.segments) || typeof m.disk !== 'string') {
    throw bad('missing or invalid fields');
  }
  const e = m.encryption;
  const encrypted = m.version === MANIFEST_VERSION_ENCRYPTED;
  if (encrypted !== (e !== undefined) || (e && (e.alg !== 'aes-256-gcm' || typeof e.keyId !== 'string' || !/^[0-9a-f]{32}$/.test(e.keyId)))) {
    throw bad(encrypted ? 'an encrypted point without a valid encryption field' : 'an encryption field in an unencrypted point');
  }
  return m;
}
