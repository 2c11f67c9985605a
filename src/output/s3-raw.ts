// s3://<bucket>/<key>: the raw disk image as one multipart upload, the input of EC2's import-snapshot. Parts go in
// disk order from a fixed pool of part buffers (S3 objects are not sparse: zeros are sent as zeros).
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  PutObjectCommand,
  UploadPartCommand,
  type S3Client,
} from '@aws-sdk/client-s3';
import { ErrorCodes, RnodeError } from '../errors.js';
import { copyBytes, zeroBytes } from '../native/index.js';
import { BufferPool } from '../pipeline/buffer-pool.js';
import { newS3Client, s3ClientConfig, s3Failure, s3RequestHandler } from '../store/s3/s3-store.js';
import { retried, wasStoreCode } from './cloud.js';
import { roundUp, type OpenOutputOptions, type OutputSink } from './sink.js';
import { badOut, containerUrl, displayUrl, objectName, outClientOptions } from './url.js';

const MiB = 1024 * 1024;
const MAX_PARTS = 10_000;
const MIN_PART = 5 * MiB;
/**
 * The largest part ?partSize= may ask for. S3 takes up to 5 GiB, but parts are whole buffers in memory, two of them
 * beyond 64 MiB: 2 GiB at this size. The part size a disk needs is at most 525 MiB (5 TiB in 10,000 parts).
 */
const MAX_PART = 1024 * MiB;
/** S3's largest object. */
const MAX_OBJECT = 5 * 1024 * 1024 * MiB;

/** Part size: 16 MiB, or larger so that the disk fits in S3's 10,000 parts (a 2 TiB disk: 210 MiB parts). */
export function s3PartSize(diskSize: number, wanted?: number): number {
  return Math.max(wanted ?? 16 * MiB, MIN_PART, roundUp(Math.ceil(diskSize / MAX_PARTS), MiB));
}

/** ?partSize=<bytes>, checked against both bounds (a value past the largest buffer failed as an internal error). */
function wantedPartSize(url: URL): number | undefined {
  const v = url.searchParams.get('partSize');
  if (v === null) return undefined;
  const n = /^\d+$/.test(v) ? Number(v) : NaN;
  if (!(n >= MIN_PART && n <= MAX_PART)) {
    throw badOut(displayUrl(url), `asks for partSize=${v}; a part is a number of bytes from 5 MiB (5242880) to 1 GiB (1073741824)`);
  }
  return n;
}

export async function openS3Output(url: URL, opts: OpenOutputOptions): Promise<OutputSink> {
  const wanted = wantedPartSize(url);
  if (opts.diskSize > MAX_OBJECT) {
    throw badOut(
      displayUrl(url),
      `cannot hold a disk of ${opts.diskSize} bytes: an S3 object is at most 5 TiB; restore it to azblob:// or a local file`,
    );
  }
  const client = newS3Client({
    maxAttempts: 1, // one retry policy: retried()
    requestHandler: s3RequestHandler(300_000), // parts are larger than store objects
    ...outClientOptions(url, () => s3ClientConfig(url, opts.env)),
  });
  const sink = new S3RawSink(displayUrl(url), containerUrl(url), client, url.hostname, objectName(url), s3PartSize(opts.diskSize, wanted));
  try {
    await sink.start();
  } catch (err) {
    client.destroy();
    throw err;
  }
  return sink;
}

class S3RawSink implements OutputSink {
  readonly ordered = true;
  private uploadId?: string;
  /** Parts being filled or uploaded hold one buffer each: memory is count x partSize, whatever the disk size. */
  private readonly pool: BufferPool<Buffer>;
  private current?: Buffer;
  private fill = 0;
  private partNumber = 0;
  private readonly parts: { PartNumber: number; ETag?: string }[] = [];
  private readonly uploads = new Set<Promise<void>>();
  private failure: unknown;

  constructor(
    readonly location: string,
    /** Failure messages name the key in its bucket: "upload part 3 <key> in s3://<bucket>". */
    private readonly container: string,
    private readonly client: S3Client,
    private readonly bucket: string,
    private readonly key: string,
    private readonly partSize: number,
  ) {
    // Four parts (three uploading while one fills) up to 64 MiB parts; two beyond, to bound memory on huge disks.
    this.pool = new BufferPool<Buffer>(partSize <= 64 * MiB ? 4 : 2, () => Buffer.allocUnsafeSlow(partSize));
  }

  private call<T>(op: string, fn: () => Promise<T>): Promise<T> {
    return retried(this.container, op, this.key, s3Failure, fn);
  }

  async start(): Promise<void> {
    const r = await this.call('create multipart upload', () =>
      this.client.send(
        new CreateMultipartUploadCommand({
          Bucket: this.bucket,
          Key: this.key,
          ContentType: 'application/octet-stream',
        }),
      ),
    ).catch((err: unknown) => {
      // Nothing exists yet to be found but the bucket: "not found" here is about --out, not the backup being read.
      if (!wasStoreCode(err, ErrorCodes.STORE_NOT_FOUND)) throw err;
      throw new RnodeError(ErrorCodes.OUTPUT_IO, `the bucket of --out ${this.location} does not exist; create it first`, { cause: err });
    });
    this.uploadId = r.UploadId;
  }

  async write(_offset: number, data: Buffer): Promise<number> {
    await this.append(data.length, data);
    return data.length;
  }

  async zero(_offset: number, length: number): Promise<number> {
    await this.append(length);
    return length;
  }

  /** Copies src (or zeros when src is absent) into the part being filled; a full part starts uploading. */
  private async append(length: number, src?: Buffer): Promise<void> {
    for (let done = 0; done < length;) {
      if (this.failure) throw this.failure;
      if (!this.current) {
        this.current = await this.pool.acquire(); // waits while every buffer is uploading: back-pressure
        this.fill = 0;
      }
      const n = Math.min(length - done, this.partSize - this.fill);
      const dst = this.current.subarray(this.fill, this.fill + n);
      if (src) copyBytes(src.subarray(done, done + n), dst);
      else zeroBytes(dst);
      this.fill += n;
      done += n;
      if (this.fill === this.partSize) this.ship();
    }
  }

  private ship(): void {
    const buf = this.current!;
    const body = buf.subarray(0, this.fill);
    const PartNumber = ++this.partNumber;
    this.current = undefined;
    this.fill = 0;
    const p = this.call(`upload part ${PartNumber}`, () =>
      this.client.send(
        new UploadPartCommand({
          Bucket: this.bucket,
          Key: this.key,
          UploadId: this.uploadId,
          PartNumber,
          Body: body,
          ContentLength: body.length,
        }),
      ),
    )
      .then(
        (r) => {
          this.parts.push({ PartNumber, ETag: r.ETag });
        },
        (err) => {
          this.failure ??= err;
        },
      )
      .finally(() => {
        this.uploads.delete(p);
        this.pool.release(buf);
      });
    this.uploads.add(p);
  }

  async finish(): Promise<void> {
    if (this.current && this.fill > 0) this.ship();
    await Promise.all(this.uploads);
    if (this.failure) throw this.failure;
    if (this.partNumber === 0) return this.finishEmpty();
    this.parts.sort((a, b) => a.PartNumber - b.PartNumber);
    await this.call('complete multipart upload', () =>
      this.client.send(
        new CompleteMultipartUploadCommand({
          Bucket: this.bucket,
          Key: this.key,
          UploadId: this.uploadId,
          MultipartUpload: { Parts: this.parts },
        }),
      ),
    );
    this.client.destroy();
  }

  /** A 0-byte disk: S3 completes no upload without parts (MalformedXML), so the empty object is put whole instead. */
  private async finishEmpty(): Promise<void> {
    await this.call('put empty object', () =>
      this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: this.key, Body: Buffer.alloc(0), ContentType: 'application/octet-stream' })),
    );
    await this.abortUpload();
    this.client.destroy();
  }

  async abort(): Promise<void> {
    await Promise.all(this.uploads);
    await this.abortUpload();
    this.client.destroy();
  }

  private async abortUpload(): Promise<void> {
    if (!this.uploadId) return;
    // Uploaded parts cost storage until aborted (s3rver answers 405 here; real S3 frees them).
    await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: this.key, UploadId: this.uploadId })).catch(() => undefined);
  }
}
