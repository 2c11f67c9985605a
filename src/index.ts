// replication-node's library API: what the CLI, the agent, the benchmarks and embedders use.
// Loading it registers the ws:// and wss:// schemes, so openStore reaches a receiving node like any store.
import './transport/index.js';
export * from './errors.js';
export { replicate, type ReplicateOptions, type ReplicateResult, type ReplicateProgress } from './jobs/replicate.js';
export { recover, type RecoverOptions, type RecoverResult } from './jobs/restore.js';
export { startExport, exportUrl, type ExportOptions, type ExportStats, type RunningExport } from './export/index.js';
export { verify, type VerifyOptions, type VerifyResult, type VerifyProblem } from './jobs/verify.js';
export { type PruneResult } from './jobs/prune.js';
export { prune, pruneStore, type PruneStoreResult, type MaintainResult } from './jobs/prune-v2.js';
export { stats, type StatsResult } from './jobs/stats.js';
export { check, type CheckResult } from './jobs/check.js';
export { listPoints, listPointSeqs, loadPoint, resolvePoint } from './repository/points.js';
export { openSource, registerSourceScheme, RawSource, type BlockSource, type Extent } from './source/index.js';
export { delegatingSource } from './source/types.js';
export * from './store/index.js';
export { Codec, type CodecId } from './format/codecs.js';
export { lz4Implementation, xxh3Implementation } from './native/index.js';
export type { PointManifest, PointEncryption } from './format/manifest.js';
export { EncryptionKey, readKeyFile, ENCRYPTION_ALG } from './crypto/keys.js';
export type { StageTimes, StageEvent } from './pipeline/stages.js';
export { ChunkGrid, parseSize, validateChunkSize, DEFAULT_CHUNK_SIZE } from './pipeline/grid.js';
