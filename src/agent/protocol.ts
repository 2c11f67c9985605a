// The control protocol between a node and its Management Server, version 1: one TypeBox schema per message (its
// JSON Schema, which docs/control-protocol.md is generated from, and its TypeScript type), and decode().
import { Type, type Static, type TObject, type TProperties, type TSchema, type TUnsafe } from '@sinclair/typebox';
import { CODEC_NAME_LIST, CODEC_NAMES, DEFAULT_CODEC } from '../format/codecs.js';
import { compile, validate, type SchemaError } from './schema.js';

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
  /** A store credential names (or holds) a secret the node uses as an encryption key: it is never sent to a store. */
  KEY_AS_CREDENTIAL: 'RNODE_AGENT_KEY_AS_CREDENTIAL',
  /** The server's certificate is not trusted (logged and counted by the node; nothing is sent). */
  TLS: 'RNODE_AGENT_TLS',
  NODE_LOST: 'RNODE_NODE_LOST',
  /** job.failed of a job the node was running when it stopped without ending it (killed); the server may run it again. */
  RESTARTED: 'RNODE_AGENT_RESTARTED',
} as const;

/**
 * The highest report number: seqs stay exact JSON numbers (2^53 - 1). Past it seq + 1 === seq, and a server drops every
 * later report as a duplicate of the one before.
 */
export const MAX_SEQ = Number.MAX_SAFE_INTEGER;
/** The longest token a hello carries. */
export const MAX_TOKEN_CHARS = 4096;

/** WebSocket close codes (4000-4999 are the application's). */
export const CloseCodes = { AUTH: 4401, VERSION: 4406, REPLACED: 4409, SHUTDOWN: 4503 } as const;

// ---- schemas (TypeBox: the JSON Schema and the TypeScript type come from the same expression) ----

type Opts = { description?: string };
const str = (maxLength = 1024, o: Opts = {}) => Type.String({ minLength: 1, maxLength, ...o });
const uint = (o: Opts & { maximum?: number } = {}) => Type.Integer({ minimum: 0, ...o });
const posInt = (o: Opts & { maximum?: number } = {}) => Type.Integer({ minimum: 1, ...o });
const positive = (o: Opts = {}) => Type.Number({ exclusiveMinimum: 0, ...o });
/** A closed set of strings, written as JSON Schema "enum" (TypeBox would write anyOf of consts). */
const oneOfStrings = <const T extends string>(values: readonly T[], o: Opts = {}) => Type.Unsafe<T>({ type: 'string', enum: [...values], ...o });
const Opt = Type.Optional;
const ISO_TIME = () => Type.String({ pattern: '^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}(\\.\\d+)?Z$' });

/** Shared definitions, referenced as "#/$defs/<name>" (the doc lists them once). */
export const defs: Record<string, TSchema> = {};
/** Adds a shared definition and returns a reference to it that keeps its TypeScript type. */
function shared<T extends TSchema>(name: string, schema: T): TUnsafe<Static<T>> {
  defs[name] = schema;
  return Type.Unsafe<Static<T>>({ $ref: `#/$defs/${name}` });
}

const ID_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$';
const Id = shared('id', Type.String({ pattern: ID_PATTERN, description: 'message, job, node or group id' }));
const ID_RE = new RegExp(ID_PATTERN);
/** True for a string the protocol takes as an id (a node id read back from the state dir must be one). */
export const isId = (text: string): boolean => ID_RE.test(text);
const DiskId = shared('diskId', Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$' }));
const SecretRef = shared(
  'secretRef',
  Type.Object(
    { secretRef: Type.String({ pattern: '^(env|file):[A-Za-z0-9._-]{1,128}$' }) },
    {
      additionalProperties: false,
      description: "a secret named, never sent: env:NAME (the node's environment) or file:NAME (<state-dir>/secrets/NAME)",
    },
  ),
);
/** The one meaning of bandwidth, for the CLI and the agent alike (src/store/wrap.ts). */
const BANDWIDTH =
  'bytes/s sent to the target per job: the objects put to the store (packs, tables, checkpoints), whatever the store kind; lease traffic is exempt and never waits; 0 or absent: unlimited';
const envOf = (description: string) => Type.Record(Type.String(), Type.Union([Type.String({ maxLength: 4096 }), SecretRef]), { description });
const Store = shared(
  'store',
  Type.Object(
    {
      url: str(2048),
      env: Opt(
        envOf(
          'environment the store client sees (credentials by reference); a ws:// or wss:// store takes RNODE_TOKEN_FILE, RNODE_CA_FILE and RNODE_PIN_SHA256 from it (file paths on the node, a certificate fingerprint)',
        ),
      ),
    },
    { additionalProperties: false, description: 'where points are kept: a directory, s3://, azblob://, gs:// or ws:// URL without secrets' },
  ),
);
const Source = shared(
  'source',
  Type.Object(
    {
      location: str(2048),
      options: Opt(
        Type.Unsafe<Record<string, unknown>>({
          type: 'object',
          description:
            'settings of the source kind the location names (a path or file://: direct; nbd://: connectTimeoutMs, requestTimeoutMs, maxInFlight, maxReadBytes, statusWindow; vddk://: sourceConfig or the VMware settings); one the kind does not take, or a value it cannot use, fails the run with RNODE_BAD_SOURCE',
        }),
      ),
    },
    { additionalProperties: false },
  ),
);
const DiskSourceRef = shared('diskSource', Type.Object({ disk: DiskId, source: Source }, { additionalProperties: false }));
const Encryption = shared(
  'encryption',
  Type.Object(
    {
      mode: oneOfStrings(['none', 'aes-256-gcm']),
      key: Opt(SecretRef),
    },
    {
      additionalProperties: false,
      description:
        'chunk encryption of a disk: aes-256-gcm needs key, a secret holding the 256-bit key (32 raw bytes, 64 hex characters or base64); ' +
        'replicate writes with it, recover and verify of an encrypted disk read with it',
    },
  ),
);

/** A point of a disk as a job names it; a verify also takes "all". */
const pointRef = (all = false) =>
  Type.String({
    pattern: all ? '^(latest|all|[0-9]{1,16})$' : '^(latest|[0-9]{1,16})$',
    description: all ? 'a point number, "latest" (the default) or "all"' : 'a point number or "latest" (the default)',
  });
/** A count of points to keep: an exact JSON number (1e300 is an integer to JSON Schema). */
const keepCount = () => posInt({ maximum: Number.MAX_SAFE_INTEGER });

const compression = () => oneOfStrings(CODEC_NAME_LIST, { description: `chunk codec (default: the library default, ${CODEC_NAMES[DEFAULT_CODEC]})` });
/** How a replicate run reads and writes; a policy and a replicate job both carry them. */
const tuning = {
  concurrency: Opt(posInt({ maximum: 64 })),
  compression: Opt(compression()),
  encryption: Opt(Encryption),
  chunkSize: Opt(Type.Integer({ minimum: 65536, maximum: 16777216 })),
  checkpointSeconds: Opt(positive()),
  leaseTtlSeconds: Opt(Type.Number({ minimum: 1 })),
};
/** Replicate jobs and policies of a VMware VM. */
const vmTuning = {
  quiesce: Opt(Type.Boolean({ description: 'ask VMware Tools for an application-consistent snapshot' })),
  quiesceFallback: Opt(
    oneOfStrings(['fallback', 'fail'], { description: 'quiesce impossible: crash-consistent point with a warning (default) or fail' }),
  ),
  unsupportedDisks: Opt(
    oneOfStrings(['skip', 'fail'], { description: 'independent and physical RDM disks: skipped with a reason (default) or fail' }),
  ),
  diskParallelism: Opt(posInt({ maximum: 64, description: 'disks of the VM read at once (default from cores and store concurrency)' })),
};

const PolicyRef = shared(
  'policy',
  Type.Object(
    {
      group: Id,
      revision: uint(),
      rpoSeconds: positive({ description: 'recovery point objective' }),
      intervalSeconds: Opt(positive({ description: 'run every so often (default: rpoSeconds / 2)' })),
      paused: Opt(Type.Boolean()),
      retention: Opt(
        Type.Object(
          {
            keep: keepCount(),
            graceSeconds: Opt(
              Type.Integer({
                minimum: 600,
                maximum: 30 * 86400,
                description:
                  "how long an unused pack waits before it is marked, and again before it is deleted (default 3600; at least a lease's 10 min: docs/prune.md)",
              }),
            ),
          },
          { additionalProperties: false },
        ),
      ),
      bandwidth: Opt(uint({ description: BANDWIDTH })),
      ...tuning,
      store: Store,
      disks: Type.Array(DiskSourceRef, { maxItems: 4096, description: 'the disks of this group assigned to this node' }),
      vm: Opt(str(256, { description: 'the disks are one VMware VM (vddk:// sources): scheduled runs take one snapshot and make VM points' })),
      ...vmTuning,
    },
    { additionalProperties: false },
  ),
);

export const jobKinds = ['replicate', 'recover', 'verify', 'prune'] as const;
const jobCommon = { jobId: Id, attempt: Opt(posInt()), store: Store };
const ReplicateJobSchema = Type.Object(
  {
    ...jobCommon,
    kind: Type.Literal('replicate'),
    group: Opt(Id),
    vm: Opt(str(256)),
    disks: Type.Array(DiskSourceRef, { minItems: 1, maxItems: 256 }),
    forceFull: Opt(Type.Boolean()),
    bandwidth: Opt(uint({ description: BANDWIDTH })),
    ...tuning,
    ...vmTuning,
  },
  { additionalProperties: false, description: 'replicate one disk, or all disks of a VM (one point per disk)' },
);
const RecoverJobSchema = Type.Object(
  {
    ...jobCommon,
    kind: Type.Literal('recover'),
    disk: DiskId,
    point: Opt(pointRef()),
    out: str(4096),
    outEnv: Opt(envOf('environment the client of a cloud out sees, as store.env (credentials by reference)')),
    encryption: Opt(Encryption),
  },
  {
    additionalProperties: false,
    description:
      'write a point of a disk to a path or device on this node, or stream it into a cloud disk object (s3://bucket/key, azblob://container/name.vhd, gs://bucket/name.tar.gz), verified',
  },
);
const VerifyJobSchema = Type.Object(
  {
    ...jobCommon,
    kind: Type.Literal('verify'),
    disk: DiskId,
    point: Opt(pointRef(true)),
    encryption: Opt(Encryption),
  },
  { additionalProperties: false, description: 'check a point (or "all") and every chunk it references' },
);
const PruneJobSchema = Type.Object(
  {
    ...jobCommon,
    kind: Type.Literal('prune'),
    disk: DiskId,
    keep: keepCount(),
    encryption: Opt(Encryption),
  },
  { additionalProperties: false, description: 'keep the newest points, delete the rest' },
);
// oneOf with a discriminator (not TypeBox's anyOf): ajv then reports the errors of the kind the job names.
const JobRef = shared(
  'job',
  Type.Unsafe<Static<typeof ReplicateJobSchema> | Static<typeof RecoverJobSchema> | Static<typeof VerifyJobSchema> | Static<typeof PruneJobSchema>>({
    type: 'object',
    required: ['kind'],
    properties: { kind: oneOfStrings(jobKinds) },
    discriminator: { propertyName: 'kind' },
    oneOf: [ReplicateJobSchema, RecoverJobSchema, VerifyJobSchema, PruneJobSchema],
  }),
);

const ExportSpecRef = shared(
  'exportSpec',
  Type.Object(
    {
      exportId: Id,
      store: Store,
      disk: DiskId,
      point: Opt(pointRef()),
      socket: Opt(str(4096)),
      // The port alternatives: up to 5 digits, at most 65535 (99999 failed in node's listen: RNODE_INTERNAL).
      listen: Opt(
        Type.String({
          pattern: '^(\\[[0-9A-Fa-f:.]+\\]|[A-Za-z0-9.-]*):([0-9]{1,4}|[0-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$',
          description: 'host:port, [v6]:port or :port (127.0.0.1); port 0 (any free one) to 65535',
        }),
      ),
      writable: Opt(Type.Boolean()),
      overlay: Opt(str(4096, { description: 'local copy-on-write file; required with writable' })),
      cacheBytes: Opt(Type.Integer({ minimum: 1048576 })),
      encryption: Opt(Encryption),
      tls: Opt(Type.Object({ cert: SecretRef, key: SecretRef }, { additionalProperties: false })),
      leaseSeconds: Opt(
        positive({ description: 'stop this long after the last export.start for this exportId (a repeat renews it); absent: until export.stop' }),
      ),
    },
    {
      additionalProperties: false,
      description: 'serve a point as an NBD export (instant recovery): a unix socket, or host:port (off loopback only with tls)',
    },
  ),
);
const ExportCountersRef = shared(
  'exportCounters',
  Type.Object({
    bytesServed: uint(),
    bytesFetched: Opt(uint()),
    cacheHitRatio: Type.Number({ minimum: 0, maximum: 1 }),
    cachedBytes: Opt(uint()),
    connections: Opt(uint()),
    activeConnections: Opt(uint()),
    chunkErrors: Opt(uint()),
  }),
);
const DiskResultRef = shared(
  'diskResult',
  Type.Object(
    {
      disk: DiskId,
      point: Opt(posInt()),
      parent: Opt(Type.Union([Type.Integer(), Type.Null()])),
      full: Opt(Type.Boolean()),
      rebasedFrom: Opt(
        posInt({
          description:
            'an incremental point whose table stands alone (parent null): the point it was compared with, whose chain had reached the length limit',
        }),
      ),
      resumed: Opt(Type.Boolean()),
      comparedBy: Opt(
        oneOfStrings(['change-hashes', 'chunk-ids'], {
          description:
            "an incremental that read the whole disk: how it found the unchanged chunks (by the node's change hashes of the parent point, or by chunk ids where it held none)",
        }),
      ),
      marker: Opt(Type.Union([Type.String(), Type.Null()], { description: 'source change marker saved with the point' })),
      diskSize: Opt(uint()),
      bytesRead: Opt(uint({ description: 'source bytes read for the whole point (a resumed point counts the earlier runs too)' })),
      sourceBytesRead: Opt(uint({ description: 'source bytes this run read (less than bytesRead when resumed)' })),
      bytesWritten: Opt(uint()),
      chunksChanged: Opt(uint()),
      chunksZero: Opt(uint()),
      seconds: Opt(Type.Number({ minimum: 0 })),
      keyId: Opt(Type.String({ pattern: '^[0-9a-f]{32}$', description: 'an encrypted point: the key id (a fingerprint, never the key)' })),
      ok: Opt(Type.Boolean()),
      problems: Opt(uint()),
      checked: Opt(
        oneOfStrings(['contents', 'stored-bytes'], { description: 'verify: stored-bytes when an encrypted disk was verified without its key' }),
      ),
      kept: Opt(Type.Array(uint())),
      deleted: Opt(Type.Array(uint())),
      out: Opt(Type.String()),
    },
    { description: 'per-disk outcome; replicate fills point..seconds and keyId, verify fills ok/problems/checked, prune kept/deleted, recover out' },
  ),
);

/** What a VM job reports beside its disks' results (the schema checks only its top-level members). */
export interface VmJobResult {
  vm: string;
  vmPoint: number;
  snapshot: string;
  consistency: 'application' | 'crash';
  consistencyReason?: string;
  disks: Array<{ key: number; disk: string; point: number; transport: string; fullReason?: string }>;
  skipped: Array<{ key: number; label: string; reason: string }>;
  removed: Array<{ key: number; disk: string; reason: string }>;
  added: number[];
  staleSnapshotsRemoved: string[];
  prunedVmPoints?: number[];
}

function envelope<T extends string, P extends TProperties>(type: T, props: P, description: string) {
  return Type.Object(
    { v: Type.Literal(PROTOCOL_VERSION), type: Type.Literal(type), id: Id, ...props },
    { $id: `rnode-control/v1/${type}`, description },
  );
}

const reliable = {
  seq: posInt({ maximum: MAX_SEQ, description: 'per-node report number, acked by the server' }),
  at: ISO_TIME(),
};
const reportOf = { jobId: Id, kind: oneOfStrings(jobKinds), attempt: Opt(posInt()), scheduled: Opt(Type.Boolean()), group: Opt(Id) };
const strings = () => Type.Array(str(32));

const HealthSchema = Type.Object({
  ready: Type.Boolean(),
  inFlight: uint(),
  queued: uint(),
  slots: posInt(),
  load1: Opt(Type.Number({ minimum: 0 })),
  rssBytes: Opt(uint()),
  uptimeSeconds: Opt(Type.Number({ minimum: 0 })),
  reportsQueued: Opt(uint()),
  policies: Opt(uint()),
  disks: Opt(uint()),
});

const hello = envelope(
  'hello',
  {
    token: Type.String({ minLength: 1, maxLength: MAX_TOKEN_CHARS }),
    protocols: Type.Array(posInt(), { minItems: 1 }),
    node: Type.Object({ id: Id, name: str(256), version: str(64), hostname: Opt(str(256)), pid: Opt(uint()) }),
    capabilities: Type.Object({ sources: strings(), stores: strings(), codecs: strings(), jobs: strings(), encryption: Opt(strings()) }),
    capacity: Type.Object({
      slots: posInt(),
      bandwidth: Opt(
        uint({
          description: 'bytes/s put to targets by all runs of the node together (rnode agent --bandwidth), lease traffic exempt; 0: unlimited',
        }),
      ),
    }),
    lastSeq: Opt(uint({ maximum: MAX_SEQ, description: 'highest report seq the node has created (the server may have fewer)' })),
  },
  'first message on every connection; nothing else is accepted before welcome',
);
const heartbeat = envelope('heartbeat', { health: HealthSchema }, 'node health and load, every welcome.heartbeatMs');
const jobAccepted = envelope(
  'job.accepted',
  {
    ...reliable,
    ...reportOf,
    disks: Type.Array(DiskId),
  },
  'a job was taken (queued for a slot or started)',
);
const jobProgress = envelope(
  'job.progress',
  {
    jobId: Id,
    disk: DiskId,
    phase: oneOfStrings(['queued', 'lease', 'scan', 'commit', 'recover', 'verify', 'prune']),
    bytesRead: Opt(uint()),
    bytesWritten: Opt(uint()),
    diskSize: Opt(uint()),
    position: Opt(uint()),
    rate: Opt(Type.Number({ minimum: 0, description: 'bytes/s of disk covered' })),
    etaSeconds: Opt(Type.Union([Type.Number({ minimum: 0 }), Type.Null()])),
  },
  'best effort, not queued while disconnected',
);
const jobCompleted = envelope(
  'job.completed',
  {
    ...reliable,
    ...reportOf,
    seconds: Opt(Type.Number({ minimum: 0 })),
    results: Type.Array(DiskResultRef),
    vm: Opt(
      Type.Unsafe<VmJobResult>(
        Type.Object(
          {
            vm: Type.String(),
            vmPoint: posInt(),
            snapshot: Type.String(),
            consistency: oneOfStrings(['application', 'crash']),
            disks: Type.Array(Type.Object({})),
          },
          { description: 'a VMware VM job: the VM point it committed (further members: see VmJobResult in src/agent/protocol.ts)' },
        ),
      ),
    ),
    warnings: Opt(Type.Array(str(4096), { description: 'what did not stop the job but needs attention (e.g. a crash-consistent fallback)' })),
  },
  'the job finished; for replicate every disk has a committed point',
);
const jobFailed = envelope(
  'job.failed',
  {
    ...reliable,
    ...reportOf,
    disk: Opt(DiskId),
    code: str(64),
    message: str(4096),
    cancelled: Opt(Type.Boolean()),
    retryable: Opt(Type.Boolean()),
    results: Opt(Type.Array(DiskResultRef, { description: 'disks of the job that did complete' })),
  },
  'the job stopped without completing; no half point is ever visible',
);
const rpoMissed = envelope(
  'rpo.missed',
  {
    ...reliable,
    group: Id,
    disk: DiskId,
    rpoSeconds: Type.Number({ minimum: 0 }),
    lagSeconds: Type.Number({ minimum: 0 }),
    lastPointAt: Type.Union([ISO_TIME(), Type.Null()]),
    reason: Opt(str(1024)),
  },
  "a disk's newest point is older than its RPO (once per episode)",
);
const exportStarted = envelope(
  'export.started',
  {
    ...reliable,
    exportId: Id,
    url: str(4096),
    disk: DiskId,
    point: posInt(),
    writable: Opt(Type.Boolean()),
    leaseUntil: Opt(ISO_TIME()),
  },
  'an export is serving at url (also sent when a repeated export.start renews its lease)',
);
const exportStatus = envelope(
  'export.status',
  { exportId: Id, counters: ExportCountersRef },
  'best effort, every progress interval while an export runs',
);
const exportStopped = envelope(
  'export.stopped',
  {
    ...reliable,
    exportId: Id,
    reason: oneOfStrings(['requested', 'lease-expired', 'failed', 'shutdown']),
    code: Opt(str(64)),
    message: Opt(str(4096)),
    counters: Opt(ExportCountersRef),
  },
  'an export ended (or could not start: reason failed, with code and message)',
);
const error = envelope(
  'error',
  {
    replyTo: Opt(Type.String({ maxLength: 128 })),
    code: str(64),
    message: str(4096),
  },
  'the message replyTo was refused; the sender keeps running',
);

/** A side's messages by type: what decode() accepts and checkOutgoing() checks. */
export type MessageTable = Record<string, TObject>;

/** Node -> server. */
export const agentMessages = {
  hello,
  heartbeat,
  'job.accepted': jobAccepted,
  'job.progress': jobProgress,
  'job.completed': jobCompleted,
  'job.failed': jobFailed,
  'rpo.missed': rpoMissed,
  'export.started': exportStarted,
  'export.status': exportStatus,
  'export.stopped': exportStopped,
  error,
} satisfies MessageTable;

const welcome = envelope(
  'welcome',
  {
    nodeId: Id,
    protocol: Type.Literal(PROTOCOL_VERSION),
    heartbeatMs: Type.Integer({ minimum: 100 }),
    ackedSeq: uint({ maximum: MAX_SEQ }),
    serverTime: Opt(ISO_TIME()),
  },
  'registration accepted; ackedSeq is the last report the server holds',
);
const ack = envelope(
  'ack',
  { seq: uint({ maximum: MAX_SEQ, description: 'at most the highest seq the node sent' }) },
  'every report up to seq is stored by the server (cumulative)',
);
const policyUpdate = envelope('policy.update', { policy: PolicyRef }, 'add or replace one protection group (the disks of it this node runs)');
const policyRemove = envelope('policy.remove', { group: Id }, 'stop running a group');
const policySync = envelope(
  'policy.sync',
  { policies: Type.Array(PolicyRef) },
  'the complete set of groups for this node; any other group it holds is dropped',
);
const jobStart = envelope('job.start', { job: JobRef }, 'run a job now (or when a slot frees)');
const jobCancel = envelope('job.cancel', { jobId: Id }, 'stop a job; it ends with job.failed, cancelled: true');
const exportStart = envelope(
  'export.start',
  { export: ExportSpecRef },
  'start serving a point over NBD; repeating it for a running exportId only renews its lease',
);
const exportStop = envelope('export.stop', { exportId: Id }, 'stop an export; it ends with export.stopped');

/** Server -> node. */
export const serverMessages = {
  welcome,
  ack,
  'policy.update': policyUpdate,
  'policy.remove': policyRemove,
  'policy.sync': policySync,
  'job.start': jobStart,
  'job.cancel': jobCancel,
  'export.start': exportStart,
  'export.stop': exportStop,
  error,
} satisfies MessageTable;

// Every validator is ready when this module loads, before a node registers: the generated one (schema.ts), or one
// compiled now. Compiled on first use, each type cost 10-100 ms (more under load) inside the first job, enough to
// miss heartbeats of a short node timeout.
for (const table of [agentMessages, serverMessages]) for (const schema of Object.values(table)) compile(schema, defs);

// ---- TypeScript shapes, from the schemas ----

export type SecretRef = Static<typeof SecretRef>;
export type StoreDef = Static<typeof Store>;
export type SourceDef = Static<typeof Source>;
export type DiskSource = Static<typeof DiskSourceRef>;
export type EncryptionDef = Static<typeof Encryption>;
export type Policy = Static<typeof PolicyRef>;
export type JobKind = (typeof jobKinds)[number];
export type ReplicateJob = Static<typeof ReplicateJobSchema>;
export type RecoverJob = Static<typeof RecoverJobSchema>;
export type VerifyJob = Static<typeof VerifyJobSchema>;
export type PruneJob = Static<typeof PruneJobSchema>;
export type Job = ReplicateJob | RecoverJob | VerifyJob | PruneJob;
export type ExportSpec = Static<typeof ExportSpecRef>;
export type ExportCounters = Static<typeof ExportCountersRef>;
export type DiskResult = Static<typeof DiskResultRef>;
export type Health = Static<typeof HealthSchema>;

type Body<T extends TSchema, Drop extends string> = Omit<Static<T>, 'v' | 'id' | Drop>;
/** A report as the node creates it; the link adds v, id, seq and at. */
export type AgentReport =
  | Body<typeof jobAccepted, 'seq' | 'at'>
  | Body<typeof jobCompleted, 'seq' | 'at'>
  | Body<typeof jobFailed, 'seq' | 'at'>
  | Body<typeof rpoMissed, 'seq' | 'at'>
  | Body<typeof exportStarted, 'seq' | 'at'>
  | Body<typeof exportStopped, 'seq' | 'at'>;
export type JobProgress = Body<typeof jobProgress, 'type'>;
export type Hello = Body<typeof hello, 'type'>;
export type ServerMessage = { [K in keyof typeof serverMessages]: Static<(typeof serverMessages)[K]> }[keyof typeof serverMessages];
export type AgentMessage = { v: number; type: string; id: string } & Record<string, unknown>;

// ---- decoding ----

export type Decoded<T> = { ok: true; msg: T } | { ok: false; code: string; message: string; replyTo?: string; errors?: SchemaError[] };

/**
 * Parses and validates one text frame against a side's message table. Order of checks (as documented): JSON,
 * envelope (v/type/id), version, known type, schema. The replyTo of a refusal is the message's id when it had one.
 */
/**
 * How deep a message may nest objects and arrays. The deepest a schema allows is about 8 levels; the rest is left for
 * free-form members (a source's options). A policy nested 200,000 levels deep parsed, then overflowed the stack of
 * every JSON.stringify of it: no policy could be persisted again.
 */
export const MAX_DEPTH = 64;

/** The keys down to the first object or array nested deeper than `levels` in `v`; undefined when there is none. */
function deeperThan(v: unknown, levels: number): string[] | undefined {
  if (typeof v !== 'object' || v === null) return undefined;
  if (levels === 0) return [];
  // Recursion at most `levels` deep: a walk of any depth cannot overflow the stack itself.
  for (const [k, child] of Array.isArray(v) ? v.entries() : Object.entries(v)) {
    const below = deeperThan(child, levels - 1);
    if (below) return [String(k), ...below];
  }
  return undefined;
}

export function decode<T>(text: string, table: MessageTable): Decoded<T> {
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
    return {
      ok: false,
      code: ProtoErrors.VERSION,
      replyTo,
      message: `protocol version ${JSON.stringify(m.v)} is not supported; this side speaks version ${PROTOCOL_VERSION}`,
    };
  }
  if (typeof m.type !== 'string') return { ok: false, code: ProtoErrors.INVALID, replyTo, message: '/type: must be a string' };
  const schema = Object.hasOwn(table, m.type) ? table[m.type] : undefined;
  if (!schema) return { ok: false, code: ProtoErrors.UNKNOWN_TYPE, replyTo, message: `unknown message type ${JSON.stringify(m.type.slice(0, 64))}` };
  const tooDeep = deeperThan(m, MAX_DEPTH);
  if (tooDeep) {
    const where = tooDeep.length > 12 ? [...tooDeep.slice(0, 12), '…'] : tooDeep;
    const path = where.map((k) => `/${k.replace(/~/g, '~0').replace(/\//g, '~1')}`).join('');
    return {
      ok: false,
      code: ProtoErrors.INVALID,
      replyTo,
      message: `invalid ${m.type} message: ${path}: nested more than ${MAX_DEPTH} levels deep`,
    };
  }
  const errors = validate(schema, m, defs);
  if (errors.length) {
    const shown = errors
      .slice(0, 5)
      .map((e) => `${e.path || '/'}: ${e.message}`)
      .join('; ');
    return { ok: false, code: ProtoErrors.INVALID, replyTo, errors, message: `invalid ${m.type} message: ${shown}` };
  }
  return { ok: true, msg: m as T };
}

/** Checks an outgoing message against its own schema (a bug on our side if it fails). */
export function checkOutgoing(msg: Record<string, unknown>, table: MessageTable): void {
  const schema = Object.hasOwn(table, String(msg.type)) ? table[String(msg.type)] : undefined;
  if (!schema) throw new Error(`no schema for outgoing message type ${String(msg.type)}`);
  // What goes on the wire: JSON drops undefined members.
  const errors = validate(schema, JSON.parse(JSON.stringify(msg)), defs);
  if (errors.length)
    throw new Error(`outgoing ${String(msg.type)} does not match its schema: ${errors.map((e) => `${e.path}: ${e.message}`).join('; ')}`);
}

/** Why `name` cannot be a node's name in its hello, undefined when it can; the limits are the hello schema's. */
export function nodeNameProblem(name: string): string | undefined {
  const { minLength, maxLength } = hello.properties.node.properties.name;
  // JSON Schema counts characters (code points), not UTF-16 units.
  const length = [...name].length;
  if (length >= minLength! && length <= maxLength!) return undefined;
  return `must be ${minLength} to ${maxLength} characters long (got ${length})`;
}

/** Why a policy (one read back from the state dir) is not one a server could have sent; undefined when it is one. */
export function policyProblem(policy: unknown): string | undefined {
  // Checked as the policy.update carrying it: that validator is generated, a policy's alone would be compiled now.
  const errors = validate(policyUpdate, { v: PROTOCOL_VERSION, type: 'policy.update', id: 'state', policy }, defs);
  return errors.length ? errors.map((e) => `${e.path.replace(/^\/policy/, '') || '/'}: ${e.message}`).join('; ') : undefined;
}

let counter = 0;
/** A message id unique within this process. */
export function messageId(prefix = 'm'): string {
  counter = (counter + 1) % Number.MAX_SAFE_INTEGER;
  return `${prefix}-${Date.now().toString(36)}-${counter.toString(36)}`;
}
