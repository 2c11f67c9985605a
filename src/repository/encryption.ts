// Which key a disk's points need, decided from the manifests before any chunk is read or written: a key that is
// not the chain's, a key for an unencrypted disk, or no key for an encrypted one is refused with a stable code.
// One disk is encrypted with one key for its whole life, so a chain never mixes keys or mixes in plaintext.
// Authenticity (manifest version 3): the disk's encryption marker, the manifests' MACs and the rule that versions
// never go down along a chain are checked here, before any table or chunk is used (docs/formats.md).
import type { ChunkSeal, EncryptionKey } from '../crypto/keys.js';
import { ErrorCodes, RnodeError, isRnodeError } from '../errors.js';
import { layout } from './names.js';
import { authenticateManifest, MANIFEST_VERSION, MANIFEST_VERSION_AUTHENTICATED, type PointManifest } from '../format/manifest.js';
import { decodeSegment } from '../format/table.js';
import type { ObjectStore } from '../store/types.js';
import { isV2Point } from './point-format.js';
import { segmentExpectation, tableEntries } from './view.js';

const PASS_KEY = 'pass its key with --encryption-key-file (agent jobs: encryption.key)';

/**
 * The disk's encryption marker (disks/<disk>/encryption.json): written once, before the disk's first authenticated
 * point, and kept by prune. `since` is that point's number: every point from it on must be version 3.
 */
export interface DiskMarker {
  format: 'rnode-disk-encryption';
  disk: string;
  alg: 'aes-256-gcm';
  keyId: string;
  since: number;
  mac?: string;
}

function markerMac(m: DiskMarker, key: EncryptionKey): string {
  const { mac: _mac, ...rest } = m;
  return key.metaMac({ kind: 'disk-encryption', disk: m.disk }, Buffer.from(JSON.stringify(rest))).toString('hex');
}

/**
 * Reads the marker; with key it must carry a valid MAC and name this key. Without a key its mere presence counts:
 * it cannot be checked, but it can only make rnode refuse more (a planted marker blocks key-less writes, nothing else).
 */
export async function readDiskMarker(store: ObjectStore, disk: string, key: EncryptionKey | undefined): Promise<DiskMarker | undefined> {
  const where = layout.encryptionMarker(disk);
  let raw: any;
  try {
    raw = JSON.parse((await store.get(where)).toString('utf8'));
  } catch (err) {
    if (isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) return undefined;
    if (!(err instanceof SyntaxError)) throw err;
    raw = undefined;
  }
  const valid =
    raw && raw.format === 'rnode-disk-encryption' && raw.disk === disk && typeof raw.keyId === 'string' && Number.isSafeInteger(raw.since);
  if (!key) return valid ? raw : { format: 'rnode-disk-encryption', disk, alg: 'aes-256-gcm', keyId: 'unknown', since: 0 };
  if (!valid || raw.mac !== markerMac(raw, key)) {
    if (valid && raw.keyId !== key.keyId) {
      throw new RnodeError(
        ErrorCodes.KEY_MISMATCH,
        `the key given (key id ${key.keyId}) is not the key disk ${disk} is encrypted with (key id ${raw.keyId}); pass that key`,
        { details: { disk, keyId: raw.keyId } },
      );
    }
    throw new RnodeError(
      ErrorCodes.METADATA_FORGED,
      `the encryption marker ${where} of disk ${disk} fails its MAC: it was modified or forged; restore the store from a copy`,
      { details: { key: where } },
    );
  }
  return raw;
}

/**
 * Refuses a key-less write (replicate, prune) to a disk that has held an encrypted point: its latest manifest says so,
 * or its marker does (the marker catches manifests rewritten as unencrypted by someone without the key).
 */
export function refuseKeylessWrite(latest: PointManifest | undefined, marker: DiskMarker | undefined, disk: string, what: string): void {
  if (latest?.encryption || marker) {
    const keyId = latest?.encryption?.keyId ?? marker?.keyId;
    throw new RnodeError(ErrorCodes.KEY_REQUIRED, `disk ${disk} is encrypted (key id ${keyId}) and ${what} writes to it; ${PASS_KEY}`, {
      details: { disk, keyId },
    });
  }
}

/**
 * The authenticity rules of a chain (newest first), checked before any of its tables or chunks is used:
 * on a disk with a marker no point is unencrypted and every point from marker.since on is version 3; versions never
 * go down from a point to its ancestor's descendants (a version 3 point's child is version 3); and with the key every
 * version 3 manifest's MAC is checked; an authenticated point needs the marker. Errors are METADATA_FORGED naming
 * the object key.
 */
export function checkChainAuthenticity(chain: PointManifest[], key: EncryptionKey | undefined, marker: DiskMarker | undefined, disk: string): void {
  // The marker is written before a disk's first authenticated point and never deleted: an authenticated point
  // without it means it was removed, which would let older points be rewritten as unauthenticated ones unnoticed.
  const first = chain.find((m) => m.version === MANIFEST_VERSION_AUTHENTICATED);
  if (!marker && first) {
    const where = layout.encryptionMarker(disk);
    throw new RnodeError(
      ErrorCodes.METADATA_FORGED,
      `the encryption marker ${where} of disk ${disk} is missing while point ${first.point} is authenticated: it was deleted; restore it from a copy of the store`,
      { details: { key: where } },
    );
  }
  for (let i = 0; i < chain.length; i++) {
    const m = chain[i];
    const where = layout.point(disk, m.point);
    const forged = (why: string) =>
      new RnodeError(
        ErrorCodes.METADATA_FORGED,
        `manifest ${where} ${why}: it was rewritten by someone without the key; restore from another point or store`,
        { details: { key: where, point: m.point } },
      );
    if (marker && m.version === MANIFEST_VERSION) throw forged('is unencrypted on an encrypted disk');
    // A v2 point (version 4) of an encrypted domain is sealed: it opened under the key, so it is authentic.
    const sealedV2 = isV2Point(m) && m.encryption !== undefined;
    if (marker && m.point >= marker.since && m.version !== MANIFEST_VERSION_AUTHENTICATED && !sealedV2)
      throw forged(`is version ${m.version} (not authenticated)`);
    const older = chain[i + 1];
    if (older && older.version === MANIFEST_VERSION_AUTHENTICATED && m.version !== MANIFEST_VERSION_AUTHENTICATED && !sealedV2) {
      throw forged(`is version ${m.version} but its ancestor ${older.point} is authenticated`);
    }
    if (key && m.version === MANIFEST_VERSION_AUTHENTICATED) authenticateManifest(m, key, where);
  }
}

/**
 * Reads and checks every table segment of a chain before a restore writes its first byte, so a dropped, edited or
 * replayed segment stops it with nothing written (tables are 64 bytes per chunk: a small read beside the chunks).
 */
export async function authenticateTables(store: ObjectStore, chain: PointManifest[], key: EncryptionKey): Promise<void> {
  for (const m of chain) {
    if (isV2Point(m)) {
      // Sealed segments: reading them through tableEntries opens and pins each one.
      for await (const _ of tableEntries(store, m, key)) {
        /* checked as read */
      }
      continue;
    }
    if (m.version !== MANIFEST_VERSION_AUTHENTICATED) continue;
    for (const [n, ref] of m.table.segments.entries()) {
      let bytes: Buffer;
      try {
        bytes = await store.get(ref.key);
      } catch (err) {
        if (isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) {
          throw new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `chunk table ${ref.key} of point ${m.point} is missing; restore from another point`);
        }
        throw err;
      }
      decodeSegment(bytes, ref.key, segmentExpectation(m, n, key));
    }
  }
}

/** Replicate: the new point follows the disk's latest point, so it must be written with the same key or none alike. */
export function checkWriteKey(latest: PointManifest | undefined, key: EncryptionKey | undefined, disk: string, marker?: DiskMarker): void {
  if (!key) refuseKeylessWrite(latest, marker, disk, 'replicate');
  if (!latest) return;
  if (key && (latest.encryption || marker)) checkChainAuthenticity([latest], key, marker, disk);
  const have = latest.encryption?.keyId;
  if (have === key?.keyId) return;
  if (!key) {
    throw new RnodeError(ErrorCodes.KEY_REQUIRED, `disk ${disk} is encrypted (point ${latest.point}, key id ${have}); ${PASS_KEY}`, {
      details: { disk, point: latest.point, keyId: have },
    });
  }
  if (!have) {
    throw new RnodeError(
      ErrorCodes.KEY_MISMATCH,
      `disk ${disk} is not encrypted (point ${latest.point}) and a disk's points never mix encrypted and unencrypted chunks; ` +
        'leave out the key, or replicate to a new --disk id to start an encrypted disk',
      { details: { disk, point: latest.point } },
    );
  }
  throw new RnodeError(
    ErrorCodes.KEY_MISMATCH,
    `the key given (key id ${key.keyId}) is not the key disk ${disk} is encrypted with (key id ${have}, point ${latest.point}); ` +
      'pass that key, or replicate to a new --disk id to use another key',
    { details: { disk, point: latest.point, keyId: have } },
  );
}

/** How a chain (newest first) is read: encrypted or not, and the seal when a matching key was given. */
export interface ChainKey {
  encrypted: boolean;
  keyId?: string;
  /** Set when the chain is encrypted and the key matches; absent for an unencrypted chain or no key. */
  seal?: ChunkSeal;
}

/**
 * Recover and verify: checks the key against the chain before any chunk is fetched. No key for an encrypted chain
 * is returned as {encrypted: true} without a seal; the caller refuses it (recover) or checks stored bytes (verify).
 */
export function chainKey(chain: PointManifest[], key: EncryptionKey | undefined, disk: string): ChainKey {
  const m = chain[0];
  const keyId = m.encryption?.keyId;
  for (const p of chain) {
    if (p.encryption?.keyId !== keyId) {
      throw new RnodeError(
        ErrorCodes.MANIFEST_CORRUPT,
        `point ${m.point} of disk ${disk} and its ancestor ${p.point} disagree on encryption; the store is damaged`,
      );
    }
  }
  if (keyId === undefined) {
    if (key) {
      throw new RnodeError(ErrorCodes.KEY_MISMATCH, `point ${m.point} of disk ${disk} is not encrypted; leave out the encryption key`, {
        details: { disk, point: m.point },
      });
    }
    return { encrypted: false };
  }
  if (!key) return { encrypted: true, keyId };
  if (key.keyId !== keyId) {
    throw new RnodeError(
      ErrorCodes.KEY_MISMATCH,
      `the key given (key id ${key.keyId}) is not the key point ${m.point} of disk ${disk} was written with (key id ${keyId}); pass that key`,
      { details: { disk, point: m.point, keyId } },
    );
  }
  return { encrypted: true, keyId, seal: { key, disk } };
}

/** The seal a restore needs: an encrypted chain without a key is refused (KEY_REQUIRED); a forged chain too. */
export function requireChainSeal(chain: PointManifest[], key: EncryptionKey | undefined, disk: string, marker?: DiskMarker): ChunkSeal | undefined {
  // The version rules first (a downgraded chain must not be answered with "leave out the key"), then the key, then MACs.
  if (marker) checkChainAuthenticity(chain, undefined, marker, disk);
  const k = chainKey(chain, key, disk);
  checkChainAuthenticity(chain, k.seal ? key : undefined, marker, disk);
  if (k.encrypted && !k.seal) {
    throw new RnodeError(ErrorCodes.KEY_REQUIRED, `point ${chain[0].point} of disk ${disk} is encrypted (key id ${k.keyId}); ${PASS_KEY}`, {
      details: { disk, point: chain[0].point, keyId: k.keyId },
    });
  }
  return k.seal;
}
