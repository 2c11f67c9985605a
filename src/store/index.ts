// Public API of the storage layer: the ObjectStore contract, openStore by URL, the wrappers,
// and the backends that tests and other modules construct directly.

export * from './types.js';
export { collect, compareKeys, isStoreFull } from './common.js';
export { localStoreFolder, openStore, openBackend, type OpenStoreOptions } from './registry.js';
export { registerStoreScheme, registeredSchemes, badStoreUrl, type RemoteAccess, type StoreFactory, type StoreFactoryContext } from './schemes.js';
export { wrapStore, DEFAULT_CONCURRENCY, type WrapOptions, type WrappedStore } from './wrap.js';
export { FsStore, type FsStoreOptions } from './fs/fs-store.js';
export { assertOutsideStore, assertNotInsideAnyStore, resolveThroughSymlinks } from './containment.js';
export { makeDirs, unusablePath, isVirtualFsPath } from './fs/dirs.js';
export { RetryingStore, isRetryable, type RetryOptions } from './wrappers/retrying.js';
export { LimitedStore } from './wrappers/limited.js';
export { MetricsStore, type StoreMetrics, type OpMetrics, type StoreOp } from './wrappers/metrics.js';
// Cloud backends load lazily through openStore; their classes are exported as types only so that
// importing this module never loads an SDK.
export type { S3Store, S3StoreOptions } from './s3/s3-store.js';
export type { AzureBlobStore, AzureBlobStoreOptions } from './azure/azure-store.js';
export type { GcsStore, GcsStoreOptions } from './gcs/gcs-store.js';
