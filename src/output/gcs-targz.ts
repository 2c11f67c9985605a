// gs://<bucket>/<name>.tar.gz: the disk in the layout GCE's image import reads (`gcloud compute images create
// --source-uri`): a gzip'd GNU tar holding one sparse member disk.raw, its size rounded up to a whole GiB.
import type { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import zlib from 'node:zlib';
import { ErrorCodes, RnodeError } from '../errors.js';
import { deadlineFor, gcsError, gcsFailure, gcsStorage } from '../store/gcs/gcs-store.js';
import { requestDeadlineMs, requestTimeoutMs } from '../store/common.js';
import { outputError } from './cloud.js';
import { roundUp, type Extent, type OpenOutputOptions, type OutputSink } from './sink.js';
import { SPARSE_EXTENSION_ENTRIES, SPARSE_HEADER_ENTRIES, TAR_BLOCK, TAR_RECORD, sparseEntryCount, sparseExtension, sparseHeader } from './tar.js';
import { badOut, containerUrl, displayUrl, objectName } from './url.js';

/** GCE imports disks whose size is a whole number of GiB. */
export const GCE_ALIGN = 1024 ** 3;
/** Fast deflate: the upload is one stream on one core, and the sparse map already keeps holes out of it. */
const GZIP_LEVEL = 1;

export async function openGcsTarGzOutput(url: URL, opts: OpenOutputOptions): Promise<OutputSink> {
  const name = objectName(url);
  if (!/\.tar\.gz$/i.test(name)) throw badOut(displayUrl(url), 'must name a .tar.gz object (gs://bucket/name.tar.gz)');
  const file = gcsStorage(url, opts.env).bucket(url.hostname).file(name);
  // One single-request upload: the object appears whole or not at all, and a failed restore leaves nothing. (The
  // emulator breaks multi-chunk resumable uploads and bodies over ~130 MB; real GCS takes up to 5 TiB this way.)
  // Its deadline grows with the disk: the client's fixed one cut every restore of more than ~2 minutes of upload.
  deadlineFor(file, requestDeadlineMs(requestTimeoutMs(url), opts.diskSize));
  const upload = file.createWriteStream({ resumable: false, contentType: 'application/gzip', validation: false });
  return new GcsTarGzSink(displayUrl(url), upload, opts.diskSize, { container: containerUrl(url), name });
}

/** Exported for tests, which stream it into a local file. */
export class GcsTarGzSink implements OutputSink {
  readonly ordered = true;
  /**
   * The tar stream is written straight into gzip: zlib calls a write's callback only once it has consumed the
   * bytes, so the caller's chunk buffer is free again then (a PassThrough in front would keep a reference).
   */
  private readonly tar = zlib.createGzip({ level: GZIP_LEVEL });
  private readonly done: Promise<void>;
  private failure: unknown;
  /** The writes and drains waiting now: a failed upload rejects them (see settled()). */
  private readonly waiting = new Set<(err: unknown) => void>();
  private readonly realSize: number;
  /** Data bytes written to the member so far, and the disk offset the next write must start at. */
  private stored = 0;
  private extents?: AsyncIterator<Extent>;
  private expect?: Extent;

  constructor(
    readonly location: string,
    upload: Writable,
    diskSize: number,
    /** What failure messages name: "upload <name> in gs://<bucket>". */
    private readonly object = { container: location, name: 'the archive' },
  ) {
    this.realSize = roundUp(diskSize, GCE_ALIGN);
    this.done = pipeline(this.tar, upload).catch((err) => {
      this.failure ??= err;
      for (const fail of this.waiting) fail(err);
      this.waiting.clear();
      throw err;
    });
    this.done.catch(() => undefined); // observed in finish(); abort() may never look
  }

  async prepare(extents: () => AsyncIterable<Extent>): Promise<void> {
    // Pass 1: how much data and how many map entries (the header states both before any data).
    let count = 0;
    let storedSize = 0;
    let lastEnd = 0;
    for await (const e of extents()) {
      count++;
      storedSize += e.length;
      lastEnd = e.offset + e.length;
    }
    const entries = sparseEntryCount(count, lastEnd, this.realSize);
    this.storedSize = storedSize;
    // Pass 2: the map itself, streamed: the header takes four entries, each extension block 21.
    const tail = lastEnd < this.realSize || count === 0 ? [{ offset: this.realSize, length: 0 }] : [];
    const all = async function* () {
      yield* extents();
      yield* tail;
    };
    let block: Extent[] = [];
    let written = 0;
    let header = true;
    for await (const e of all()) {
      block.push(e);
      if (block.length === (header ? SPARSE_HEADER_ENTRIES : SPARSE_EXTENSION_ENTRIES)) {
        written += block.length;
        await this.emit(
          header
            ? sparseHeader({ name: 'disk.raw', realSize: this.realSize, storedSize, entries }, block)
            : sparseExtension(block, written < entries),
        );
        header = false;
        block = [];
      }
    }
    if (header) await this.emit(sparseHeader({ name: 'disk.raw', realSize: this.realSize, storedSize, entries }, block));
    else if (block.length) await this.emit(sparseExtension(block, false));
    this.extents = extents()[Symbol.asyncIterator]();
  }

  private storedSize = 0;
  /** Bytes of the tar stream so far (the end is padded to a whole record). */
  private tarBytes = 0;

  async write(offset: number, data: Buffer): Promise<number> {
    if (!this.extents) throw new Error('gcs tar output used before prepare()');
    // The data must follow the map exactly; anything else is a bug in the caller, caught before it corrupts the archive.
    for (let done = 0; done < data.length;) {
      if (!this.expect || this.expect.length === 0) {
        const n = await this.extents.next();
        if (n.done) throw new RnodeError(ErrorCodes.INTERNAL, `data at ${offset} outside the sparse map of ${this.location}`);
        this.expect = { ...n.value };
      }
      if (this.expect.offset !== offset + done) {
        throw new RnodeError(ErrorCodes.INTERNAL, `data at ${offset + done}, the sparse map of ${this.location} expects ${this.expect.offset}`);
      }
      const n = Math.min(data.length - done, this.expect.length);
      await this.emit(data.subarray(done, done + n));
      this.expect.offset += n;
      this.expect.length -= n;
      done += n;
    }
    this.stored += data.length;
    return data.length;
  }

  /** Holes are in the map, not in the archive. */
  async zero(): Promise<number> {
    return 0;
  }

  /** Resolves once the tar stream has taken buf (and gzip has consumed it), so the caller may reuse it. */
  private emit(buf: Buffer): Promise<void> {
    this.tarBytes += buf.length;
    return this.settled((ok, fail) => this.tar.write(buf, (err) => (err ? fail(err) : ok()))).then(() => this.drained());
  }

  private drained(): Promise<void> {
    if (!this.tar.writableNeedDrain) return Promise.resolve();
    return this.settled((ok) => this.tar.once('drain', ok));
  }

  /**
   * Runs start, settled by its callbacks or by the upload failing first: a write gzip was still taking when the failed
   * upload tore the pipeline down never calls back, nor does a drain come (a recover then hung with nothing left to
   * run: exit 13, no message, when GCS credentials could not get a token).
   */
  private settled(start: (ok: () => void, fail: (err: unknown) => void) => void): Promise<void> {
    if (this.failure) return Promise.reject(this.mapped(this.failure));
    return new Promise<void>((resolve, reject) => {
      const fail = (err: unknown) => {
        this.waiting.delete(fail);
        reject(this.mapped(err));
      };
      this.waiting.add(fail);
      start(() => {
        this.waiting.delete(fail);
        resolve();
      }, fail);
    });
  }

  async finish(): Promise<void> {
    if (this.stored !== this.storedSize) {
      throw new RnodeError(ErrorCodes.INTERNAL, `wrote ${this.stored} data bytes to ${this.location}, its sparse map holds ${this.storedSize}`);
    }
    // Pad the member to a block, then the two zero blocks that end an archive, then the record.
    const end = roundUp(this.tarBytes, TAR_BLOCK) + 2 * TAR_BLOCK;
    await this.emit(Buffer.alloc(roundUp(end, TAR_RECORD) - this.tarBytes));
    this.tar.end();
    try {
      await this.done;
    } catch (err) {
      throw this.mapped(err);
    }
  }

  async abort(): Promise<void> {
    // Destroying the request before it ends: a single-request upload then never creates the object.
    const err = new Error('restore aborted');
    this.tar.destroy(err);
    await this.done.catch(() => undefined);
  }

  private mapped(err: unknown): RnodeError {
    return outputError(gcsError(this.object.container, 'upload', this.object.name, err, gcsFailure(err)));
  }
}
