// Secrets travel by reference: a policy names "env:NAME" or "file:NAME" and the node resolves it locally, at
// the moment a run needs it. Resolved values go to the store client's environment (or become an encryption key)
// and to the logger's redaction list, never to disk or to the server.
import fsp from 'node:fs/promises';
import { checkKeyFileMode, EncryptionKey, KEY_FORMATS, parseKeyMaterial } from '../crypto/keys.js';
import { ErrorCodes, RnodeError } from '../errors.js';
import type { Logger } from '../log.js';
import { ProtoErrors, type EncryptionDef, type SecretRef, type StoreDef } from './protocol.js';
import type { StateDir } from './state.js';

/** The raw bytes a reference names (a file: secret unchanged, an env: secret as UTF-8), and the file it came from. */
async function secretBytes(ref: SecretRef, state: StateDir): Promise<{ bytes: Buffer; file?: string }> {
  const m = /^(env|file):(.+)$/.exec(ref.secretRef);
  if (!m) throw new RnodeError(ProtoErrors.SECRET, `secret reference ${JSON.stringify(ref.secretRef)} is not env:NAME or file:NAME`);
  let bytes: Buffer | undefined;
  const file = m[1] === 'file' ? state.secretPath(m[2]) : undefined;
  if (file) bytes = await fsp.readFile(file).catch(() => undefined);
  else if (process.env[m[2]] !== undefined) bytes = Buffer.from(process.env[m[2]]!, 'utf8');
  if (bytes === undefined || bytes.length === 0) {
    throw new RnodeError(
      ProtoErrors.SECRET,
      `secret ${ref.secretRef} is not available on this node; ` + (file ? `put it in ${file}` : `set ${m[2]} in the agent's environment`),
    );
  }
  return { bytes, ...(file ? { file } : {}) };
}

/** privateKey: a file secret must be private to the node's user (an export's TLS key), as --tls-key must. */
export async function resolveSecret(ref: SecretRef, state: StateDir, log: Logger, opts: { privateKey?: boolean } = {}): Promise<string> {
  const { bytes, file } = await secretBytes(ref, state);
  if (file && opts.privateKey) {
    checkKeyFileMode((await fsp.stat(file)).mode, (why) => new RnodeError(ProtoErrors.SECRET, `secret ${ref.secretRef}: ${file} ${why}`), file);
  }
  const value = bytes.toString('utf8').replace(/\r?\n$/, '');
  if (value === '') throw new RnodeError(ProtoErrors.SECRET, `secret ${ref.secretRef} is empty on this node`);
  log.addSecret(value);
  return value;
}

/** The environment a store client sees: the node's, plus the store definition's (secrets resolved). */
export async function storeEnv(def: StoreDef, state: StateDir, log: Logger): Promise<NodeJS.ProcessEnv> {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const [k, v] of Object.entries(def.env ?? {})) env[k] = typeof v === 'string' ? v : await resolveSecret(v, state, log);
  return env;
}

/**
 * The key a job's `encryption` names (undefined for none). The secret holds the key like a key file does
 * (KEY_FORMATS); a file secret must be private to the node's user, as --encryption-key-file must. Every form of
 * the key (as given, hex, base64) is registered with the logger so that none can reach a log line.
 */
export async function resolveEncryptionKey(def: EncryptionDef | undefined, state: StateDir, log: Logger): Promise<EncryptionKey | undefined> {
  if (!def || def.mode === 'none') return undefined;
  if (!def.key) {
    throw new RnodeError(
      ErrorCodes.KEY_REQUIRED,
      `encryption ${def.mode} needs "key": {"secretRef": "env:NAME" | "file:NAME"} naming the disk's key on this node`,
    );
  }
  const ref = def.key.secretRef;
  const { bytes, file } = await secretBytes(def.key, state);
  let master: Buffer | undefined;
  try {
    for (const text of [bytes.toString('utf8'), bytes.toString('latin1')]) log.addSecret(text.trim());
    if (file) checkKeyFileMode((await fsp.stat(file)).mode, (why) => new RnodeError(ProtoErrors.SECRET, `secret ${ref}: ${file} ${why}`), file);
    master = parseKeyMaterial(bytes);
    if (!master) throw new RnodeError(ProtoErrors.SECRET, `secret ${ref} does not hold a 256-bit key: it must be ${KEY_FORMATS}`);
    for (const form of ['hex', 'base64', 'base64url'] as const) log.addSecret(master.toString(form));
    return EncryptionKey.fromBytes(master);
  } finally {
    bytes.fill(0);
    master?.fill(0);
  }
}
