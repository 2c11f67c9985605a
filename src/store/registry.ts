// Opens an ObjectStore from a location string by its URL scheme, one factory per backend, and wraps
// it (retry, concurrency, metrics). Cloud backends load lazily so fs users never load their SDKs.

import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ErrorCodes, RnodeError } from '../errors.js';
import { FsStore } from './fs/fs-store.js';
import { MemoryStore } from './memory/memory-store.js';
import type { ObjectStore } from './types.js';
import { wrapStore, type WrapOptions, type WrappedStore } from './wrap.js';

export interface OpenStoreOptions {
  /** Environment for credentials and emulator hosts (default process.env). */
  env?: NodeJS.ProcessEnv;
  /** Wrapper settings (retry, concurrency). */
  wrap?: WrapOptions;
}

export interface StoreFactoryContext {
  /** The location as given, for messages (factories strip secrets before using it as store.location). */
  location: string;
  env: NodeJS.ProcessEnv;
}

/** Builds the bare backend for a parsed URL; throw RnodeError BAD_STORE_URL for a malformed one. */
export type StoreFactory = (url: URL, ctx: StoreFactoryContext) => Promise<ObjectStore>;

const factories = new Map<string, StoreFactory>();
const memoryStores = new Map<string, MemoryStore>();

/** Adds a backend (e.g. the remote ws:// store); the scheme is given without ':' and is case-insensitive. */
export function registerStoreScheme(scheme: string, factory: StoreFactory): void {
  factories.set(scheme.toLowerCase().replace(/:$/, ''), factory);
}

export function registeredSchemes(): string[] {
  return [...factories.keys()].sort();
}

export function badStoreUrl(location: string, why: string): RnodeError {
  return new RnodeError(ErrorCodes.BAD_STORE_URL,
    `store location ${JSON.stringify(redact(location))} ${why}; use a directory path, file:///dir, mem://name, ` +
    `s3://bucket/prefix, azblob://container/prefix or gs://bucket/prefix` +
    (extraSchemes().length ? ` (also registered: ${extraSchemes().join(', ')})` : ''),
    { details: { location: redact(location) } });
}

const BUILTIN = new Set(['file', 'mem', 's3', 'azblob', 'gs']);
function extraSchemes(): string[] {
  return registeredSchemes().filter((s) => !BUILTIN.has(s)).map((s) => `${s}://`);
}

/** Drops user:password and query values that look like secrets, for messages. */
export function redact(location: string): string {
  return location.replace(/\/\/[^/@]*@/, '//***@')
    .replace(/([?&](?:sig|sas|key|secret|token|password)[^=&]*=)[^&]*/gi, '$1***');
}

export async function openStore(location: string, opts: OpenStoreOptions = {}): Promise<WrappedStore> {
  const backend = await openBackend(location, opts.env ?? process.env);
  return wrapStore(backend, opts.wrap);
}

/** The backend without wrappers. */
export async function openBackend(location: string, env: NodeJS.ProcessEnv = process.env): Promise<ObjectStore> {
  if (location.trim() === '') throw badStoreUrl(location, 'is empty');
  const m = /^([a-zA-Z][a-zA-Z0-9+.-]*):/.exec(location);
  // No scheme, or a one-letter one (a Windows drive): a plain directory path.
  if (!m || m[1].length === 1) return new FsStore(path.resolve(location));
  let url: URL;
  try {
    url = new URL(location);
  } catch (err) {
    throw badStoreUrl(location, 'is not a valid URL');
  }
  const factory = factories.get(m[1].toLowerCase());
  if (!factory) throw badStoreUrl(location, `has an unknown scheme ${m[1]}:`);
  return factory(url, { location, env });
}

registerStoreScheme('file', async (url, { location }) => {
  if (url.host !== '' && url.host !== 'localhost') throw badStoreUrl(location, 'names a remote host; use file:///absolute/dir');
  return new FsStore(fileURLToPath(url), { fsync: url.searchParams.get('fsync') !== 'off' });
});

registerStoreScheme('mem', async (url) => {
  const name = url.host + url.pathname;
  let store = memoryStores.get(name);
  if (!store) memoryStores.set(name, store = new MemoryStore(`mem://${name}`));
  return store;
});

registerStoreScheme('s3', async (url, ctx) => (await import('./s3/s3-store.js')).s3StoreFromUrl(url, ctx));
registerStoreScheme('azblob', async (url, ctx) => (await import('./azure/azure-store.js')).azureStoreFromUrl(url, ctx));
registerStoreScheme('gs', async (url, ctx) => (await import('./gcs/gcs-store.js')).gcsStoreFromUrl(url, ctx));
