// The table of store backends by URL scheme, and the error for a location no backend takes. A leaf module:
// backends and the ws:// transport import it to register or to report bad URLs; nothing here imports a backend.
import { ErrorCodes, RnodeError } from '../errors.js';
import type { ObjectStore } from './types.js';

/** How to reach a ws:// or wss:// node: typed settings the CLI fills from --token-file, --ca and --pin-sha256, the agent from its store definition. */
export interface RemoteAccess {
  /** File holding the node's bearer token (preferred: the token stays out of argv and options dumps). */
  tokenFile?: string;
  /** The token itself, for embedders that hold it in memory; never logged. */
  token?: string;
  /** PEM file of the CA that signed the node's certificate (wss). */
  caFile?: string;
  /** SHA-256 fingerprint of the node's certificate (wss). */
  pinSha256?: string;
}

export interface StoreFactoryContext {
  /** The location as given, for messages (factories strip secrets before using it as store.location). */
  location: string;
  env: NodeJS.ProcessEnv;
  /** Settings for ws:// and wss:// locations; other backends ignore them. */
  remote?: RemoteAccess;
}

/** Builds the bare backend for a parsed URL; throw RnodeError BAD_STORE_URL for a malformed one. */
export type StoreFactory = (url: URL, ctx: StoreFactoryContext) => Promise<ObjectStore>;

const factories = new Map<string, StoreFactory>();
/** The query parameters each scheme takes, where it says: a misspelt option must not be ignored silently. */
const parameters = new Map<string, readonly string[]>();

/**
 * Adds a backend (e.g. the remote ws:// store); the scheme is given without ':' and is case-insensitive. With
 * `params`, a URL of the scheme carrying any other query parameter is refused before the factory runs.
 */
export function registerStoreScheme(scheme: string, factory: StoreFactory, params?: readonly string[]): void {
  const key = scheme.toLowerCase().replace(/:$/, '');
  factories.set(key, factory);
  if (params) parameters.set(key, params);
  else parameters.delete(key);
}

export function registeredSchemes(): string[] {
  return [...factories.keys()].sort();
}

/** The factory for a scheme (without ':'), or undefined when none is registered. */
export function storeFactory(scheme: string): StoreFactory | undefined {
  return factories.get(scheme.toLowerCase());
}

/** Refuses a query parameter the scheme does not take (a typo such as ?forcepathstyle would otherwise change nothing). */
export function checkStoreParams(scheme: string, url: URL, location: string): void {
  const known = parameters.get(scheme.toLowerCase());
  if (!known) return;
  for (const name of url.searchParams.keys()) {
    if (known.includes(name)) continue;
    const takes = known.length ? `they take ${known.join(', ')} (names are case-sensitive)` : 'they take none';
    throw badStoreUrl(location, `has the parameter "${name}", which ${scheme}:// stores do not take: ${takes}`);
  }
}

export function badStoreUrl(location: string, why: string): RnodeError {
  return new RnodeError(
    ErrorCodes.BAD_STORE_URL,
    `store location ${JSON.stringify(redact(location))} ${why}; use a directory path, file:///dir, ` +
      `s3://bucket/prefix, azblob://container/prefix or gs://bucket/prefix` +
      (extraSchemes().length ? ` (also registered: ${extraSchemes().join(', ')})` : ''),
    { details: { location: redact(location) } },
  );
}

const BUILTIN = new Set(['file', 's3', 'azblob', 'gs']);
function extraSchemes(): string[] {
  return registeredSchemes()
    .filter((s) => !BUILTIN.has(s))
    .map((s) => `${s}://`);
}

/**
 * Drops user:password and query values that look like secrets, for messages: a parameter whose name holds sig, sas,
 * key, secret, token, password, credential or auth anywhere (X-Amz-Signature, X-Goog-Credential, accountKey...). The
 * user part runs to the last '@' before the query: a secret may hold a '/' (AWS secret keys do), which also makes the
 * URL unparseable.
 */
export function redact(location: string): string {
  return location
    .replace(/\/\/[^?#]*@/, '//***@')
    .replace(/([?&][^=&#]*(?:sig|sas|key|secret|token|passw|credential|auth)[^=&#]*=)[^&#]*/gi, '$1***');
}
