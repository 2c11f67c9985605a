// The encryption key hierarchy: the user's 256-bit master key (read from a file, never from argv) is expanded with
// HKDF-SHA256 into independent subkeys for chunk encryption, keyed digests and the key id. The master key is not
// kept once derived, and no derived key is ever printed: an EncryptionKey shows and serialises as its key id only.
import crypto from 'node:crypto';
import fs from 'node:fs';
import { inspect } from 'node:util';
import { ErrorCodes, RnodeError } from '../errors.js';

export const ENCRYPTION_ALG = 'aes-256-gcm';
/** What a node can write, as advertised in the agent's hello. */
export const ENCRYPTION_MODES = ['none', ENCRYPTION_ALG] as const;
export const MASTER_KEY_BYTES = 32;
/** Bytes of HKDF output the key id is made of (hex in manifests). */
const KEY_ID_BYTES = 16;
/** Key files larger than this are certainly not a key; refusing them early bounds what is read. */
const MAX_KEY_FILE_BYTES = 4096;

// Domain separation: each subkey has its own HKDF info, so knowing one (e.g. the key id) says nothing of another.
const HKDF_SALT = Buffer.from('rnode key hierarchy v1', 'latin1');
const INFO = {
  cipher: 'rnode chunk encryption (aes-256-gcm) v1',
  digest: 'rnode chunk digest (keyed blake3) v1',
  keyId: 'rnode key id v1',
  meta: 'rnode metadata mac (hmac-sha256) v1',
  // Repository v2 (docs: design of issue 14): the domain name, chunk ids and sealed metadata objects.
  domain: 'rnode domain v2',
  chunkId: 'rnode chunk id v2',
  metaSeal: 'rnode metadata seal v2',
} as const;

/** Bytes of a v2 chunk id (keyed BLAKE3-256 of the plaintext). */
export const CHUNK_ID_BYTES = 32;
/** Sealed metadata: nonce | AES-256-GCM ciphertext | tag. */
export const META_NONCE_BYTES = 12;
export const META_TAG_BYTES = 16;

/** Bytes of a metadata MAC (HMAC-SHA256, untruncated). */
export const META_MAC_BYTES = 32;

/**
 * What a metadata MAC is bound to besides the object's bytes: the object's kind and its place in the store, so an
 * object moved to another disk, point, parent, generation or segment number (or read as another kind) fails.
 */
export interface MetaContext {
  kind: 'manifest' | 'table' | 'pending' | 'disk-encryption' | 'vm-point';
  disk: string;
  point?: number;
  parent?: number | null;
  generation?: number;
  segment?: number;
}

export const KEY_FORMATS = '32 raw bytes, 64 hex characters, or the base64 of 32 bytes';

function derive(master: Uint8Array, info: string, length: number): Buffer {
  return Buffer.from(crypto.hkdfSync('sha256', master, HKDF_SALT, info, length));
}

export class EncryptionKey {
  readonly alg = ENCRYPTION_ALG;
  /** A fingerprint of the master key (HKDF output, one-way): recorded in manifests, safe to show. */
  readonly keyId: string;
  readonly #cipherKey: Buffer;
  readonly #digestKey: Buffer;
  readonly #metaKey: Buffer;
  readonly #chunkIdKey: Buffer;
  readonly #sealKey: Buffer;
  /** The v2 repository domain of this key: 'k' + 16 hex of a one-way fingerprint (names r2/<domain>/). */
  readonly domain: string;

  private constructor(master: Uint8Array) {
    this.#cipherKey = derive(master, INFO.cipher, 32);
    this.#digestKey = derive(master, INFO.digest, 32);
    this.#metaKey = derive(master, INFO.meta, 32);
    this.#chunkIdKey = derive(master, INFO.chunkId, CHUNK_ID_BYTES);
    this.#sealKey = derive(master, INFO.metaSeal, 32);
    this.keyId = derive(master, INFO.keyId, KEY_ID_BYTES).toString('hex');
    this.domain = 'k' + derive(master, INFO.domain, 8).toString('hex');
  }

  /** A key from exactly 32 bytes of key material (copied; the caller may wipe its buffer afterwards). */
  static fromBytes(master: Uint8Array): EncryptionKey {
    if (master.byteLength !== MASTER_KEY_BYTES) {
      throw new RnodeError(ErrorCodes.KEY_FILE, `an encryption key is ${MASTER_KEY_BYTES} bytes, not ${master.byteLength}`);
    }
    return new EncryptionKey(master);
  }

  /** A key from the text or bytes of a key file or secret (KEY_FORMATS); `what` names the source in errors. */
  static parse(material: Uint8Array, what: string): EncryptionKey {
    const master = parseKeyMaterial(material);
    if (!master) {
      throw new RnodeError(ErrorCodes.KEY_FILE, `${what} does not hold a 256-bit key: write ${KEY_FORMATS} into it (e.g. "openssl rand -hex 32")`);
    }
    try {
      return new EncryptionKey(master);
    } finally {
      master.fill(0);
    }
  }

  /** Copies of the derived subkeys, for the codec workers only (src/pipeline/chunk-codec.ts). Never log them. */
  subkeys(): { cipherKey: Buffer; digestKey: Buffer; idKey: Buffer; domain: string } {
    // Buffer.alloc, not Buffer.from: a pooled slice would carry its whole 8 KiB pool along when posted to a worker.
    const copy = (k: Buffer) => {
      const c = Buffer.alloc(k.length);
      k.copy(c);
      return c;
    };
    return { cipherKey: copy(this.#cipherKey), digestKey: copy(this.#digestKey), idKey: copy(this.#chunkIdKey), domain: this.domain };
  }

  /** A copy of the v2 chunk-id key (keyed BLAKE3), for the codec workers only. Never log it. */
  chunkIdKey(): Buffer {
    const c = Buffer.alloc(CHUNK_ID_BYTES);
    this.#chunkIdKey.copy(c);
    return c;
  }

  /**
   * A keyed name (32 hex) for a label such as "disk\0<diskId>": object names of an encrypted domain say nothing of
   * what they hold. HMAC-SHA256 under the metadata subkey, with a prefix no metaMac input starts with.
   */
  keyedName(label: string): string {
    return crypto
      .createHmac('sha256', this.#metaKey)
      .update('rnode-name v2\0', 'utf8')
      .update(label, 'utf8')
      .digest()
      .subarray(0, 16)
      .toString('hex');
  }

  /** Seals a v2 metadata body: nonce | AES-256-GCM(body) | tag, with aad (the envelope header and the object's place). */
  sealMetadata(aad: Uint8Array, body: Uint8Array): Buffer {
    const nonce = crypto.randomBytes(META_NONCE_BYTES);
    const c = crypto.createCipheriv('aes-256-gcm', this.#sealKey, nonce, { authTagLength: META_TAG_BYTES });
    c.setAAD(aad);
    return Buffer.concat([nonce, c.update(body), c.final(), c.getAuthTag()]);
  }

  /** Opens what sealMetadata made with the same aad; undefined when it does not authenticate (edited, moved, forged). */
  openMetadata(aad: Uint8Array, sealed: Uint8Array): Buffer | undefined {
    if (sealed.length < META_NONCE_BYTES + META_TAG_BYTES) return undefined;
    const b = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength);
    const d = crypto.createDecipheriv('aes-256-gcm', this.#sealKey, b.subarray(0, META_NONCE_BYTES), { authTagLength: META_TAG_BYTES });
    d.setAAD(aad);
    d.setAuthTag(b.subarray(b.length - META_TAG_BYTES));
    const out = d.update(b.subarray(META_NONCE_BYTES, b.length - META_TAG_BYTES));
    try {
      return Buffer.concat([out, d.final()]);
    } catch {
      return undefined;
    }
  }

  /**
   * Decrypts a sealed metadata body WITHOUT checking its tag. Only for learning where an object claims to belong (the
   * disk id inside the manifest of a keyed disk name, which is one-way): the caller must then open the object with
   * openMetadata under the context it names, and trust nothing before that succeeds.
   */
  peekMetadataUnauthenticated(sealed: Uint8Array): Buffer | undefined {
    if (sealed.length < META_NONCE_BYTES + META_TAG_BYTES) return undefined;
    const b = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength);
    const d = crypto.createDecipheriv('aes-256-gcm', this.#sealKey, b.subarray(0, META_NONCE_BYTES), { authTagLength: META_TAG_BYTES });
    return d.update(b.subarray(META_NONCE_BYTES, b.length - META_TAG_BYTES));
  }

  /** HMAC-SHA256 of a metadata object's bytes under the metadata subkey, bound to ctx (see MetaContext). */
  metaMac(ctx: MetaContext, data: Uint8Array): Buffer {
    // Every field is written, absent ones as '-', so no two contexts share an encoding.
    const f = (v: number | null | undefined) => (v === undefined ? '-' : v === null ? 'null' : String(v));
    const head = `rnode-meta v1\0${ctx.kind}\0${ctx.disk}\0${f(ctx.point)}\0${f(ctx.parent)}\0${f(ctx.generation)}\0${f(ctx.segment)}\0`;
    return crypto.createHmac('sha256', this.#metaKey).update(head, 'utf8').update(data).digest();
  }

  toJSON(): { alg: string; keyId: string } {
    return { alg: this.alg, keyId: this.keyId };
  }

  toString(): string {
    return `EncryptionKey(${this.alg}, keyId ${this.keyId})`;
  }

  [inspect.custom](): string {
    return this.toString();
  }
}

/** 32 key bytes from raw bytes, 64 hex characters or base64 (text trimmed); undefined for anything else. */
export function parseKeyMaterial(material: Uint8Array): Buffer | undefined {
  const b = Buffer.from(material.buffer, material.byteOffset, material.byteLength);
  if (b.length === MASTER_KEY_BYTES) return Buffer.from(b);
  const text = b.toString('latin1').trim();
  if (/^[0-9a-fA-F]{64}$/.test(text)) return Buffer.from(text, 'hex');
  // Standard or URL-safe alphabet, padded or not: 43 characters carry 256 bits (the last one 4 bits only).
  if (/^[A-Za-z0-9+/_-]{43}=?$/.test(text)) {
    const bytes = Buffer.from(text.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
    if (bytes.length === MASTER_KEY_BYTES) return bytes;
  }
  return undefined;
}

/**
 * True for a value given where a secret's file path goes that is no existing file and reads like a secret, not a path:
 * key material in any form a key file takes, or a token-like word (20+ characters of the hex/base64 alphabets, no '.'
 * and no '/' unless it ends in base64 padding). Errors then say so without printing it back (logs keep stderr).
 */
export function looksLikeSecret(value: string): boolean {
  const t = value.trim();
  if (fs.existsSync(value)) return false;
  if (parseKeyMaterial(Buffer.from(t, 'latin1')) && t.length >= 43) return true;
  return t.length >= 20 && /^[A-Za-z0-9+/_-]+={0,2}$/.test(t) && (!t.includes('/') || t.endsWith('='));
}

/**
 * Reads a key file. Refuses a file group or others may read or write (like ssh does for private keys): a key
 * anyone on the machine can read protects nothing. Errors name the file and the rule, never the content. What the
 * file holds is checked before its mode: a file that is no key (a mistyped path, /etc/passwd) is named as such, and
 * nobody is told to chmod 600 a file that is not theirs to restrict.
 */
export function readKeyFile(file: string, flag = '--encryption-key-file'): EncryptionKey {
  const fail = (why: string) => new RnodeError(ErrorCodes.KEY_FILE, `${flag} ${file}: ${why}`);
  // The key itself given where its file's path goes: say so without printing it back (logs keep stderr).
  if (looksLikeSecret(file)) {
    throw new RnodeError(
      ErrorCodes.KEY_FILE,
      `${flag} takes the path of a file holding the key, and was given what looks like the key itself (not shown); write it into a file (chmod 600) and pass that file`,
    );
  }
  let fd: number;
  try {
    // O_NONBLOCK: a FIFO opens at once (to be refused below as no regular file) instead of waiting for a writer.
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  } catch (err) {
    throw fail(`cannot open it (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); pass a file holding the key`);
  }
  let data: Buffer | undefined;
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw fail(`is not a regular file; pass the file that holds the key (${KEY_FORMATS})`);
    if (st.size > MAX_KEY_FILE_BYTES) throw fail(`is ${st.size} bytes; a key file holds ${KEY_FORMATS}`);
    data = Buffer.alloc(st.size);
    let n = 0;
    while (n < data.length) {
      const r = fs.readSync(fd, data, n, data.length - n, n);
      if (r === 0) break;
      n += r;
    }
    const key = EncryptionKey.parse(data.subarray(0, n), `${flag} ${file}`);
    checkKeyFileMode(st.mode, (why) => fail(why), file);
    return key;
  } finally {
    data?.fill(0);
    fs.closeSync(fd);
  }
}

/** Throws (through fail) when a key file's mode lets group or others read or write it (POSIX only). */
export function checkKeyFileMode(mode: number, fail: (why: string) => Error, file: string): void {
  if (process.platform === 'win32') return;
  if ((mode & 0o066) !== 0) {
    throw fail(
      `is readable or writable by group or others (mode ${(mode & 0o777).toString(8).padStart(4, '0')}); ` + `restrict it with "chmod 600 ${file}"`,
    );
  }
}

/** How a disk's chunks are sealed: its key and the disk id every chunk's AAD binds. */
export interface ChunkSeal {
  key: EncryptionKey;
  disk: string;
}
