// Secrets travel by reference: a policy names "env:NAME" or "file:NAME" and the node resolves it locally, at
// the moment a run needs it. Resolved values go to the store client's environment (or become an encryption key)
// and to the logger's redaction list, never to disk or to the server. A secret once used as an encryption key is
// recorded (its reference and key id) and refused as a store credential from then on: a server may use the node's
// keys by reference, never send one to a store of its choosing.
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

/**
 * privateKey: a file secret must be private to the node's user (an export's TLS key), as --tls-key must.
 * credential: the secret goes to a store (the setting it fills, for the error): one of the node's keys is refused.
 */
export async function resolveSecret(
  ref: SecretRef,
  state: StateDir,
  log: Logger,
  opts: { privateKey?: boolean; credential?: string } = {},
): Promise<string> {
  const { bytes, file } = await secretBytes(ref, state);
  if (opts.credential) await refuseKeyAsCredential(bytes, `${opts.credential} (secret ${ref.secretRef})`, state, log, ref.secretRef);
  if (file && opts.privateKey) {
    checkKeyFileMode((await fsp.stat(file)).mode, (why) => new RnodeError(ProtoErrors.SECRET, `secret ${ref.secretRef}: ${file} ${why}`), file);
  }
  const value = bytes.toString('utf8').replace(/\r?\n$/, '');
  if (value === '') throw new RnodeError(ProtoErrors.SECRET, `secret ${ref.secretRef} is empty on this node`);
  log.addSecret(value);
  return value;
}

/**
 * The environment a store client sees: the node's, plus the store definition's (secrets resolved). A secret this node
 * uses as an encryption key is refused here, by its reference or by its value under any other name. field: the job's
 * field that names them, for messages (a recover's outEnv).
 */
export async function storeEnv(def: StoreDef, state: StateDir, log: Logger, field = 'store.env'): Promise<NodeJS.ProcessEnv> {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const [k, v] of Object.entries(def.env ?? {})) {
    env[k] = typeof v === 'string' ? v : await resolveSecret(v, state, log, { credential: `${field}.${k}` });
  }
  return env;
}

/**
 * Throws RNODE_AGENT_KEY_AS_CREDENTIAL when a credential (`what`, never its value) is one of the node's encryption
 * keys: named by a reference recorded as a key, or holding a recorded key in any form (KEY_FORMATS). The shape of a
 * value alone proves nothing: some stores' secrets are 64 hex characters too.
 */
export async function refuseKeyAsCredential(bytes: Buffer, what: string, state: StateDir, log: Logger, ref?: string): Promise<void> {
  const known = await state.keySecrets(log);
  let isKey = ref !== undefined && known.refs.includes(ref);
  if (!isKey && known.keyIds.length > 0) {
    const master = parseKeyMaterial(bytes);
    try {
      isKey = master !== undefined && known.keyIds.includes(EncryptionKey.fromBytes(master).keyId);
    } finally {
      master?.fill(0);
    }
  }
  if (isKey) {
    throw new RnodeError(
      ProtoErrors.KEY_AS_CREDENTIAL,
      `${what} is an encryption key of this node, and a key is never sent to a store as a credential; ` +
        "name the store's own credential secret there",
    );
  }
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
    const key = EncryptionKey.fromBytes(master);
    await state.recordKeySecret(ref, key.keyId, log);
    return key;
  } finally {
    bytes.fill(0);
    master?.fill(0);
  }
}
