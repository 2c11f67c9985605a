// Opens an ObjectStore from a location string by its URL scheme (the table in schemes.ts) and wraps it
// (retry, concurrency, metrics). Cloud backends load lazily so fs users never load their SDKs.

import path from 'node:path';
import { fileUrlPath } from '../file-url.js';
import { queryFlag } from './common.js';
import { FsStore } from './fs/fs-store.js';
import { badStoreUrl, checkStoreParams, registerStoreScheme, storeFactory, type RemoteAccess } from './schemes.js';
import type { ObjectStore } from './types.js';
import { wrapStore, type WrapOptions, type WrappedStore } from './wrap.js';

export interface OpenStoreOptions {
  /** Environment for credentials and emulator hosts (default process.env). */
  env?: NodeJS.ProcessEnv;
  /** Wrapper settings (retry, concurrency, bandwidth). */
  wrap?: WrapOptions;
  /** Token, CA or pin for a ws:// or wss:// location (the transport must be loaded: src/index.ts loads it). */
  remote?: RemoteAccess;
}

export async function openStore(location: string, opts: OpenStoreOptions = {}): Promise<WrappedStore> {
  const backend = await openBackend(location, opts.env ?? process.env, opts.remote);
  return wrapStore(backend, opts.wrap);
}

/** The backend without wrappers. */
export async function openBackend(location: string, env: NodeJS.ProcessEnv = process.env, remote?: RemoteAccess): Promise<ObjectStore> {
  if (location.trim() === '') throw badStoreUrl(location, 'is empty');
  const m = /^([a-zA-Z][a-zA-Z0-9+.-]*):/.exec(location);
  // No scheme, or a one-letter one (a Windows drive): a plain directory path.
  if (!m || m[1].length === 1) return new FsStore(path.resolve(location));
  let url: URL;
  try {
    url = new URL(location);
  } catch {
    throw badStoreUrl(location, 'is not a valid URL');
  }
  const factory = storeFactory(m[1]);
  if (!factory) throw badStoreUrl(location, `has an unknown scheme ${m[1]}:`);
  // The cloud backends take credentials from the environment only: user:password@ in the URL was silently ignored.
  if ((url.username || url.password) && CLOUD_SCHEMES.has(m[1].toLowerCase())) {
    throw badStoreUrl(location, 'carries credentials (user:password@); remove them and give them in the environment (docs/stores.md, "Credentials")');
  }
  checkStoreParams(m[1], url, location);
  return factory(url, { location, env, ...(remote ? { remote } : {}) });
}

const CLOUD_SCHEMES = new Set(['s3', 'azblob', 'gs']);

/**
 * The local folder a store location names: the location itself when it has no scheme, a file:// URL's path; undefined
 * for a store of any other scheme. A file:// URL that names a host or whose path does not decode is a BAD_STORE_URL.
 */
export function localStoreFolder(location: string): string | undefined {
  if (!location.includes('://')) return location;
  return /^file:\/\//i.test(location) ? fileStoreFolder(location, location) : undefined;
}

function fileStoreFolder(url: URL | string, location: string): string {
  try {
    return fileUrlPath(url);
  } catch (err) {
    throw badStoreUrl(location, (err as Error).message);
  }
}

registerStoreScheme('file', async (url, { location }) => new FsStore(fileStoreFolder(url, location), { fsync: queryFlag(url, 'fsync', true) }), [
  'fsync',
]);

// The parameter lists name what each backend's *FromUrl reads (and s3ClientConfig for s3).
registerStoreScheme('s3', async (url, ctx) => (await import('./s3/s3-store.js')).s3StoreFromUrl(url, ctx), [
  'region',
  'endpoint',
  'forcePathStyle',
  'conditional',
  'multipartThreshold',
  'partSize',
  'requestTimeoutMs',
]);
registerStoreScheme('azblob', async (url, ctx) => (await import('./azure/azure-store.js')).azureStoreFromUrl(url, ctx), [
  'conditional',
  'singleUploadMax',
  'blockSize',
  'requestTimeoutMs',
]);
registerStoreScheme('gs', async (url, ctx) => (await import('./gcs/gcs-store.js')).gcsStoreFromUrl(url, ctx), [
  'project',
  'conditional',
  'requestTimeoutMs',
]);
