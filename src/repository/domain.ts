// A v2 repository "domain": all the v2 objects of one encryption key (or of no key: `plain`) under r2/<domain>/,
// with its config object and the keys its names and chunk ids are made with. Dedup happens within a domain.
import { Blake3Hasher } from '../native/index.js';
import { CHUNK_ID_BYTES, type EncryptionKey } from '../crypto/keys.js';
import { ErrorCodes, RnodeError, isRnodeError } from '../errors.js';
import type { ObjectStore } from '../store/types.js';
import { EnvelopeKind, envelopeContext, openEnvelope, sealEnvelope } from './envelope.js';
import { PLAIN_DOMAIN, r2, validateDiskId } from './names.js';

/** Default pack target size: big enough that a cloud PUT's cost is amortised, small enough to repack cheaply. */
export const DEFAULT_PACK_SIZE = 16 * 1024 * 1024;
export const MIN_PACK_SIZE = 64 * 1024;
export const MAX_PACK_SIZE = 256 * 1024 * 1024;

/**
 * The chunk-id key of the `plain` domain: a fixed, public derivation. Ids of unencrypted chunks need no secrecy (the
 * blobs hold the plaintext), and a random key kept in the config could be lost to a concurrent first write on a store
 * that does not enforce ifNoneMatch, leaving the loser's chunks with ids nobody can recompute.
 */
export const PLAIN_ID_KEY: Buffer = Blake3Hasher.deriveKey('rnode plain chunk id v2', Buffer.alloc(0));

export interface RepoConfig {
  format: 'rnode-repository';
  version: 2;
  domain: string;
  /** Pack target size in bytes; a run's --pack-size overrides it for that run. */
  packSize: number;
  createdAt: string;
  encryption?: { alg: 'aes-256-gcm'; keyId: string };
}

export function domainName(key: EncryptionKey | undefined): string {
  return key ? key.domain : PLAIN_DOMAIN;
}

export function validatePackSize(n: number): number {
  if (!Number.isSafeInteger(n) || n < MIN_PACK_SIZE || n > MAX_PACK_SIZE) {
    throw new RnodeError(ErrorCodes.USAGE, `pack size ${n} is out of range: use ${MIN_PACK_SIZE} to ${MAX_PACK_SIZE} bytes (e.g. --pack-size 16MiB)`);
  }
  return n;
}

export function encodeConfig(c: RepoConfig, key?: EncryptionKey): Buffer {
  return sealEnvelope(EnvelopeKind.CONFIG, envelopeContext.config(c.domain), Buffer.from(JSON.stringify(c)), key);
}

export function decodeConfig(b: Buffer, domain: string, key?: EncryptionKey): RepoConfig {
  const what = r2.config(domain);
  const c = JSON.parse(openEnvelope(b, EnvelopeKind.CONFIG, envelopeContext.config(domain), what, key).toString('utf8'));
  if (!c || c.format !== 'rnode-repository' || c.domain !== domain || !Number.isSafeInteger(c.packSize)) {
    throw new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `repository config ${what} is not valid; run "rnode check"`, { details: { key: what } });
  }
  if (c.version !== 2) {
    throw new RnodeError(ErrorCodes.FORMAT_VERSION, `repository ${what} is version ${c.version}; this rnode reads version 2, upgrade rnode`);
  }
  return c as RepoConfig;
}

/** One domain as a writer or reader sees it: its name, key, chunk-id key and config. */
export class Domain {
  readonly name: string;
  readonly idKey: Buffer;

  private constructor(
    readonly key: EncryptionKey | undefined,
    readonly config: RepoConfig,
  ) {
    this.name = domainName(key);
    this.idKey = key ? key.chunkIdKey() : PLAIN_ID_KEY;
  }

  /** The disk's name under r2/<domain>/disks/: the disk id in `plain`, a keyed name in an encrypted domain. */
  dname(diskId: string): string {
    validateDiskId(diskId);
    return this.key ? this.key.keyedName(`disk\0${diskId}`) : diskId;
  }

  /** Chunk id of a plaintext (keyed BLAKE3-256); the codec workers compute the same (src/pipeline/codec-ops.ts). */
  chunkId(plain: Uint8Array): Buffer {
    return Blake3Hasher.newKeyed(this.idKey)
      .update(Buffer.from(plain.buffer, plain.byteOffset, plain.byteLength))
      .digestBuffer()
      .subarray(0, CHUNK_ID_BYTES);
  }

  /** The domain as stored, or undefined when it has no config yet (nothing was ever written to it). */
  static async open(store: ObjectStore, key: EncryptionKey | undefined): Promise<Domain | undefined> {
    const name = domainName(key);
    try {
      return new Domain(key, decodeConfig(await store.get(r2.config(name)), name, key));
    } catch (err) {
      if (isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) return undefined;
      throw err;
    }
  }

  /**
   * A domain whose objects a listing found (check, stats): without its config it is damaged, not new, and its objects
   * cannot be read (MANIFEST_CORRUPT, naming the config).
   */
  static async openListed(store: ObjectStore, key: EncryptionKey | undefined): Promise<Domain> {
    const domain = await Domain.open(store, key);
    if (domain) return domain;
    const name = domainName(key);
    throw new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `repository ${name} has objects but no config ${r2.config(name)}; the store is damaged`, {
      details: { key: r2.config(name) },
    });
  }

  /**
   * The domain for a command that does not create it (prune): undefined when the store holds nothing of it; objects of
   * it without a config are openListed's MANIFEST_CORRUPT (prune swept nothing, said nothing and exited 0).
   */
  static async openIfAny(store: ObjectStore, key: EncryptionKey | undefined): Promise<Domain | undefined> {
    const domain = await Domain.open(store, key);
    if (domain) return domain;
    for await (const _ of store.list(r2.domainPrefix(domainName(key)))) return Domain.openListed(store, key);
    return undefined;
  }

  /** Opens the domain, writing its config first when it has none (writers only). */
  static async openOrCreate(store: ObjectStore, key: EncryptionKey | undefined, packSize = DEFAULT_PACK_SIZE): Promise<Domain> {
    const existing = await Domain.open(store, key);
    if (existing) return existing;
    const name = domainName(key);
    const config: RepoConfig = {
      format: 'rnode-repository',
      version: 2,
      domain: name,
      packSize: validatePackSize(packSize),
      createdAt: new Date().toISOString(),
      ...(key ? { encryption: { alg: 'aes-256-gcm' as const, keyId: key.keyId } } : {}),
    };
    try {
      await store.put(r2.config(name), encodeConfig(config, key), { ifNoneMatch: true });
    } catch (err) {
      if (!isRnodeError(err, ErrorCodes.STORE_PRECONDITION)) throw err;
    }
    // Whoever won the race, the config as stored is the one everyone uses.
    return (await Domain.open(store, key))!;
  }

  /** A domain for pure encoding (tests, receivers): the config is not read from a store. */
  static of(key: EncryptionKey | undefined, packSize = DEFAULT_PACK_SIZE): Domain {
    const name = domainName(key);
    return new Domain(key, { format: 'rnode-repository', version: 2, domain: name, packSize, createdAt: new Date(0).toISOString() });
  }
}

/** The name a disk's one-writer lease is taken under (disks/<name>/lease.json): the disk's name in its domain. */
export function leaseName(diskId: string, key: EncryptionKey | undefined): string {
  return key ? key.keyedName(`disk\0${validateDiskId(diskId)}`) : validateDiskId(diskId);
}
