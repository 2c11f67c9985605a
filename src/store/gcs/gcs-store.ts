// ObjectStore on Google Cloud Storage with @google-cloud/storage: one object per key under an optional
// prefix, each put a single request; etag = generation, so conditions are ifGenerationMatch.

import { Storage, type Bucket, type File, type StorageOptions } from '@google-cloud/storage';
import {
  checkKey,
  clipRange,
  cloudError,
  containerMissing,
  preconditionFailed,
  queryFlag,
  DEFAULT_REQUEST_TIMEOUT_MS,
  idleTimer,
  rangedBody,
  requestDeadlineMs,
  requestTimeoutMs,
  splitPrefix,
  urlPrefix,
  type CloudFailure,
  firstSet,
} from '../common.js';
import { badStoreUrl, type StoreFactoryContext } from '../schemes.js';
import type { ByteRange, ObjectInfo, ObjectStore, PutOptions, StoreCapabilities } from '../types.js';
import { ErrorCodes, RnodeError, oneLine } from '../../errors.js';

export interface GcsStoreOptions {
  bucket: Bucket;
  /** Key prefix inside the bucket ('' or ending in '/'). */
  prefix?: string;
  /** False when the server ignores ifGenerationMatch (the firebase emulator); real GCS enforces it. */
  conditionalPut?: boolean;
  /**
   * The client's request timeout (gcsStorage sets it): uploads get a deadline that grows with their body
   * (requestDeadlineMs), downloads fail when no byte came for this long.
   */
  requestTimeoutMs?: number;
}

export class GcsStore implements ObjectStore {
  readonly location: string;
  readonly capabilities: StoreCapabilities;
  readonly bucket: Bucket;
  private readonly prefix: string;
  private readonly timeoutMs: number;

  constructor(opts: GcsStoreOptions) {
    this.bucket = opts.bucket;
    this.prefix = opts.prefix ?? '';
    this.location = `gs://${this.bucket.name}/${this.prefix}`;
    this.capabilities = { conditionalPut: opts.conditionalPut ?? true };
    this.timeoutMs = opts.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
  }

  private file(key: string) {
    checkKey(key);
    return this.bucket.file(this.prefix + key);
  }

  async put(key: string, data: Uint8Array, opts: PutOptions = {}): Promise<ObjectInfo> {
    const file = this.file(key);
    deadlineFor(file, requestDeadlineMs(this.timeoutMs, data.byteLength));
    const preconditionOpts: { ifGenerationMatch?: number } = {};
    if (opts.ifNoneMatch) preconditionOpts.ifGenerationMatch = 0; // generation 0: "does not exist"
    if (opts.ifMatch !== undefined) {
      const gen = Number(opts.ifMatch);
      if (!Number.isSafeInteger(gen) || gen <= 0) throw preconditionFailed(this.location, key, `etag ${opts.ifMatch} is not a generation`);
      preconditionOpts.ifGenerationMatch = gen;
    }
    try {
      // resumable:false = one request, so the object appears whole or not at all (and the emulator
      // breaks multi-chunk resumable uploads). Size limit: 5 TiB on GCS, ~130 MB on the emulator.
      await file.save(Buffer.from(data.buffer, data.byteOffset, data.byteLength), {
        resumable: false,
        preconditionOpts,
        contentType: 'application/octet-stream',
      });
      return { key, size: data.byteLength, etag: String(file.metadata.generation) };
    } catch (err) {
      throw this.error('put', key, err);
    }
  }

  async get(key: string, range?: ByteRange): Promise<Buffer> {
    const file = this.file(key);
    const { start, end } = clipRange(Number.MAX_SAFE_INTEGER, range);
    const ranged = range !== undefined && (start > 0 || range.length !== undefined);
    // A zero-length range still asks for one byte: the answer tells whether the key exists.
    const opts = !ranged ? {} : range!.length === undefined ? { start } : { start, end: Math.max(start, end - 1) };
    let status: number | undefined;
    try {
      const chunks: Buffer[] = [];
      await new Promise<void>((resolve, reject) => {
        const body = file.createReadStream({ ...opts, validation: ranged ? false : 'crc32c', decompress: false });
        // The client times out only the wait for the answer's headers: a body that stops coming held a job forever.
        const idle = idleTimer(this.timeoutMs, () => body.destroy(bodyTimeout(this.timeoutMs)));
        body
          .on('response', (res: { statusCode?: number }) => {
            status = res.statusCode;
            idle.reset();
          })
          .on('data', (c: Buffer) => {
            chunks.push(c);
            idle.reset();
          })
          .on('end', resolve)
          .on('error', reject)
          .on('close', idle.stop);
      });
      const buf = Buffer.concat(chunks);
      // The emulator ignores a range starting past the end and answers 200 with the whole object.
      return rangedBody(buf, start, end, ranged && status === 200);
    } catch (err) {
      if (failure(err).status === 416) return Buffer.alloc(0); // range starts at or past the end
      throw this.error('get', key, err);
    }
  }

  async head(key: string): Promise<ObjectInfo> {
    try {
      const [m] = await this.file(key).getMetadata();
      return { key, size: Number(m.size ?? 0), etag: String(m.generation) };
    } catch (err) {
      throw this.error('head', key, err);
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    splitPrefix(prefix);
    let pageToken: string | undefined;
    do {
      let files;
      let next: { pageToken?: string } | null | undefined;
      try {
        [files, next] = await this.bucket.getFiles({ prefix: this.prefix + prefix, autoPaginate: false, maxResults: 1000, pageToken });
      } catch (err) {
        throw this.error('list', prefix, err);
      }
      for (const f of files) {
        yield { key: f.name.slice(this.prefix.length), size: Number(f.metadata.size ?? 0), etag: String(f.metadata.generation) };
      }
      pageToken = next?.pageToken;
    } while (pageToken);
  }

  async delete(key: string): Promise<void> {
    try {
      await this.file(key).delete({ ignoreNotFound: true });
    } catch (err) {
      throw this.error('delete', key, err);
    }
  }

  async close(): Promise<void> {}

  private error(op: string, key: string, err: unknown): RnodeError {
    const f = failure(err);
    if (f.status === 404 && /bucket/i.test((err as Error)?.message ?? '')) {
      return containerMissing(this.location, `bucket ${this.bucket.name}`, err);
    }
    return gcsError(this.location, op, key, err, { ...f, timeoutMs: this.timeoutMs });
  }
}

/**
 * cloudError for the GCS client, and the one thing it cannot tell from other failures: credentials google-auth could
 * not find or use, which come as plain errors, not as answers. Those are STORE_AUTH (the store's and the gs:// output's).
 */
export function gcsError(location: string, op: string, key: string, err: unknown, f: CloudFailure): RnodeError {
  const problem = credentialsProblem(err);
  if (problem === undefined) return cloudError(location, op, key, err, f);
  return new RnodeError(
    ErrorCodes.STORE_AUTH,
    `the Google credentials for ${location} cannot be used: ${problem}; set GOOGLE_APPLICATION_CREDENTIALS to a ` +
      'service account key file (JSON) this user can read, or run "gcloud auth application-default login"',
    // Not the SDK's error: a JSON.parse message quotes the file, which may hold a private key.
    { cause: new Error(problem), details: { key, location, op } },
  );
}

/** The calls google-auth makes on the credential file: their errors name it. */
const FILE_SYSCALLS = new Set(['open', 'read', 'stat', 'lstat', 'access', 'scandir']);

/**
 * What google-auth-library (Application Default Credentials: the file GOOGLE_APPLICATION_CREDENTIALS names, else
 * gcloud's application_default_credentials.json) throws when the credentials are missing or cannot be used, as a
 * phrase with no secret in it; undefined for any other error. Its messages may come prefixed ("Unable to read the
 * credential file specified by ...: "), so they are matched anywhere.
 */
function credentialsProblem(err: unknown): string | undefined {
  const e = err as (NodeJS.ErrnoException & { name?: unknown }) | undefined;
  const message = typeof e?.message === 'string' ? e.message : '';
  const missing = /The file at (.+?) does not exist, or it is not a file\./.exec(message);
  if (missing) return `the file ${missing[1]} does not exist or is not a file`;
  // Reading the file: the client opens no other local file, so a file system call's error naming a path is the
  // credentials' (a socket's connect error may name a path too: that one stays a store failure).
  if (FILE_SYSCALLS.has(String(e?.syscall)) && typeof e?.path === 'string') return `the file ${e.path} cannot be read (${e.code})`;
  // JSON.parse of the file: its message, which quotes the text, is left out.
  if (e?.name === 'SyntaxError') return 'the credential file is not JSON';
  // fromJSON: JSON without the fields of a credential ("... does not contain a client_email field").
  if (/The incoming JSON object|Must pass in a JSON object/.test(message)) return `the credential file is not a credential (${oneLine(message)})`;
  // Signing the token request: a private_key OpenSSL cannot read.
  if (typeof e?.code === 'string' && e.code.startsWith('ERR_OSSL_')) return `its private key cannot be used (${e.code})`;
  // None anywhere, and the request made without them was refused.
  if (message.includes('Could not load the default credentials')) return 'none were found';
  return undefined;
}

/**
 * GCS errors carry the HTTP status in `code` (a number); network errors carry an errno string. A timed-out request
 * comes as a plain Error whose message holds node-fetch's ("FetchError network timeout at: <url>"), or as the
 * FetchError itself (type 'request-timeout' or 'body-timeout').
 */
function failure(err: unknown): CloudFailure {
  const e = err as { code?: number | string; name?: string; type?: string; message?: string; response?: { status?: number } };
  if (typeof e?.code === 'number') return { status: e.code };
  const timedOut =
    e?.type === 'request-timeout' ||
    e?.type === 'body-timeout' ||
    /network timeout at:|Response timeout while trying to fetch/.test(e?.message ?? '');
  return { status: e?.response?.status, code: e?.code ?? e?.type ?? e?.name, timedOut };
}

type RequestInterceptor = NonNullable<File['interceptors'][number]['request']>;

/**
 * Gives the requests of one file object `ms` in all. The client's timeout is a deadline for the whole request, upload
 * included, and it overrides a call's own: fixed, a pack on a slow link failed at it every time, and was retried
 * forever. A file's request interceptors run after that override.
 */
export function deadlineFor(file: File, ms: number): void {
  // The SDK types the hook as taking its transport's options; what it passes is the request's own, kept as they are.
  const request = ((reqOpts: object) => ({ ...reqOpts, timeout: ms })) as unknown as RequestInterceptor;
  file.interceptors.push({ request });
}

/** The error of a download whose body stopped: a body-timeout, as node-fetch names its own (see failure). */
function bodyTimeout(ms: number): Error {
  return Object.assign(new Error(`no byte of the answer for ${ms} ms`), { type: 'body-timeout' });
}

/**
 * gs://bucket/prefix?project=..&conditional=off&requestTimeoutMs=..
 * STORAGE_EMULATOR_HOST (host:port or URL) points the client at an emulator; the project comes from
 * the URL or GOOGLE_CLOUD_PROJECT; credentials from Application Default Credentials.
 */
export async function gcsStoreFromUrl(url: URL, ctx: StoreFactoryContext): Promise<GcsStore> {
  if (!url.hostname) throw badStoreUrl(ctx.location, 'has no bucket (gs://bucket/prefix)');
  const prefix = urlPrefix(url.pathname, ctx.location);
  return new GcsStore({
    bucket: gcsStorage(url, ctx.env).bucket(url.hostname),
    prefix,
    conditionalPut: queryFlag(url, 'conditional', true),
    requestTimeoutMs: requestTimeoutMs(url),
  });
}

/** The client for a gs:// URL from env, shared with the gs:// recovery output (src/output/gcs-targz.ts). */
export function gcsStorage(url: URL, env: NodeJS.ProcessEnv): Storage {
  const opts: StorageOptions = {
    retryOptions: { autoRetry: false }, // one retry policy, in the retry wrapper
    timeout: requestTimeoutMs(url),
  };
  const projectId = firstSet(url.searchParams.get('project'), env.GOOGLE_CLOUD_PROJECT, env.GCLOUD_PROJECT);
  if (projectId) opts.projectId = projectId;
  const emulator = env.STORAGE_EMULATOR_HOST;
  if (emulator) opts.apiEndpoint = emulatorUrl(emulator);
  // The SDK also reads the variable from the process's environment itself and takes it, as it is, for the base URL
  // of every request: given as host:port, every request failed ("Only HTTP(S) protocols are supported").
  const own = process.env.STORAGE_EMULATOR_HOST;
  if (own) process.env.STORAGE_EMULATOR_HOST = emulatorUrl(own);
  return new Storage(opts);
}

/**
 * An emulator's address as a URL: host:port is taken as http (emulators serve plain HTTP). The SDK puts it at the head
 * of every request's URL, which its errors quote: credentials (user:password@), a query or a fragment there stood in
 * every error, log line and job report. Refused, and not echoed.
 */
function emulatorUrl(hostOrUrl: string): string {
  const url = /^https?:\/\//.test(hostOrUrl) ? hostOrUrl : `http://${hostOrUrl}`;
  const u = URL.canParse(url) ? new URL(url) : undefined;
  if (!u || u.username || u.password || u.search || u.hash) {
    throw new RnodeError(
      ErrorCodes.BAD_STORE_URL,
      "STORAGE_EMULATOR_HOST must be the GCS emulator's host:port or http(s) URL, without credentials (user:password@), " +
        'a query or a fragment (not shown here: it may hold a secret); fix the variable',
    );
  }
  return url;
}

export { failure as gcsFailure };
