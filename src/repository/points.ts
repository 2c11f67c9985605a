// Reading committed points: list a disk's manifests, load one, resolve "latest" or a number. A disk's points are
// its legacy points (disks/<disk>/points/) and its repository v2 points (r2/<domain>/disks/<dname>/points/) in one
// sequence: v2 points continue the numbering. The domain is the key's (or `plain` without one), so an encrypted
// disk's v2 points are found with its key only (their names are keyed).
import { checkClaim, readClaim } from './claims.js';
import type { EncryptionKey } from '../crypto/keys.js';
import { ErrorCodes, RnodeError, isRnodeError } from '../errors.js';
import { decodeManifest, type PointManifest } from '../format/manifest.js';
import type { ObjectStore } from '../store/types.js';
import { Domain } from './domain.js';
import { classify, layout, r2 } from './names.js';
import { decodeManifestV4 } from './point-format.js';

/** Sequence numbers of the disk's v2 points in the key's domain. */
export async function listV2PointSeqs(store: ObjectStore, disk: string, key?: EncryptionKey): Promise<number[]> {
  const domain = Domain.of(key);
  const seqs: number[] = [];
  for await (const o of store.list(r2.pointsPrefix(domain.name, domain.dname(disk)))) {
    const h = classify(o.key);
    if (h?.kind === 'manifest') seqs.push(h.point);
  }
  return seqs.sort((a, b) => a - b);
}

async function listLegacySeqs(store: ObjectStore, disk: string): Promise<number[]> {
  const seqs: number[] = [];
  for await (const o of store.list(layout.pointsPrefix(disk))) {
    const h = classify(o.key);
    if (h?.kind === 'legacy-manifest') seqs.push(h.point);
  }
  return seqs;
}

export async function listPointSeqs(store: ObjectStore, disk: string, key?: EncryptionKey): Promise<number[]> {
  const [legacy, v2] = await Promise.all([listLegacySeqs(store, disk), listV2PointSeqs(store, disk, key)]);
  return [...new Set([...legacy, ...v2])].sort((a, b) => a - b);
}

export async function loadPoint(store: ObjectStore, disk: string, seq: number, key?: EncryptionKey): Promise<PointManifest> {
  const domain = Domain.of(key);
  const v2key = r2.point(domain.name, domain.dname(disk), seq);
  try {
    return decodeManifestV4(await store.get(v2key), domain, disk, seq);
  } catch (err) {
    if (!isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) throw err;
  }
  const where = layout.point(disk, seq);
  let bytes: Buffer;
  try {
    bytes = await store.get(where);
  } catch (err) {
    if (isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) {
      throw new RnodeError(ErrorCodes.POINT_NOT_FOUND, `point ${seq} of disk ${disk} does not exist; list points with "rnode points"`);
    }
    throw err;
  }
  const m = decodeManifest(bytes, where);
  if (m.point !== seq || m.disk !== disk) {
    throw new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `manifest ${where} names point ${m.point} of disk ${m.disk}; the store is damaged`);
  }
  return m;
}

export async function listPoints(store: ObjectStore, disk: string, key?: EncryptionKey): Promise<PointManifest[]> {
  const out: PointManifest[] = [];
  for (const s of await listPointSeqs(store, disk, key)) out.push(await loadPoint(store, disk, s, key));
  return out;
}

/** "latest", undefined or a point number → an existing point's number. */
export async function resolvePoint(store: ObjectStore, disk: string, which: string | undefined, key?: EncryptionKey): Promise<number> {
  const seqs = await listPointSeqs(store, disk, key);
  if (seqs.length === 0) await explainNoPoints(store, disk, key);
  if (which === undefined || which === 'latest') return seqs[seqs.length - 1];
  if (!/^\d+$/.test(which)) {
    throw new RnodeError(ErrorCodes.USAGE, `--point "${which}" is not a point number; pass a number from "rnode points" or "latest"`);
  }
  const n = Number(which);
  if (!seqs.includes(n)) {
    throw new RnodeError(ErrorCodes.POINT_NOT_FOUND,
      `point ${which} of disk ${disk} does not exist; existing points: ${seqs.join(', ')} (or "latest")`);
  }
  return n;
}

/** The point and its ancestors, newest first, each checked to be a consistent delta of the next. */
export async function loadChain(store: ObjectStore, disk: string, seq: number, key?: EncryptionKey): Promise<PointManifest[]> {
  const chain: PointManifest[] = [];
  let m: PointManifest | undefined = await loadPoint(store, disk, seq, key);
  while (m) {
    chain.push(m);
    if (m.parent === null) break;
    if (m.parent >= m.point) throw new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `point ${m.point} names a later parent ${m.parent}; the store is damaged`);
    const parent: PointManifest = await loadPoint(store, disk, m.parent, key).catch((err) => {
      if (isRnodeError(err, ErrorCodes.POINT_NOT_FOUND)) {
        throw new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `point ${m!.point} needs point ${m!.parent}, which is missing; the store is damaged`);
      }
      throw err;
    });
    if (parent.diskSize !== m.diskSize || parent.chunkSize !== m.chunkSize) {
      throw new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `point ${m.point} and its parent ${parent.point} disagree on disk geometry; the store is damaged`);
    }
    // A chain never mixes formats: the first v2 point of a disk stands alone.
    if ((m.version === 4) !== (parent.version === 4)) {
      throw new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `point ${m.point} and its parent ${parent.point} are of different repository formats; the store is damaged`);
    }
    m = parent;
  }
  return chain;
}

/**
 * Throws the reason a disk shows no points with this key (or none): an encrypted disk's v2 names are keyed, so a
 * wrong or missing key finds nothing. KEY_MISMATCH when the disk is unencrypted but a key was given, or when the store
 * holds other encrypted repositories; KEY_REQUIRED when no key was given and it holds encrypted ones; else
 * DISK_NOT_FOUND.
 */
export async function explainNoPoints(store: ObjectStore, disk: string, key: EncryptionKey | undefined): Promise<never> {
  checkClaim(await readClaim(store, disk), key, disk);
  const own = Domain.of(key).name;
  let otherEncrypted = false;
  for await (const o of store.list(r2.prefix)) {
    const d = o.key.split('/')[1];
    if (d !== own && d !== 'plain') { otherEncrypted = true; break; }
  }
  if (key && (await listV2PointSeqs(store, disk, undefined)).length > 0) {
    throw new RnodeError(ErrorCodes.KEY_MISMATCH, `disk ${disk} is not encrypted; leave out the encryption key`, { details: { disk } });
  }
  if (key && otherEncrypted) {
    throw new RnodeError(ErrorCodes.KEY_MISMATCH,
      `disk ${disk} has no points in the repository of the key given (key id ${key.keyId}); the store holds other encrypted repositories: pass the disk's key`,
      { details: { disk, keyId: key.keyId } });
  }
  if (!key && otherEncrypted) {
    throw new RnodeError(ErrorCodes.KEY_REQUIRED,
      `disk ${disk} has no points readable without a key, and the store holds encrypted repositories; pass its key with --encryption-key-file (agent jobs: encryption.key)`, { details: { disk } });
  }
  throw new RnodeError(ErrorCodes.DISK_NOT_FOUND, `disk ${disk} has no committed points in ${store.location}; check --disk and --store`);
}
