// Which key a disk's points need, decided from the manifests before any chunk is read or written: a key that is
// not the chain's, a key for an unencrypted disk, or no key for an encrypted one is refused with a stable code.
// One disk is encrypted with one key for its whole life, so a chain never mixes keys or mixes in plaintext.
import type { EncryptionKey } from '../crypto/keys.js';
import { ErrorCodes, RnodeError } from '../errors.js';
import { MANIFEST_VERSION, MANIFEST_VERSION_ENCRYPTED, type PointEncryption, type PointManifest } from '../format/manifest.js';
import type { ChunkSeal } from '../pipeline/chunk-codec.js';

const PASS_KEY = 'pass its key with --encryption-key-file (agent jobs: encryption.key)';

/** The manifest fields of a point written with key, or without one. */
export function manifestEncryption(key: EncryptionKey | undefined): { version: number; encryption?: PointEncryption } {
  return key ? { version: MANIFEST_VERSION_ENCRYPTED, encryption: { alg: 'aes-256-gcm', keyId: key.keyId } } : { version: MANIFEST_VERSION };
}

/** Replicate: the new point follows the disk's latest point, so it must be written with the same key or none alike. */
export function checkWriteKey(latest: PointManifest | undefined, key: EncryptionKey | undefined, disk: string): void {
  if (!latest) return;
  const have = latest.encryption?.keyId;
  if (have === key?.keyId) return;
  if (!key) {
    throw new RnodeError(ErrorCodes.KEY_REQUIRED, `disk ${disk} is encrypted (point ${latest.point}, key id ${have}); ${PASS_KEY}`,
      { details: { disk, point: latest.point, keyId: have } });
  }
  if (!have) {
    throw new RnodeError(ErrorCodes.KEY_MISMATCH,
      `disk ${disk} is not encrypted (point ${latest.point}) and a disk's points never mix encrypted and unencrypted chunks; ` +
      'leave out the key, or replicate to a new --disk id to start an encrypted disk', { details: { disk, point: latest.point } });
  }
  throw new RnodeError(ErrorCodes.KEY_MISMATCH,
    `the key given (key id ${key.keyId}) is not the key disk ${disk} is encrypted with (key id ${have}, point ${latest.point}); ` +
    'pass that key, or replicate to a new --disk id to use another key', { details: { disk, point: latest.point, keyId: have } });
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
      throw new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `point ${m.point} of disk ${disk} and its ancestor ${p.point} disagree on encryption; the store is damaged`);
    }
  }
  if (keyId === undefined) {
    if (key) {
      throw new RnodeError(ErrorCodes.KEY_MISMATCH, `point ${m.point} of disk ${disk} is not encrypted; leave out the encryption key`,
        { details: { disk, point: m.point } });
    }
    return { encrypted: false };
  }
  if (!key) return { encrypted: true, keyId };
  if (key.keyId !== keyId) {
    throw new RnodeError(ErrorCodes.KEY_MISMATCH,
      `the key given (key id ${key.keyId}) is not the key point ${m.point} of disk ${disk} was written with (key id ${keyId}); pass that key`,
      { details: { disk, point: m.point, keyId } });
  }
  return { encrypted: true, keyId, seal: { key, disk } };
}

/** The seal a restore needs: an encrypted chain without a key is refused (KEY_REQUIRED). */
export function requireChainSeal(chain: PointManifest[], key: EncryptionKey | undefined, disk: string): ChunkSeal | undefined {
  const k = chainKey(chain, key, disk);
  if (k.encrypted && !k.seal) {
    throw new RnodeError(ErrorCodes.KEY_REQUIRED, `point ${chain[0].point} of disk ${disk} is encrypted (key id ${k.keyId}); ${PASS_KEY}`,
      { details: { disk, point: chain[0].point, keyId: k.keyId } });
  }
  return k.seal;
}
