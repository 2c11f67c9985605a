// Every error a user can see carries a stable code and a sentence that says what to do.
// Codes never change meaning once released; the CLI maps them to exit codes.

export const ErrorCodes = {
  // usage (exit 2)
  USAGE: 'RNODE_USAGE',
  BAD_CHUNK_SIZE: 'RNODE_BAD_CHUNK_SIZE',
  BAD_DISK_ID: 'RNODE_BAD_DISK_ID',
  BAD_STORE_URL: 'RNODE_BAD_STORE_URL',
  BAD_SOURCE: 'RNODE_BAD_SOURCE',
  // source (exit 1)
  SOURCE_NOT_FOUND: 'RNODE_SOURCE_NOT_FOUND',
  SOURCE_IO: 'RNODE_SOURCE_IO',
  SOURCE_CHANGED: 'RNODE_SOURCE_CHANGED',
  CHANGE_MARKER_INVALID: 'RNODE_CHANGE_MARKER_INVALID',
  // store (exit 1)
  STORE_NOT_FOUND: 'RNODE_STORE_NOT_FOUND',
  /** A store that holds no rnode data at all, where a command needs some (check): the wrong folder, or nothing mounted. */
  STORE_EMPTY: 'RNODE_STORE_EMPTY',
  STORE_PRECONDITION: 'RNODE_STORE_PRECONDITION',
  STORE_IO: 'RNODE_STORE_IO',
  STORE_AUTH: 'RNODE_STORE_AUTH',
  STORE_THROTTLED: 'RNODE_STORE_THROTTLED',
  STORE_UNAVAILABLE: 'RNODE_STORE_UNAVAILABLE',
  // data integrity (exit 1)
  FORMAT_VERSION: 'RNODE_FORMAT_VERSION',
  FORMAT_CODEC: 'RNODE_FORMAT_CODEC',
  FORMAT_CORRUPT: 'RNODE_FORMAT_CORRUPT',
  CHUNK_MISSING: 'RNODE_CHUNK_MISSING',
  CHUNK_CORRUPT: 'RNODE_CHUNK_CORRUPT',
  MANIFEST_CORRUPT: 'RNODE_MANIFEST_CORRUPT',
  /** An encrypted disk's metadata object fails its MAC, or is an older (unauthenticated) version of one. */
  METADATA_FORGED: 'RNODE_METADATA_FORGED',
  /** Prune's marks are older than a generation a checkpoint or manifest recorded: an older marks object was put back. */
  PRUNE_MARKS_REPLAYED: 'RNODE_PRUNE_MARKS_REPLAYED',
  /**
   * A legacy point written after its disk was upgraded to repository v2 (by an rnode from before v2, which sees only
   * the legacy points): its number may be a v2 point's, and no reader can tell which one a caller means.
   */
  LEGACY_AFTER_UPGRADE: 'RNODE_LEGACY_AFTER_UPGRADE',
  POINT_NOT_FOUND: 'RNODE_POINT_NOT_FOUND',
  DISK_NOT_FOUND: 'RNODE_DISK_NOT_FOUND',
  // encryption (exit 2: each is fixed by passing the right --encryption-key-file)
  KEY_FILE: 'RNODE_KEY_FILE',
  KEY_REQUIRED: 'RNODE_KEY_REQUIRED',
  KEY_MISMATCH: 'RNODE_KEY_MISMATCH',
  // output
  OUTPUT_IO: 'RNODE_OUTPUT_IO',
  // export (usage: listening off loopback without TLS)
  EXPORT_INSECURE: 'RNODE_EXPORT_INSECURE',
  /** An output, work or cache path lies inside the store a command reads (exit 2). */
  OUTPUT_IN_STORE: 'RNODE_OUTPUT_IN_STORE',
  /** A store folder or work folder cannot be used (not a folder, no permission, no space, a /proc path) (exit 2). */
  PATH_UNUSABLE: 'RNODE_PATH_UNUSABLE',
  /** An output URL or path that cannot take a disk image (exit 2). */
  BAD_OUTPUT: 'RNODE_BAD_OUTPUT',
  /** A file of the agent's state folder that the node cannot do without is damaged (exit 2: the operator restores it). */
  STATE_CORRUPT: 'RNODE_STATE_CORRUPT',
  // concurrency
  LEASE_HELD: 'RNODE_LEASE_HELD',
  LEASE_LOST: 'RNODE_LEASE_LOST',
  CANCELLED: 'RNODE_CANCELLED',
  /** The process hit a system limit (open files): not a bug; raise the limit (exit 1). */
  RESOURCE_LIMIT: 'RNODE_RESOURCE_LIMIT',
  INTERNAL: 'RNODE_INTERNAL',
  // installation (exit 1): no addon binary for this platform and no source build
  NATIVE_MISSING: 'RNODE_NATIVE_MISSING',
  /** Another running agent holds the agent's state folder (exit 1: stop it, or give this one its own --state-dir). */
  STATE_IN_USE: 'RNODE_STATE_IN_USE',
} as const;

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

// A source path that does not exist is a mistake on the command line, not a failed run: exit 2 like a bad flag.
// So is a missing, unreadable or wrong encryption key.
const USAGE_CODES: ReadonlySet<string> = new Set([
  ErrorCodes.USAGE,
  ErrorCodes.BAD_CHUNK_SIZE,
  ErrorCodes.BAD_DISK_ID,
  ErrorCodes.BAD_STORE_URL,
  ErrorCodes.BAD_SOURCE,
  ErrorCodes.SOURCE_NOT_FOUND,
  ErrorCodes.KEY_FILE,
  ErrorCodes.KEY_REQUIRED,
  ErrorCodes.KEY_MISMATCH,
  ErrorCodes.EXPORT_INSECURE,
  ErrorCodes.BAD_OUTPUT,
  ErrorCodes.OUTPUT_IN_STORE,
  ErrorCodes.PATH_UNUSABLE,
  ErrorCodes.STATE_CORRUPT,
]);

export class RnodeError extends Error {
  readonly code: string;
  /** True when trying the same call again may succeed (throttling, 5xx, resets, timeouts). */
  readonly retryable: boolean;
  /** Extra machine-readable facts (chunk index, offset, key...). */
  readonly details: Record<string, unknown>;

  constructor(code: string, message: string, opts: { cause?: unknown; retryable?: boolean; details?: Record<string, unknown> } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'RnodeError';
    this.code = code;
    this.retryable = opts.retryable ?? false;
    this.details = opts.details ?? {};
  }

  get isUsage(): boolean {
    return USAGE_CODES.has(this.code);
  }
}

/**
 * An error that is not rnode's own as the user should see it: a process out of file descriptors is RESOURCE_LIMIT
 * (raise the limit), not a bug; anything else is returned as it is (the CLI calls it INTERNAL, a bug).
 */
export function coded(err: unknown): unknown {
  const errno = (err as NodeJS.ErrnoException | undefined)?.code;
  if (err instanceof RnodeError || (errno !== 'EMFILE' && errno !== 'ENFILE')) return err;
  return new RnodeError(
    ErrorCodes.RESOURCE_LIMIT,
    `too many open files (${errno}): ${errno === 'EMFILE' ? "raise this process's limit (ulimit -n; LimitNOFILE= for a systemd service)" : "the system's file table is full (fs.file-max)"}, then run the same command again`,
    { cause: err, details: { errno } },
  );
}

/**
 * The process's current folder was removed: node starts no worker thread then (uv_cwd fails), and relative paths
 * mean nothing. RNODE_PATH_UNUSABLE (exit 2).
 */
export function cwdGoneError(cause?: unknown): RnodeError {
  return new RnodeError(
    ErrorCodes.PATH_UNUSABLE,
    "this process's current folder was removed (ENOENT); start rnode from a folder that exists (a service: set WorkingDirectory=)",
    { cause, details: { errno: 'ENOENT' } },
  );
}

export function usageError(message: string, code: string = ErrorCodes.USAGE): RnodeError {
  return new RnodeError(code, message);
}

/**
 * The code of a listen that failed for its address, the user's to fix (taken, not this machine's, not resolvable), or
 * undefined for any other failure.
 */
export function listenAddressProblem(err: unknown): string | undefined {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return code && ['EADDRINUSE', 'EACCES', 'EADDRNOTAVAIL', 'ENOTFOUND', 'EAI_AGAIN', 'EAI_NONAME'].includes(code) ? code : undefined;
}

export function isRnodeError(err: unknown, code?: string): err is RnodeError {
  return err instanceof RnodeError && (code === undefined || err.code === code);
}

/**
 * A message as one line (the CLI prints one per error, a log line holds one): Azure SDK messages carry
 * "RequestId:..." and "Time:..." on lines of their own. The ids stay, after '; ', for a support request.
 */
export function oneLine(message: string): string {
  return message.trim().replace(/\s*[\r\n]+\s*/g, '; ');
}
