// A disk's claim: which repository (domain) holds its v2 points. An encrypted disk's v2 objects have keyed names, so
// without a claim a writer with no key, or another key, would not see the disk and would quietly start a second one
// under the same id (a downgrade to unencrypted writes, or a split chain). The claim's name is an unkeyed hash of the
// disk id: anyone can check a guessed id, nobody can list the ids. It holds the domain and key id, both fingerprints
// already visible in the store's folder names and manifests. It is written once, before the disk's first v2 commit.
import crypto from 'node:crypto';
import type { EncryptionKey } from '../crypto/keys.js';
import { ErrorCodes, RnodeError, isRnodeError } from '../errors.js';
import type { ObjectStore } from '../store/types.js';
import { domainName } from './domain.js';
import { claims, isDomainName, PLAIN_DOMAIN } from './names.js';

export const CLAIM_FORMAT = 'rnode-disk-claim';

export interface DiskClaim {
  format: typeof CLAIM_FORMAT;
  version: 1;
  domain: string;
  /** The key id of an encrypted disk (absent for the plain domain). */
  keyId?: string;
}

export function claimKey(disk: string): string {
  const hash = crypto.createHash('sha256').update(`rnode disk claim v1\0${disk}`, 'utf8').digest('hex').slice(0, 32);
  return claims.claim(hash);
}

/** Parses a claim from untrusted bytes; throws a plain Error naming what is wrong. */
export function decodeClaim(b: Buffer): DiskClaim {
  let v: any;
  try {
    v = JSON.parse(b.toString('utf8'));
  } catch {
    throw new Error('a disk claim is not valid JSON');
  }
  if (
    !v ||
    v.format !== CLAIM_FORMAT ||
    v.version !== 1 ||
    typeof v.domain !== 'string' ||
    !isDomainName(v.domain) ||
    (v.keyId !== undefined && (typeof v.keyId !== 'string' || !/^[0-9a-f]{32}$/.test(v.keyId))) ||
    (v.domain === PLAIN_DOMAIN) !== (v.keyId === undefined)
  ) {
    throw new Error('not a disk claim');
  }
  return { format: CLAIM_FORMAT, version: 1, domain: v.domain, ...(v.keyId ? { keyId: v.keyId } : {}) };
}

export async function readClaim(store: ObjectStore, disk: string): Promise<DiskClaim | undefined> {
  const key = claimKey(disk);
  let bytes: Buffer;
  try {
    bytes = await store.get(key);
  } catch (err) {
    if (isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) return undefined;
    throw err;
  }
  try {
    return decodeClaim(bytes);
  } catch (err) {
    throw new RnodeError(
      ErrorCodes.MANIFEST_CORRUPT,
      `the claim ${key} of disk ${disk} is damaged (${(err as Error).message}); restore it from another copy of the store`,
    );
  }
}

/**
 * Throws KEY_REQUIRED or KEY_MISMATCH when the disk's claim names another repository than the key's. keyHoldsPoints:
 * the key's repository holds v2 points of the disk; a claim that then names another repository was replaced (it is
 * written before the first v2 commit and never changes): METADATA_FORGED, never advice to leave out the key, which
 * would start a second, unencrypted disk of the same id. A missing claim is written again by the caller (ensureClaim):
 * builds between repository v2 and claims wrote encrypted points without one, and a deleted claim is a forged one
 * only once another writer claimed the disk in its place.
 */
export function checkClaim(claim: DiskClaim | undefined, key: EncryptionKey | undefined, disk: string, keyHoldsPoints = false): void {
  if (key && keyHoldsPoints && claim && claim.domain !== domainName(key)) {
    const says = claim.keyId ? `names another key (key id ${claim.keyId})` : 'says the disk is not encrypted';
    const own: DiskClaim = { format: CLAIM_FORMAT, version: 1, domain: domainName(key), keyId: key.keyId };
    throw new RnodeError(
      ErrorCodes.METADATA_FORGED,
      `the claim disagrees with the disk's points: ${claimKey(disk)} of disk ${disk} ${says}, while its points are ` +
        `encrypted with the key given (key id ${key.keyId}); someone with write access to the store deleted or replaced ` +
        `it, and nothing was written. Check who can write the store, then put the claim back as ${JSON.stringify(own)}`,
      { details: { disk, key: claimKey(disk), keyId: key.keyId, ...(claim ? { claimed: claim.domain } : {}) } },
    );
  }
  // The domain and the key id both follow from the key: a claim that names one of the key's and not the other was
  // edited (an error naming the same key id twice as two keys; a writer kept the edited claim).
  if (key && claim && claim.domain !== PLAIN_DOMAIN && (claim.domain === domainName(key)) !== (claim.keyId === key.keyId)) {
    const own: DiskClaim = { format: CLAIM_FORMAT, version: 1, domain: domainName(key), keyId: key.keyId };
    throw new RnodeError(
      ErrorCodes.METADATA_FORGED,
      `the claim ${claimKey(disk)} of disk ${disk} was edited: it names ${claim.keyId === key.keyId ? 'the key id of the key given with another repository' : "the key given's repository with another key id"}, ` +
        `which no key gives; nothing was read or written. Check who can write the store; if the disk is encrypted with the key given, put the claim back as ${JSON.stringify(own)}`,
      { details: { disk, key: claimKey(disk), keyId: key.keyId, claimed: claim.domain } },
    );
  }
  if (!claim || claim.domain === domainName(key)) return;
  if (!key) {
    throw new RnodeError(
      ErrorCodes.KEY_REQUIRED,
      `disk ${disk} is encrypted (key id ${claim.keyId}); pass its key with --encryption-key-file (agent jobs: encryption.key)`,
      { details: { disk, keyId: claim.keyId } },
    );
  }
  if (claim.domain === PLAIN_DOMAIN) {
    throw new RnodeError(
      ErrorCodes.KEY_MISMATCH,
      `disk ${disk} is not encrypted and a disk's points never mix encrypted and unencrypted chunks; leave out the key, or replicate to a new --disk id to start an encrypted disk`,
      { details: { disk } },
    );
  }
  throw new RnodeError(
    ErrorCodes.KEY_MISMATCH,
    `the key given (key id ${key.keyId}) is not the key disk ${disk} is encrypted with (key id ${claim.keyId}); pass that key, or replicate to a new --disk id to use another key`,
    { details: { disk, keyId: claim.keyId } },
  );
}

/** Writes the disk's claim for the key's repository if it has none; a claim written meanwhile is checked instead. */
export async function ensureClaim(store: ObjectStore, disk: string, key: EncryptionKey | undefined): Promise<void> {
  const claim: DiskClaim = { format: CLAIM_FORMAT, version: 1, domain: domainName(key), ...(key ? { keyId: key.keyId } : {}) };
  try {
    await store.put(claimKey(disk), Buffer.from(JSON.stringify(claim) + '\n'), { ifNoneMatch: true });
  } catch (err) {
    if (!isRnodeError(err, ErrorCodes.STORE_PRECONDITION)) throw err;
    checkClaim(await readClaim(store, disk), key, disk);
  }
}
