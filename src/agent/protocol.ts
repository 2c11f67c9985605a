// The control protocol between a node and its Management Server, version 1: every message's JSON Schema (the
// same text docs/control-protocol.md shows; a test keeps the two identical), its TypeScript shape, and decode().
import { validate, type JsonSchema, type SchemaError } from './schema.js';

export const PROTOCOL_VERSION = 1;
/** The WebSocket subprotocol a node asks for; the server may ignore it (the hello carries the version too). */
export const SUBPROTOCOL = 'rnode-control.v1';

/** Stable codes carried by `error` messages and close frames (docs/control-protocol.md, "Errors"). */
export const ProtoErrors = {
  NOT_JSON: 'RNODE_PROTO_NOT_JSON',
  INVALID: 'RNODE_PROTO_INVALID',
  UNKNOWN_TYPE: 'RNODE_PROTO_UNKNOWN_TYPE',
  VERSION: 'RNODE_PROTO_VERSION',
  AUTH: 'RNODE_AUTH',
  UNSUPPORTED: 'RNODE_AGENT_UNSUPPORTED',
  DUPLICATE_JOB: 'RNODE_AGENT_DUPLICATE_JOB',
  UNKNOWN_JOB: 'RNODE_AGENT_UNKNOWN_JOB',
  SECRET: 'RNODE_AGENT_SECRET',
  /** The server's certificate is not trusted (logged and counted by the node; nothing is sent). */
  TLS: 'RNODE_AGENT_TLS',
  NODE_LOST: 'RNODE_NODE_LOST',
} as const;

/** WebSocket close codes (4000-4999 are the application's). */
export const CloseCodes = { AUTH: 4401, VERSION: 4406, REPLACED: 4409, SHUTDOWN: 4503 } as const;

const str = (maxLength = 1024): JsonSchema => ({ type: 'string', minLength: 1, maxLength });

/** Replicate jobs and policies of a VMware VM. */
const vmJobProps: Record<string, JsonSchema> = {
  quiesce: { type: 'boolean', description: 'ask VMware Tools for an application-consistent snapshot' },
  quiesceFallback: { enum: ['fallback', 'fail'], description: 'quiesce impossible: crash-consistent point with a warning (default) or fail' },
  unsupportedDisks: { enum: ['skip', 'fail'], description: 'independent and physical RDM disks: skipped with a reason (default) or fail' },
  diskParallelism: { type: 'integer', minimum: 1, maximum: 64, description: 'disks of the VM read at once (default from cores and store concurrency)' },
};
const uint: JsonSchema = { type: 'integer', minimum: 0 };
const ISO_TIME: JsonSchema = { type: 'string', pattern: '^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}(\\.\\d+)?Z$' };

/** Shared definitions, referenced as "#/$defs/<name>". */
export const defs: Record<string, JsonSchema> = {
  id: { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$', description: 'message, job, node or group id' },
  diskId: { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$' },
  secretRef: {
    type: 'object', required: ['secretRef'], additionalProperties: false,
    description: 'a secret named, never sent: env:NAME (the node\'s environment) or file:NAME (<state-dir>/secrets/NAME)',
    properties: { secretRef: { type: 'string', pattern: '^(env|file):[A-Za-z0-9._-]{1,128}$' } },
  },
  store: {
    type: 'object', required: ['url'], additionalProperties: false,
    description: 'where points are kept: a directory, mem://, s3://, azblob://, gs:// or ws:// URL without secrets',
    properties: {
      url: str(2048),
      env: {
        type: 'object', description: 'environment the store client sees (credentials by reference)',
        additionalProperties: { oneOf: [{ type: 'string', maxLength: 4096 }, { $ref: '#/$defs/secretRef' }] },
      },
    },
  },
  source: {
    type: 'object', required: ['location'], additionalProperties: false,
    properties: { location: str(2048), options: { type: 'object' } },
  },
  diskSource: {
    type: 'object', required: ['disk', 'source'], additionalProperties: false,
    properties: { disk: { $ref: '#/$defs/diskId' }, source: { $ref: '#/$defs/source' } },
  },
  encryption: {
    type: 'object', required: ['mode'], additionalProperties: false,
    description: 'chunk encryption of a disk: aes-256-gcm needs key, a secret holding the 256-bit key (32 raw bytes, 64 hex characters or base64); ' +
      'replicate writes with it, recover and verify of an encrypted disk read with it',
    properties: { mode: { enum: ['none', 'aes-256-gcm'] }, key: { $ref: '#/$defs/secretRef' } },
  },
  policy: {
    type: 'object', required: ['group', 'revision', 'rpoSeconds', 'store', 'disks'], additionalProperties: false,
    properties: {
      group: { $ref: '#/$defs/id' },
      revision: uint,
      rpoSeconds: { type: 'number', exclusiveMinimum: 0, description: 'recovery point objective' },
      intervalSeconds: { type: 'number', exclusiveMinimum: 0, description: 'run every so often (default: rpoSeconds / 2)' },
      paused: { type: 'boolean' },
      retention: { type: 'object', required: ['keep'], additionalProperties: false, properties: { keep: { type: 'integer', minimum: 1 } } },
      bandwidth: { ...uint, description: 'bytes/s read from the source per run; 0 or absent: unlimited' },
      concurrency: { type: 'integer', minimum: 1, maximum: 64 },
      compression: { enum: ['lz4-blocks', 'lz4', 'none'], description: 'chunk codec (default: the library default, lz4-blocks)' },
      encryption: { $ref: '#/$defs/encryption' },
      chunkSize: { type: 'integer', minimum: 65536, maximum: 16777216 },
      checkpointSeconds: { type: 'number', exclusiveMinimum: 0 },
      leaseTtlSeconds: { type: 'number', minimum: 1 },
      store: { $ref: '#/$defs/store' },
      disks: { type: 'array', items: { $ref: '#/$defs/diskSource' }, maxItems: 4096, description: 'the disks of this group assigned to this node' },
      vm: { ...str(256), description: 'the disks are one VMware VM (vddk:// sources): scheduled runs take one snapshot and make VM points' },
      ...vmJobProps,
    },
  },
  job: {
    oneOf: [
      {
        type: 'object', required: ['jobId', 'kind', 'store', 'disks'], additionalProperties: false,
        description: 'replicate one disk, or all disks of a VM (one point per disk)',
        properties: {
          jobId: { $ref: '#/$defs/id' }, kind: { const: 'replicate' }, group: { $ref: '#/$defs/id' }, attempt: { type: 'integer', minimum: 1 },
          vm: str(256), store: { $ref: '#/$defs/store' }, disks: { type: 'array', minItems: 1, maxItems: 256, items: { $ref: '#/$defs/diskSource' } },
          forceFull: { type: 'boolean' },
          bandwidth: uint, concurrency: { type: 'integer', minimum: 1, maximum: 64 }, compression: { enum: ['lz4-blocks', 'lz4', 'none'], description: 'chunk codec (default: the library default, lz4-blocks)' },
          encryption: { $ref: '#/$defs/encryption' }, chunkSize: { type: 'integer', minimum: 65536, maximum: 16777216 },
          checkpointSeconds: { type: 'number', exclusiveMinimum: 0 }, leaseTtlSeconds: { type: 'number', minimum: 1 },
          ...vmJobProps,
        },
      },
      {
        type: 'object', required: ['jobId', 'kind', 'store', 'disk', 'out'], additionalProperties: false,
        description: 'write a point of a disk to a path or device on this node, or stream it into a cloud disk object (s3://bucket/key, azblob://container/name.vhd, gs://bucket/name.tar.gz), verified',
        properties: {
          jobId: { $ref: '#/$defs/id' }, kind: { const: 'recover' }, attempt: { type: 'integer', minimum: 1 },
          store: { $ref: '#/$defs/store' }, disk: { $ref: '#/$defs/diskId' }, point: str(32), out: str(4096),
          outEnv: {
            type: 'object', description: 'environment the client of a cloud out sees, as store.env (credentials by reference)',
            additionalProperties: { oneOf: [{ type: 'string', maxLength: 4096 }, { $ref: '#/$defs/secretRef' }] },
          },
          encryption: { $ref: '#/$defs/encryption' },
        },
      },
      {
        type: 'object', required: ['jobId', 'kind', 'store', 'disk'], additionalProperties: false,
        description: 'check a point (or "all") and every chunk it references',
        properties: {
          jobId: { $ref: '#/$defs/id' }, kind: { const: 'verify' }, attempt: { type: 'integer', minimum: 1 },
          store: { $ref: '#/$defs/store' }, disk: { $ref: '#/$defs/diskId' }, point: str(32),
          encryption: { $ref: '#/$defs/encryption' },
        },
      },
      {
        type: 'object', required: ['jobId', 'kind', 'store', 'disk', 'keep'], additionalProperties: false,
        description: 'keep the newest points, delete the rest',
        properties: {
          jobId: { $ref: '#/$defs/id' }, kind: { const: 'prune' }, attempt: { type: 'integer', minimum: 1 },
          store: { $ref: '#/$defs/store' }, disk: { $ref: '#/$defs/diskId' }, keep: { type: 'integer', minimum: 1 },
          encryption: { $ref: '#/$defs/encryption' },
        },
      },
    ],
  },
  exportSpec: {
    type: 'object', required: ['exportId', 'store', 'disk'], additionalProperties: false,
    description: 'serve a point as an NBD export (instant recovery): a unix socket, or host:port (off loopback only with tls)',
    properties: {
      exportId: { $ref: '#/$defs/id' }, store: { $ref: '#/$defs/store' }, disk: { $ref: '#/$defs/diskId' }, point: str(32),
      socket: str(4096), listen: { type: 'string', pattern: '^(\\[[0-9A-Fa-f:.]+\\]|[A-Za-z0-9.-]*):[0-9]{1,5}$' },
      writable: { type: 'boolean' }, overlay: { ...str(4096), description: 'local copy-on-write file; required with writable' },
      cacheBytes: { type: 'integer', minimum: 1048576 }, encryption: { $ref: '#/$defs/encryption' },
      tls: {
        type: 'object', required: ['cert', 'key'], additionalProperties: false,
        properties: { cert: { $ref: '#/$defs/secretRef' }, key: { $ref: '#/$defs/secretRef' } },
      },
      leaseSeconds: { type: 'number', exclusiveMinimum: 0, description: 'stop this long after the last export.start for this exportId (a repeat renews it); absent: until export.stop' },
    },
  },
  exportCounters: {
    type: 'object', required: ['bytesServed', 'cacheHitRatio'],
    properties: {
      bytesServed: uint, bytesFetched: uint, cacheHitRatio: { type: 'number', minimum: 0, maximum: 1 }, cachedBytes: uint,
      connections: uint, activeConnections: uint, chunkErrors: uint,
    },
  },
  diskResult: {
    type: 'object', required: ['disk'],
    description: 'per-disk outcome; replicate fills point..seconds and keyId, verify fills ok/problems/checked, prune kept/deleted, recover out',
    properties: {
      disk: { $ref: '#/$defs/diskId' },
      point: { type: 'integer', minimum: 1 }, parent: { type: ['integer', 'null'] }, full: { type: 'boolean' },
      resumed: { type: 'boolean' }, marker: { type: ['string', 'null'], description: 'source change marker saved with the point' },
      diskSize: uint, bytesRead: { ...uint, description: 'source bytes read for the whole point (a resumed point counts the earlier runs too)' },
      sourceBytesRead: { ...uint, description: 'source bytes this run read (less than bytesRead when resumed)' },
      bytesWritten: uint, chunksChanged: uint, chunksZero: uint,
      seconds: { type: 'number', minimum: 0 },
      keyId: { type: 'string', pattern: '^[0-9a-f]{32}$', description: 'an encrypted point: the key id (a fingerprint, never the key)' },
      ok: { type: 'boolean' }, problems: uint,
      checked: { enum: ['contents', 'stored-bytes'], description: 'verify: stored-bytes when an encrypted disk was verified without its key' },
      kept: { type: 'array', items: uint }, deleted: { type: 'array', items: uint },
      out: { type: 'string' },
    },
  },
};

const envelope = (type: string, props: Record<string, JsonSchema>, required: string[], description: string): JsonSchema => ({
  $id: `rnode-control/v1/${type}`,
  description,
  type: 'object',
  required: ['v', 'type', 'id', ...required],
  properties: { v: { const: PROTOCOL_VERSION }, type: { const: type }, id: { $ref: '#/$defs/id' }, ...props },
});

const reliable = { seq: { type: 'integer', minimum: 1, description: 'per-node report number, acked by the server' } as JsonSchema, at: ISO_TIME };

/** Node -> server. */
export const agentMessages: Record<string, JsonSchema> = {
  hello: envelope('hello', {
    token: { type: 'string', minLength: 1, maxLength: 4096 },
    protocols: { type: 'array', minItems: 1, items: { type: 'integer', minimum: 1 } },
    node: {
      type: 'object', required: ['id', 'name', 'version'],
      properties: { id: { $ref: '#/$defs/id' }, name: str(256), version: str(64), hostname: str(256), pid: uint },
    },
    capabilities: {
      type: 'object', required: ['sources', 'stores', 'codecs', 'jobs'],
      properties: {
        sources: { type: 'array', items: str(32) }, stores: { type: 'array', items: str(32) },
        codecs: { type: 'array', items: str(32) }, jobs: { type: 'array', items: str(32) },
        encryption: { type: 'array', items: str(32) },
      },
    },
    capacity: {
      type: 'object', required: ['slots'],
      properties: { slots: { type: 'integer', minimum: 1 }, bandwidth: { ...uint, description: 'bytes/s for all runs; 0: unlimited' } },
    },
    lastSeq: { ...uint, description: 'highest report seq the node has created (the server may have fewer)' },
  }, ['token', 'protocols', 'node', 'capabilities', 'capacity'], 'first message on every connection; nothing else is accepted before welcome'),
  heartbeat: envelope('heartbeat', {
    health: {
      type: 'object', required: ['ready', 'inFlight', 'queued', 'slots'],
      properties: {
        ready: { type: 'boolean' }, inFlight: uint, queued: uint, slots: { type: 'integer', minimum: 1 },
        load1: { type: 'number', minimum: 0 }, rssBytes: uint, uptimeSeconds: { type: 'number', minimum: 0 },
        reportsQueued: uint, policies: uint, disks: uint,
      },
    },
  }, ['health'], 'node health and load, every welcome.heartbeatMs'),
  'job.accepted': envelope('job.accepted', {
    ...reliable, jobId: { $ref: '#/$defs/id' }, kind: { enum: ['replicate', 'recover', 'verify', 'prune'] },
    attempt: { type: 'integer', minimum: 1 }, scheduled: { type: 'boolean' }, group: { $ref: '#/$defs/id' },
    disks: { type: 'array', items: { $ref: '#/$defs/diskId' } },
  }, ['seq', 'at', 'jobId', 'kind', 'disks'], 'a job was taken (queued for a slot or started)'),
  'job.progress': envelope('job.progress', {
    jobId: { $ref: '#/$defs/id' }, disk: { $ref: '#/$defs/diskId' },
    phase: { enum: ['queued', 'lease', 'scan', 'commit', 'recover', 'verify', 'prune'] },
    bytesRead: uint, bytesWritten: uint, diskSize: uint, position: uint,
    rate: { type: 'number', minimum: 0, description: 'bytes/s of disk covered' },
    etaSeconds: { type: ['number', 'null'], minimum: 0 },
  }, ['jobId', 'disk', 'phase'], 'best effort, not queued while disconnected'),
  'job.completed': envelope('job.completed', {
    ...reliable, jobId: { $ref: '#/$defs/id' }, kind: { enum: ['replicate', 'recover', 'verify', 'prune'] },
    attempt: { type: 'integer', minimum: 1 }, scheduled: { type: 'boolean' }, group: { $ref: '#/$defs/id' },
    seconds: { type: 'number', minimum: 0 },
    results: { type: 'array', items: { $ref: '#/$defs/diskResult' } },
    vm: { type: 'object', required: ['vm', 'vmPoint', 'snapshot', 'consistency', 'disks'], description: 'a VMware VM job: the VM point it committed' },
    warnings: { type: 'array', items: str(4096), description: 'what did not stop the job but needs attention (e.g. a crash-consistent fallback)' },
  }, ['seq', 'at', 'jobId', 'kind', 'results'], 'the job finished; for replicate every disk has a committed point'),
  'job.failed': envelope('job.failed', {
    ...reliable, jobId: { $ref: '#/$defs/id' }, kind: { enum: ['replicate', 'recover', 'verify', 'prune'] },
    attempt: { type: 'integer', minimum: 1 }, scheduled: { type: 'boolean' }, group: { $ref: '#/$defs/id' },
    disk: { $ref: '#/$defs/diskId' }, code: str(64), message: str(4096), cancelled: { type: 'boolean' },
    retryable: { type: 'boolean' },
    results: { type: 'array', items: { $ref: '#/$defs/diskResult' }, description: 'disks of the job that did complete' },
  }, ['seq', 'at', 'jobId', 'kind', 'code', 'message'], 'the job stopped without completing; no half point is ever visible'),
  'rpo.missed': envelope('rpo.missed', {
    ...reliable, group: { $ref: '#/$defs/id' }, disk: { $ref: '#/$defs/diskId' },
    rpoSeconds: { type: 'number', minimum: 0 }, lagSeconds: { type: 'number', minimum: 0 },
    lastPointAt: { oneOf: [ISO_TIME, { type: 'null' }] }, reason: str(1024),
  }, ['seq', 'at', 'group', 'disk', 'rpoSeconds', 'lagSeconds', 'lastPointAt'], 'a disk\'s newest point is older than its RPO (once per episode)'),
  'export.started': envelope('export.started', {
    ...reliable, exportId: { $ref: '#/$defs/id' }, url: str(4096), disk: { $ref: '#/$defs/diskId' }, point: { type: 'integer', minimum: 1 },
    writable: { type: 'boolean' }, leaseUntil: ISO_TIME,
  }, ['seq', 'at', 'exportId', 'url', 'disk', 'point'], 'an export is serving at url (also sent when a repeated export.start renews its lease)'),
  'export.status': envelope('export.status', {
    exportId: { $ref: '#/$defs/id' }, counters: { $ref: '#/$defs/exportCounters' },
  }, ['exportId', 'counters'], 'best effort, every progress interval while an export runs'),
  'export.stopped': envelope('export.stopped', {
    ...reliable, exportId: { $ref: '#/$defs/id' }, reason: { enum: ['requested', 'lease-expired', 'failed', 'shutdown'] },
    code: str(64), message: str(4096), counters: { $ref: '#/$defs/exportCounters' },
  }, ['seq', 'at', 'exportId', 'reason'], 'an export ended (or could not start: reason failed, with code and message)'),
  error: envelope('error', {
    replyTo: { type: 'string', maxLength: 128 }, code: str(64), message: str(4096),
  }, ['code', 'message'], 'the message replyTo was refused; the sender keeps running'),
};

/** Server -> node. */
export const serverMessages: Record<string, JsonSchema> = {
  welcome: envelope('welcome', {
    nodeId: { $ref: '#/$defs/id' }, protocol: { const: PROTOCOL_VERSION },
    heartbeatMs: { type: 'integer', minimum: 100 }, ackedSeq: uint, serverTime: ISO_TIME,
  }, ['nodeId', 'protocol', 'heartbeatMs', 'ackedSeq'], 'registration accepted; ackedSeq is the last report the server holds'),
  ack: envelope('ack', { seq: uint }, ['seq'], 'every report up to seq is stored by the server (cumulative)'),
  'policy.update': envelope('policy.update', { policy: { $ref: '#/$defs/policy' } }, ['policy'],
    'add or replace one protection group (the disks of it this node runs)'),
  'policy.remove': envelope('policy.remove', { group: { $ref: '#/$defs/id' } }, ['group'], 'stop running a group'),
  'policy.sync': envelope('policy.sync', { policies: { type: 'array', items: { $ref: '#/$defs/policy' } } }, ['policies'],
    'the complete set of groups for this node; any other group it holds is dropped'),
  'job.start': envelope('job.start', { job: { $ref: '#/$defs/job' } }, ['job'], 'run a job now (or when a slot frees)'),
  'job.cancel': envelope('job.cancel', { jobId: { $ref: '#/$defs/id' } }, ['jobId'], 'stop a job; it ends with job.failed, cancelled: true'),
  'export.start': envelope('export.start', { export: { $ref: '#/$defs/exportSpec' } }, ['export'],
    'start serving a point over NBD; repeating it for a running exportId only renews its lease'),
  'export.stop': envelope('export.stop', { exportId: { $ref: '#/$defs/id' } }, ['exportId'], 'stop an export; it ends with export.stopped'),
  error: agentMessages.error,
};

// ---- TypeScript shapes (kept by hand next to the schemas above) ----

export interface SecretRef { secretRef: string }
export interface StoreDef { url: string; env?: Record<string, string | SecretRef> }
export interface SourceDef { location: string; options?: Record<string, unknown> }
export interface DiskSource { disk: string; source: SourceDef }
export interface EncryptionDef { mode: 'none' | 'aes-256-gcm'; key?: SecretRef }
export interface Tuning {
  bandwidth?: number; concurrency?: number; compression?: 'lz4-blocks' | 'lz4' | 'none'; encryption?: EncryptionDef;
  chunkSize?: number; checkpointSeconds?: number; leaseTtlSeconds?: number;
}
export interface VmTuning { quiesce?: boolean; quiesceFallback?: 'fallback' | 'fail'; unsupportedDisks?: 'skip' | 'fail'; diskParallelism?: number }
export interface Policy extends Tuning, VmTuning {
  group: string; revision: number; rpoSeconds: number; intervalSeconds?: number; paused?: boolean;
  retention?: { keep: number }; store: StoreDef; disks: DiskSource[]; vm?: string;
}
export type JobKind = 'replicate' | 'recover' | 'verify' | 'prune';
interface JobBase { jobId: string; attempt?: number; store: StoreDef }
export interface ReplicateJob extends JobBase, Tuning, VmTuning { kind: 'replicate'; group?: string; vm?: string; disks: DiskSource[]; forceFull?: boolean }
/** What a VM job reports beside its disks' results. */
export interface VmJobResult {
  vm: string; vmPoint: number; snapshot: string; consistency: 'application' | 'crash'; consistencyReason?: string;
  disks: Array<{ key: number; disk: string; point: number; transport: string; fullReason?: string }>;
  skipped: Array<{ key: number; label: string; reason: string }>; removed: Array<{ key: number; disk: string; reason: string }>;
  added: number[]; staleSnapshotsRemoved: string[]; prunedVmPoints?: number[];
}
export interface RecoverJob extends JobBase { kind: 'recover'; disk: string; point?: string; out: string; outEnv?: StoreDef['env']; encryption?: EncryptionDef }
export interface VerifyJob extends JobBase { kind: 'verify'; disk: string; point?: string; encryption?: EncryptionDef }
export interface PruneJob extends JobBase { kind: 'prune'; disk: string; keep: number; encryption?: EncryptionDef }
export type Job = ReplicateJob | RecoverJob | VerifyJob | PruneJob;
export interface ExportSpec {
  exportId: string; store: StoreDef; disk: string; point?: string; socket?: string; listen?: string; writable?: boolean; overlay?: string;
  cacheBytes?: number; encryption?: EncryptionDef; tls?: { cert: SecretRef; key: SecretRef }; leaseSeconds?: number;
}
export interface ExportCounters {
  bytesServed: number; bytesFetched?: number; cacheHitRatio: number; cachedBytes?: number; connections?: number; activeConnections?: number; chunkErrors?: number;
}

export interface DiskResult {
  disk: string; point?: number; parent?: number | null; full?: boolean; resumed?: boolean; marker?: string | null;
  diskSize?: number; bytesRead?: number; sourceBytesRead?: number; bytesWritten?: number; chunksChanged?: number; chunksZero?: number; seconds?: number;
  keyId?: string; ok?: boolean; problems?: number; checked?: 'contents' | 'stored-bytes'; kept?: number[]; deleted?: number[]; out?: string;
}

export interface Envelope { v: number; type: string; id: string }
export interface ReportCommon { seq: number; at: string }
export type AgentReport =
  | { type: 'job.accepted'; jobId: string; kind: JobKind; attempt?: number; scheduled?: boolean; group?: string; disks: string[] }
  | { type: 'job.completed'; jobId: string; kind: JobKind; attempt?: number; scheduled?: boolean; group?: string; seconds?: number; results: DiskResult[]; vm?: VmJobResult; warnings?: string[] }
  | { type: 'job.failed'; jobId: string; kind: JobKind; attempt?: number; scheduled?: boolean; group?: string; disk?: string; code: string; message: string; cancelled?: boolean; retryable?: boolean; results?: DiskResult[] }
  | { type: 'rpo.missed'; group: string; disk: string; rpoSeconds: number; lagSeconds: number; lastPointAt: string | null; reason?: string }
  | { type: 'export.started'; exportId: string; url: string; disk: string; point: number; writable?: boolean; leaseUntil?: string }
  | { type: 'export.stopped'; exportId: string; reason: 'requested' | 'lease-expired' | 'failed' | 'shutdown'; code?: string; message?: string; counters?: ExportCounters };
export interface JobProgress {
  jobId: string; disk: string; phase: 'queued' | 'lease' | 'scan' | 'commit' | 'recover' | 'verify' | 'prune';
  bytesRead?: number; bytesWritten?: number; diskSize?: number; position?: number; rate?: number; etaSeconds?: number | null;
}
export interface Health {
  ready: boolean; inFlight: number; queued: number; slots: number; load1?: number; rssBytes?: number;
  uptimeSeconds?: number; reportsQueued?: number; policies?: number; disks?: number;
}
export interface Hello {
  token: string; protocols: number[];
  node: { id: string; name: string; version: string; hostname?: string; pid?: number };
  capabilities: { sources: string[]; stores: string[]; codecs: string[]; jobs: string[]; encryption?: string[] };
  capacity: { slots: number; bandwidth?: number };
  lastSeq?: number;
}

export type ServerMessage = Envelope & (
  | { type: 'welcome'; nodeId: string; protocol: number; heartbeatMs: number; ackedSeq: number; serverTime?: string }
  | { type: 'ack'; seq: number }
  | { type: 'policy.update'; policy: Policy }
  | { type: 'policy.remove'; group: string }
  | { type: 'policy.sync'; policies: Policy[] }
  | { type: 'job.start'; job: Job }
  | { type: 'job.cancel'; jobId: string }
  | { type: 'export.start'; export: ExportSpec }
  | { type: 'export.stop'; exportId: string }
  | { type: 'error'; replyTo?: string; code: string; message: string });

export type AgentMessage = Envelope & Record<string, unknown>;

// ---- decoding ----

export type Decoded<T> = { ok: true; msg: T } | { ok: false; code: string; message: string; replyTo?: string; errors?: SchemaError[] };

/**
 * Parses and validates one text frame against a side's message table. Order of checks (as documented): JSON,
 * envelope (v/type/id), version, known type, schema. The replyTo of a refusal is the message's id when it had one.
 */
export function decode<T>(text: string, table: Record<string, JsonSchema>): Decoded<T> {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { ok: false, code: ProtoErrors.NOT_JSON, message: 'message is not JSON text' };
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return { ok: false, code: ProtoErrors.INVALID, message: 'message must be a JSON object' };
  }
  const m = value as Record<string, unknown>;
  const replyTo = typeof m.id === 'string' ? m.id.slice(0, 128) : undefined;
  if (m.v !== PROTOCOL_VERSION) {
    return { ok: false, code: ProtoErrors.VERSION, replyTo, message: `protocol version ${JSON.stringify(m.v)} is not supported; this side speaks version ${PROTOCOL_VERSION}` };
  }
  if (typeof m.type !== 'string') return { ok: false, code: ProtoErrors.INVALID, replyTo, message: '/type: must be a string' };
  const schema = table[m.type];
  if (!schema) return { ok: false, code: ProtoErrors.UNKNOWN_TYPE, replyTo, message: `unknown message type ${JSON.stringify(m.type.slice(0, 64))}` };
  const errors = validate(schema, m, defs);
  if (errors.length) {
    const shown = errors.slice(0, 5).map((e) => `${e.path || '/'}: ${e.message}`).join('; ');
    return { ok: false, code: ProtoErrors.INVALID, replyTo, errors, message: `invalid ${m.type} message: ${shown}` };
  }
  return { ok: true, msg: m as T };
}

/** Checks an outgoing message against its own schema (a bug on our side if it fails). */
export function checkOutgoing(msg: Record<string, unknown>, table: Record<string, JsonSchema>): void {
  const schema = table[String(msg.type)];
  if (!schema) throw new Error(`no schema for outgoing message type ${String(msg.type)}`);
  // What goes on the wire: JSON drops undefined members.
  const errors = validate(schema, JSON.parse(JSON.stringify(msg)), defs);
  if (errors.length) throw new Error(`outgoing ${String(msg.type)} does not match its schema: ${errors.map((e) => `${e.path}: ${e.message}`).join('; ')}`);
}

let counter = 0;
/** A message id unique within this process. */
export function messageId(prefix = 'm'): string {
  counter = (counter + 1) % Number.MAX_SAFE_INTEGER;
  return `${prefix}-${Date.now().toString(36)}-${counter.toString(36)}`;
}
