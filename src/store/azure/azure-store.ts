// ObjectStore on Azure Blob Storage with @azure/storage-blob: one block blob per key under an optional
// prefix; large puts are staged as blocks and committed at once, so a blob still appears atomically.

import { randomBytes } from 'node:crypto';
import {
  BlobServiceClient,
  StorageSharedKeyCredential,
  type BlobRequestConditions,
  type ContainerClient,
  type StoragePipelineOptions,
} from '@azure/storage-blob';
import { ErrorCodes, RnodeError } from '../../errors.js';
import {
  checkKey,
  clipRange,
  cloudError,
  containerMissing,
  DEFAULT_REQUEST_TIMEOUT_MS,
  idleTimer,
  preconditionFailed,
  queryFlag,
  queryInt,
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

export interface AzureBlobStoreOptions {
  container: ContainerClient;
  /** Key prefix inside the container ('' or ending in '/'). */
  prefix?: string;
  /** Puts larger than this are staged as blocks (default 32 MiB). */
  singleUploadMax?: number;
  /** Block size of staged uploads (default 8 MiB). */
  blockSize?: number;
  /** Azure and Azurite both enforce conditions; an override exists for other emulators. */
  conditionalPut?: boolean;
  /** A request with no answer (or body) for this long fails as retryable (default 120 s). */
  requestTimeoutMs?: number;
}

const MiB = 1024 * 1024;
/**
 * One retry policy, in the retry wrapper. tryTimeoutInMs is only the server-side ?timeout= of each request: the SDK
 * never times a request out itself, so every call also carries an abort signal (requestSignal).
 */
export const AZURE_PIPELINE: StoragePipelineOptions = { retryOptions: { maxTries: 1, tryTimeoutInMs: DEFAULT_REQUEST_TIMEOUT_MS } };

/**
 * The abort signal of one request that moves `bytes`: a server that accepts the connection and never answers held a
 * job forever. It is a deadline (requestDeadlineMs), not an idle timer: the SDK gives no progress to reset one on.
 */
export function requestSignal(timeoutMs: number, bytes = 0): AbortSignal {
  return AbortSignal.timeout(requestDeadlineMs(timeoutMs, bytes));
}

export class AzureBlobStore implements ObjectStore {
  readonly location: string;
  readonly capabilities: StoreCapabilities;
  readonly container: ContainerClient;
  private readonly prefix: string;
  private readonly singleUploadMax: number;
  private readonly blockSize: number;
  private readonly timeoutMs: number;

  constructor(opts: AzureBlobStoreOptions) {
    this.container = opts.container;
    this.prefix = opts.prefix ?? '';
    this.location = `azblob://${this.container.containerName}/${this.prefix}`;
    this.capabilities = { conditionalPut: opts.conditionalPut ?? true };
    this.singleUploadMax = opts.singleUploadMax ?? 32 * MiB;
    this.blockSize = opts.blockSize ?? 8 * MiB;
    this.timeoutMs = opts.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
  }

  private signal(bytes = 0): AbortSignal {
    return requestSignal(this.timeoutMs, bytes);
  }

  private blob(key: string) {
    checkKey(key);
    return this.container.getBlockBlobClient(this.prefix + key);
  }

  async put(key: string, data: Uint8Array, opts: PutOptions = {}): Promise<ObjectInfo> {
    const blob = this.blob(key);
    const conditions: BlobRequestConditions = {};
    if (opts.ifNoneMatch) conditions.ifNoneMatch = '*';
    if (opts.ifMatch !== undefined) conditions.ifMatch = opts.ifMatch;
    const body = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    try {
      let etag: string | undefined;
      if (body.length <= this.singleUploadMax) {
        etag = (await blob.upload(body, body.length, { conditions, abortSignal: this.signal(body.length) })).etag;
      } else {
        // Staged blocks are invisible until the commit; the condition is checked at the commit.
        const run = randomBytes(8).toString('hex');
        const ids: string[] = [];
        for (let off = 0, i = 0; off < body.length; off += this.blockSize, i++) {
          ids.push(Buffer.from(`${run}-${String(i).padStart(6, '0')}`).toString('base64'));
        }
        let next = 0;
        await Promise.all(
          Array.from({ length: Math.min(4, ids.length) }, async () => {
            for (let i = next++; i < ids.length; i = next++) {
              const part = body.subarray(i * this.blockSize, (i + 1) * this.blockSize);
              await blob.stageBlock(ids[i], part, part.length, { abortSignal: this.signal(part.length) });
            }
          }),
        );
        etag = (await blob.commitBlockList(ids, { conditions, abortSignal: this.signal() })).etag;
      }
      return { key, size: body.length, etag };
    } catch (err) {
      const f = failure(err);
      if (f.code === 'BlobAlreadyExists' || (opts.ifMatch !== undefined && f.code === 'BlobNotFound')) {
        throw preconditionFailed(this.location, key, f.code, err);
      }
      throw this.error('put', key, err);
    }
  }

  async get(key: string, range?: ByteRange): Promise<Buffer> {
    const blob = this.blob(key);
    const { start, end } = clipRange(Number.MAX_SAFE_INTEGER, range);
    // count 0 means "to the end" to the SDK: a zero-length range asks for one byte (it still proves the key exists).
    const count = range?.length === undefined ? undefined : Math.max(1, end - start);
    // The signal covers the body too (the SDK keeps it on the response stream until that ends). It fires when no
    // byte came for the timeout, not at a deadline: a whole pack on a slow link takes as long as it takes.
    const ctl = new AbortController();
    const idle = idleTimer(this.timeoutMs, () => ctl.abort());
    try {
      const res = await blob.download(start, count, { abortSignal: ctl.signal });
      idle.reset();
      return rangedBody(await readAll(res.readableStreamBody!, idle.reset), start, end, false);
    } catch (err) {
      if (failure(err).status === 416) return Buffer.alloc(0); // range starts at or past the end
      throw this.error('get', key, err);
    } finally {
      idle.stop();
    }
  }

  async head(key: string): Promise<ObjectInfo> {
    try {
      const p = await this.blob(key).getProperties({ abortSignal: this.signal() });
      return { key, size: p.contentLength ?? 0, etag: p.etag };
    } catch (err) {
      throw this.error('head', key, err);
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    splitPrefix(prefix);
    // A page iterator per page: each request gets its own timeout (one signal would bound the whole listing).
    let continuationToken: string | undefined;
    do {
      let page;
      try {
        page = await this.container
          .listBlobsFlat({ prefix: this.prefix + prefix, abortSignal: this.signal() })
          .byPage({ maxPageSize: 5000, continuationToken })
          .next();
      } catch (err) {
        throw this.error('list', prefix, err);
      }
      if (page.done) return;
      for (const b of page.value.segment.blobItems) {
        yield { key: b.name.slice(this.prefix.length), size: b.properties.contentLength ?? 0, etag: b.properties.etag };
      }
      continuationToken = page.value.continuationToken || undefined;
    } while (continuationToken);
  }

  async delete(key: string): Promise<void> {
    try {
      await this.blob(key).delete({ abortSignal: this.signal() });
    } catch (err) {
      if (failure(err).code === 'BlobNotFound') return;
      throw this.error('delete', key, err);
    }
  }

  async close(): Promise<void> {}

  private error(op: string, key: string, err: unknown): RnodeError {
    const f = failure(err);
    if (f.code === 'ContainerNotFound') return containerMissing(this.location, `container ${this.container.containerName}`, err);
    return cloudError(this.location, op, key, err, { ...f, timeoutMs: this.timeoutMs });
  }
}

/** An AbortError is a request timeout: the only signals rnode gives the SDK are its request timers. */
function failure(err: unknown): CloudFailure {
  const e = err as { statusCode?: number; code?: string; name?: string; message?: string; details?: { errorCode?: string } };
  // An answer whose body was cut, or stopped past the timeout, while the SDK read it whole (a listing): it says the
  // parse failed ("Error reading response as text: aborted"). That is the network, retried as a reset before the
  // answer is; it failed the whole command at once as STORE_IO.
  if (e?.code === 'PARSE_ERROR' && /aborted|ECONNRESET|socket hang up|terminated/i.test(e.message ?? '')) {
    return { status: e.statusCode, code: 'ECONNRESET' };
  }
  return { status: e?.statusCode, code: e?.details?.errorCode ?? e?.code ?? e?.name, timedOut: e?.name === 'AbortError' };
}

async function readAll(stream: NodeJS.ReadableStream, onData: () => void): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) {
    chunks.push(c as Buffer);
    onData();
  }
  return chunks.length === 1 ? chunks[0] : Buffer.concat(chunks);
}

/**
 * azblob://container/prefix?conditional=off&singleUploadMax=..&blockSize=..&requestTimeoutMs=..
 * Credentials from env, first match wins: AZURE_STORAGE_CONNECTION_STRING; AZURE_STORAGE_ACCOUNT_URL (or
 * https://$AZURE_STORAGE_ACCOUNT.blob.core.windows.net) with AZURE_STORAGE_SAS_TOKEN or AZURE_STORAGE_KEY.
 */
export async function azureStoreFromUrl(url: URL, ctx: StoreFactoryContext): Promise<AzureBlobStore> {
  if (!url.hostname) throw badStoreUrl(ctx.location, 'has no container (azblob://container/prefix)');
  const prefix = urlPrefix(url.pathname, ctx.location);
  return new AzureBlobStore({
    container: azureServiceClient(url, ctx.env).getContainerClient(url.hostname),
    prefix,
    conditionalPut: queryFlag(url, 'conditional', true),
    singleUploadMax: queryInt(url, 'singleUploadMax'),
    blockSize: queryInt(url, 'blockSize'),
    requestTimeoutMs: requestTimeoutMs(url),
  });
}

/** The service client for an azblob:// URL from env, shared with the azblob:// recovery output (src/output/azure-vhd.ts). */
export function azureServiceClient(url: URL, env: NodeJS.ProcessEnv): BlobServiceClient {
  try {
    return serviceClient(url, env);
  } catch (err) {
    if (err instanceof RnodeError) throw err;
    // The SDK's sentence names the part it could not read ("Invalid BlobEndpoint in the provided ..."); the
    // variables' values stay out of the message, as they hold keys.
    const why = redactSecrets((err as Error)?.message ?? String(err));
    const fix = env.AZURE_STORAGE_CONNECTION_STRING
      ? 'AZURE_STORAGE_CONNECTION_STRING cannot be used' +
        `${where(url)} (${why}); set it to the connection string the storage account shows under "Access keys" ` +
        '(DefaultEndpointsProtocol=https;AccountName=...;AccountKey=...;EndpointSuffix=core.windows.net)'
      : `the Azure account settings cannot be used${where(url)} (${why}); set AZURE_STORAGE_ACCOUNT_URL to ` +
        'https://<account>.blob.core.windows.net (or AZURE_STORAGE_ACCOUNT to the account name) and check the SAS token or key';
    throw new RnodeError(ErrorCodes.STORE_AUTH, fix, { cause: new Error(why) });
  }
}

function where(url: URL): string {
  return ` for ${url.protocol}//${url.hostname}`;
}

function redactSecrets(message: string): string {
  return message.replace(/((?:AccountKey|SharedAccessSignature|sig)=)[^;&\s]*/gi, '$1***');
}

function serviceClient(url: URL, env: NodeJS.ProcessEnv): BlobServiceClient {
  // An empty AZURE_STORAGE_ACCOUNT_URL= is unset: it hid AZURE_STORAGE_ACCOUNT's URL, and so account + key.
  const accountUrl = firstSet(
    env.AZURE_STORAGE_ACCOUNT_URL?.replace(/\/+$/, ''),
    env.AZURE_STORAGE_ACCOUNT ? `https://${env.AZURE_STORAGE_ACCOUNT}.blob.core.windows.net` : undefined,
  );
  if (env.AZURE_STORAGE_CONNECTION_STRING) {
    return BlobServiceClient.fromConnectionString(env.AZURE_STORAGE_CONNECTION_STRING, AZURE_PIPELINE);
  } else if (accountUrl && env.AZURE_STORAGE_SAS_TOKEN) {
    return new BlobServiceClient(`${accountUrl}?${env.AZURE_STORAGE_SAS_TOKEN.replace(/^\?/, '')}`, undefined, AZURE_PIPELINE);
  } else if (accountUrl && env.AZURE_STORAGE_ACCOUNT && env.AZURE_STORAGE_KEY) {
    const cred = new StorageSharedKeyCredential(env.AZURE_STORAGE_ACCOUNT, env.AZURE_STORAGE_KEY);
    return new BlobServiceClient(accountUrl, cred, AZURE_PIPELINE);
  }
  throw new RnodeError(
    ErrorCodes.STORE_AUTH,
    `no Azure credentials for ${url.protocol}//${url.hostname}: set AZURE_STORAGE_CONNECTION_STRING, or ` +
      'AZURE_STORAGE_ACCOUNT_URL with AZURE_STORAGE_SAS_TOKEN, or AZURE_STORAGE_ACCOUNT with AZURE_STORAGE_KEY',
  );
}

export { failure as azureFailure };
