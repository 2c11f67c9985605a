// The peer transport: wire frames, the RemoteStore client (registered for ws:// and wss://) and the
// receiving node's server. Importing this module registers the schemes with the store registry.
import { X509Certificate } from 'node:crypto';
import { checkKeyFileMode, looksLikeSecret } from '../crypto/keys.js';
import { ErrorCodes, RnodeError } from '../errors.js';
import { parseSize } from '../pipeline/grid.js';
import { readRegularFile } from '../regular-file.js';
import { registerStoreScheme, type RemoteAccess, type StoreFactoryContext } from '../store/schemes.js';
import { MAX_TOKEN_CHARS } from './control.js';
import { RemoteStore, type RemoteStoreOptions } from './remote-store.js';

export * from './errors.js';
export * from './frame.js';
export * from './control.js';
export { RemoteStore, normalizeFingerprint, certificateFingerprint, type RemoteStoreOptions, type RemoteCounters } from './remote-store.js';
export { DEFAULT_WINDOW_BYTES, ReplicationServer, SERVE_WARN_EVENTS, type ServeOptions, type ServerStats } from './server.js';
export type { ObjectChecks, PutCheck, PutVerdict } from './object-checks.js';
export { TokenBucket } from '../throttle.js';

/**
 * Reads a bearer token file: the whole file, surrounding whitespace trimmed; empty is an error. Like a key file, it
 * must not be readable or writable by group or others: whoever reads the token may write and delete points.
 */
export function readTokenFile(file: string): string {
  let text: string;
  try {
    const { data, stat } = readRegularFile(file);
    checkKeyFileMode(stat.mode, (why) => new RnodeError(ErrorCodes.USAGE, `the token file ${file} ${why}`), file);
    text = data.toString('utf8');
  } catch (err) {
    if (err instanceof RnodeError) throw err;
    // The token itself given where its file's path goes: say so without printing it back.
    const named = looksLikeSecret(file) ? '(the value given looks like the token itself, not shown)' : file;
    throw new RnodeError(
      ErrorCodes.USAGE,
      `cannot read the token file ${named}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}; pass --token-file <file holding the token>`,
    );
  }
  const token = text.trim();
  if (token === '') throw new RnodeError(ErrorCodes.USAGE, `the token file ${file} is empty; write the shared token into it`);
  // Checked here, where the file is named: a hello the node must refuse (or cannot even encode) says less.
  if (token.length > MAX_TOKEN_CHARS) {
    throw new RnodeError(
      ErrorCodes.USAGE,
      `the token in ${file} is ${token.length} characters long, more than the ${MAX_TOKEN_CHARS} a token may have; write the shared token alone into the file`,
    );
  }
  if (/[\u0000-\u001f\u007f\ufffd]/.test(token)) {
    throw new RnodeError(
      ErrorCodes.USAGE,
      `the token file ${file} holds control characters or bytes that are not UTF-8 text; write the shared token alone into the file`,
    );
  }
  return token;
}

/**
 * Reads a PEM file (--tls-cert, --tls-key, --ca). A private key (privateKey) must not be readable or writable by group
 * or others, as a key or token file must not: whoever reads it can pose as this node.
 */
export function readPemFile(file: string, what: string, opts: { privateKey?: boolean } = {}): string {
  try {
    const { data, stat } = readRegularFile(file);
    if (opts.privateKey) {
      checkKeyFileMode(stat.mode, (why) => new RnodeError(ErrorCodes.USAGE, `the ${what} file ${file} ${why}`), file);
    }
    return data.toString('utf8');
  } catch (err) {
    if (err instanceof RnodeError) throw err;
    throw new RnodeError(ErrorCodes.USAGE, `cannot read the ${what} file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

/**
 * The CA certificate(s) --ca names. A file that holds none (the token file given by mistake) was passed to TLS, which
 * ignored it and then said the node's certificate is self-signed: the flag, not the node, was wrong.
 */
function readCaFile(file: string): string {
  const pem = readPemFile(file, 'CA');
  try {
    new X509Certificate(pem);
  } catch {
    throw new RnodeError(ErrorCodes.USAGE, `--ca ${file} holds no PEM certificate; pass the PEM file of the CA that signed the node's certificate`);
  }
  return pem;
}

export function parseBandwidth(text: string, flag = '--bandwidth'): number {
  const n = parseSize(text);
  if (n === undefined || n < 1) {
    throw new RnodeError(ErrorCodes.USAGE, `${flag} must be bytes per second, e.g. 50MiB or 10000000 (got "${text}")`);
  }
  return n;
}

/**
 * RemoteStore options from a ws(s):// URL and the typed settings openStore was given (the CLI's flags, the agent's
 * store definition). No environment is read here. The bandwidth limit is not among them: openStore applies it to
 * every target alike (src/store/wrap.ts).
 */
export function remoteOptionsFrom(url: URL, remote: RemoteAccess = {}): RemoteStoreOptions {
  const { tokenFile, caFile, pinSha256: pin } = remote;
  if (caFile && pin) throw new RnodeError(ErrorCodes.USAGE, 'pass either --ca or --pin-sha256, not both');
  if ((caFile || pin) && url.protocol !== 'wss:') {
    throw new RnodeError(ErrorCodes.USAGE, '--ca and --pin-sha256 only apply to wss:// targets; use wss://host:port');
  }
  const token = remote.token ?? (tokenFile ? readTokenFile(tokenFile) : undefined);
  return {
    url: url.href,
    ...(token !== undefined ? { token } : {}),
    ...(caFile ? { ca: readCaFile(caFile) } : {}),
    ...(pin ? { pinSha256: pin } : {}),
  };
}

async function factory(url: URL, ctx: StoreFactoryContext): Promise<RemoteStore> {
  return new RemoteStore(remoteOptionsFrom(url, ctx.remote));
}

// Everything a ws(s):// target needs comes from flags (--token-file, --ca, --pin-sha256), never from the query.
registerStoreScheme('ws', factory, []);
registerStoreScheme('wss', factory, []);
