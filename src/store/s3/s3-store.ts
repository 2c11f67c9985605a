// ObjectStore on Amazon S3 (and S3-compatible servers) with @aws-sdk/client-s3: one object per key
// under an optional prefix, multipart above a size threshold, conditions as If-None-Match / If-Match.

import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  type PutObjectCommandInput,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import {
  checkKey,
  clipRange,
  cloudError,
  containerMissing,
  DEFAULT_REQUEST_TIMEOUT_MS,
  preconditionFailed,
  queryFlag,
  queryInt,
  rangedBody,
  requestTimeoutMs,
  splitPrefix,
  urlPrefix,
  type CloudFailure,
  firstSet,
} from '../common.js';
import { ErrorCodes, RnodeError } from '../../errors.js';
import { badStoreUrl, type StoreFactoryContext } from '../schemes.js';
import type { ByteRange, ObjectInfo, ObjectStore, PutOptions, StoreCapabilities } from '../types.js';

export interface S3StoreOptions {
  bucket: string;
  /** Key prefix inside the bucket ('' or ending in '/'). */
  prefix?: string;
  /** Client settings: region, endpoint, forcePathStyle, credentials... Retries stay off (the wrapper retries). */
  client?: S3ClientConfig;
  /** Puts larger than this go multipart (default 32 MiB). */
  multipartThreshold?: number;
  /** Part size of multipart uploads (default 8 MiB, S3 minimum 5 MiB). */
  partSize?: number;
  /** False when the server ignores If-None-Match / If-Match (s3rver); real S3 enforces them. */
  conditionalPut?: boolean;
  /** A request with no answer (or an idle body) for this long fails as retryable (default 120 s). */
  requestTimeoutMs?: number;
}

const MiB = 1024 * 1024;

export class S3Store implements ObjectStore {
  readonly location: string;
  readonly capabilities: StoreCapabilities;
  /** The SDK client, for callers that need more of S3 (bucket setup, tests counting requests). */
  readonly client: S3Client;
  private readonly bucket: string;
  private readonly prefix: string;
  private readonly multipartThreshold: number;
  private readonly partSize: number;
  private readonly requestTimeoutMs: number;

  constructor(opts: S3StoreOptions) {
    this.bucket = opts.bucket;
    this.prefix = opts.prefix ?? '';
    this.location = `s3://${this.bucket}/${this.prefix}`;
    this.capabilities = { conditionalPut: opts.conditionalPut ?? true };
    this.multipartThreshold = opts.multipartThreshold ?? 32 * MiB;
    this.partSize = Math.max(5 * MiB, opts.partSize ?? 8 * MiB);
    this.requestTimeoutMs = opts.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    this.client = newS3Client({
      maxAttempts: 1, // one retry policy, in the retry wrapper
      requestHandler: s3RequestHandler(this.requestTimeoutMs),
      ...opts.client,
    });
  }

  private objectKey(key: string): string {
    checkKey(key);
    return this.prefix + key;
  }

  async put(key: string, data: Uint8Array, opts: PutOptions = {}): Promise<ObjectInfo> {
    const input: PutObjectCommandInput = { Bucket: this.bucket, Key: this.objectKey(key), Body: data };
    if (opts.ifNoneMatch) input.IfNoneMatch = '*';
    if (opts.ifMatch !== undefined) input.IfMatch = opts.ifMatch;
    try {
      let etag: string | undefined;
      if (data.length > this.multipartThreshold) {
        // The conditions ride on CompleteMultipartUpload, so the object still appears atomically.
        const up = new Upload({ client: this.client, params: input, partSize: this.partSize, queueSize: 4 });
        etag = (await up.done()).ETag;
      } else {
        input.ContentLength = data.length;
        etag = (await this.client.send(new PutObjectCommand(input))).ETag;
      }
      return { key, size: data.length, etag };
    } catch (err) {
      const f = failure(err);
      // S3 answers a conditional put on a missing key with 404, and racing conditional puts with 409.
      if (
        (opts.ifMatch !== undefined && f.status === 404 && f.code !== 'NoSuchBucket') ||
        ((opts.ifNoneMatch || opts.ifMatch !== undefined) && f.code === 'ConditionalRequestConflict')
      ) {
        throw preconditionFailed(this.location, key, f.code ?? 'conflict', err);
      }
      throw this.error('put', key, err);
    }
  }

  async get(key: string, range?: ByteRange): Promise<Buffer> {
    const Key = this.objectKey(key);
    const { start, end } = clipRange(Number.MAX_SAFE_INTEGER, range);
    let Range: string | undefined;
    if (range?.length !== undefined) {
      // A zero-length range still asks for a byte: the answer tells whether the key exists.
      Range = `bytes=${start}-${Math.max(start, end - 1)}`;
    } else if (start > 0) {
      Range = `bytes=${start}-`;
    }
    try {
      const res = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key, Range }));
      const bytes = await res.Body!.transformToByteArray();
      const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      return rangedBody(buf, start, end, Range !== undefined && res.$metadata.httpStatusCode === 200);
    } catch (err) {
      if (failure(err).status === 416) return Buffer.alloc(0); // range starts at or past the end
      throw this.error('get', key, err);
    }
  }

  async head(key: string): Promise<ObjectInfo> {
    try {
      const res = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.objectKey(key) }));
      return { key, size: res.ContentLength ?? 0, etag: res.ETag };
    } catch (err) {
      throw this.error('head', key, err);
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    splitPrefix(prefix);
    let ContinuationToken: string | undefined;
    do {
      let page;
      try {
        page = await this.client.send(
          new ListObjectsV2Command({
            Bucket: this.bucket,
            Prefix: this.prefix + prefix,
            ContinuationToken,
          }),
        );
      } catch (err) {
        throw this.error('list', prefix, err);
      }
      for (const o of page.Contents ?? []) {
        yield { key: o.Key!.slice(this.prefix.length), size: o.Size ?? 0, etag: o.ETag };
      }
      ContinuationToken = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (ContinuationToken);
  }

  async delete(key: string): Promise<void> {
    try {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.objectKey(key) }));
    } catch (err) {
      if (failure(err).status === 404 && failure(err).code !== 'NoSuchBucket') return;
      throw this.error('delete', key, err);
    }
  }

  async close(): Promise<void> {
    this.client.destroy();
  }

  private error(op: string, key: string, err: unknown) {
    const f = failure(err);
    if (f.code === 'NoSuchBucket') return containerMissing(this.location, `bucket ${this.bucket}`, err);
    return cloudError(this.location, op, key, err, { ...f, timeoutMs: this.requestTimeoutMs });
  }
}

/**
 * Timeouts of the SDK's HTTP handler. Without throwOnRequestTimeout the request timeout only prints a warning: a
 * server that accepts the connection and never answers held a job forever. The socket timeout fails a body that
 * stops arriving.
 */
export function s3RequestHandler(timeoutMs: number) {
  return { connectionTimeout: Math.min(10_000, timeoutMs), requestTimeout: timeoutMs, socketTimeout: timeoutMs, throwOnRequestTimeout: true };
}

function failure(err: unknown): CloudFailure {
  const e = err as { name?: string; code?: string; Code?: string; $metadata?: { httpStatusCode?: number } };
  return { status: e?.$metadata?.httpStatusCode, code: e?.Code ?? e?.code ?? e?.name, timedOut: e?.name === 'TimeoutError' };
}

/**
 * s3://bucket/prefix?region=..&endpoint=..&forcePathStyle=true&conditional=off&multipartThreshold=..&partSize=..&requestTimeoutMs=..
 * Credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY(/AWS_SESSION_TOKEN) from the given env, else the
 * SDK's default provider chain (profiles, SSO, instance roles...).
 */
export async function s3StoreFromUrl(url: URL, ctx: StoreFactoryContext): Promise<S3Store> {
  if (!url.hostname) throw badStoreUrl(ctx.location, 'has no bucket (s3://bucket/prefix)');
  const prefix = urlPrefix(url.pathname, ctx.location);
  return new S3Store({
    bucket: url.hostname,
    prefix,
    client: s3ClientConfig(url, ctx.env),
    conditionalPut: queryFlag(url, 'conditional', true),
    multipartThreshold: queryInt(url, 'multipartThreshold'),
    partSize: queryInt(url, 'partSize'),
    requestTimeoutMs: requestTimeoutMs(url),
  });
}

/**
 * Every S3 client rnode makes. Under node 20 the SDK prints, once per process, that its releases from January 2027
 * will need node 22: eight raw lines on stderr in every S3 job's output, and in a node's JSON log. rnode runs on node
 * 20 with the SDK its lockfile pins, so the notice is for whoever upgrades that SDK (README, "Runtime"), not for an
 * operator. An environment that sets the SDK's variable itself keeps its value.
 */
export function newS3Client(config: S3ClientConfig): S3Client {
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  return new S3Client(config);
}

/** Client settings of an s3:// URL and env, shared with the s3:// recovery output (src/output/s3-raw.ts). */
export function s3ClientConfig(url: URL, env: NodeJS.ProcessEnv): S3ClientConfig {
  const client: S3ClientConfig = {
    region: firstSet(url.searchParams.get('region'), env.AWS_REGION, env.AWS_DEFAULT_REGION) ?? 'us-east-1',
  };
  const endpointParam = url.searchParams.get('endpoint');
  const endpoint = firstSet(endpointParam, env.AWS_ENDPOINT_URL_S3, env.AWS_ENDPOINT_URL);
  if (endpoint) client.endpoint = checkEndpoint(endpoint, endpoint === endpointParam);
  if (queryFlag(url, 'forcePathStyle', false)) client.forcePathStyle = true;
  if (env.AWS_ACCESS_KEY_ID && env.AWS_SECRET_ACCESS_KEY) {
    client.credentials = {
      accessKeyId: env.AWS_ACCESS_KEY_ID,
      secretAccessKey: env.AWS_SECRET_ACCESS_KEY,
      sessionToken: firstSet(env.AWS_SESSION_TOKEN),
    };
  }
  return client;
}

/**
 * An endpoint must be an http(s) URL. Without its scheme (?endpoint=127.0.0.1:9000) the SDK failed at the first
 * request with STORE_IO ERR_INVALID_URL; no scheme is guessed, since an emulator speaks http and a real service https.
 */
function checkEndpoint(endpoint: string, fromUrl: boolean): string {
  const from = fromUrl ? 'the store URL parameter endpoint' : 'AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL';
  // user:password@ there was taken, and stood in process listings as part of the store URL (the same in --out, and in
  // the store URL itself, is refused): credentials come from the variables meant for them. Not echoed.
  if (URL.canParse(endpoint) && (new URL(endpoint).username || new URL(endpoint).password)) {
    throw new RnodeError(
      ErrorCodes.BAD_STORE_URL,
      `${from} carries credentials (user:password@); remove them and give them in the environment (docs/stores.md, "Credentials")`,
    );
  }
  if (URL.canParse(endpoint) && ['http:', 'https:'].includes(new URL(endpoint).protocol)) return endpoint;
  throw new RnodeError(
    ErrorCodes.BAD_STORE_URL,
    `${from}=${endpoint} is not an http(s) URL; write it with its scheme, e.g. http://127.0.0.1:9000 or https://s3.example.com`,
    { details: { endpoint } },
  );
}

export { failure as s3Failure };
