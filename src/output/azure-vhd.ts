// azblob://<container>/<name>.vhd: the disk as a page blob holding a fixed VHD, which Azure turns into a managed disk
// (`az disk create --source <blob url>`). Page blobs are sparse: only non-zero 4 KiB blocks are uploaded.
import type { BlobServiceClient, PageBlobClient } from '@azure/storage-blob';
import { randomUUID } from 'node:crypto';
import { ErrorCodes, RnodeError } from '../errors.js';
import { azureFailure, azureServiceClient, requestSignal } from '../store/azure/azure-store.js';
import { DEFAULT_REQUEST_TIMEOUT_MS } from '../store/common.js';
import { outputError, retried } from './cloud.js';
import { eachLimited, nonZeroRuns, roundUp, type OpenOutputOptions, type OutputSink } from './sink.js';
import { badOut, containerUrl, displayUrl, objectName } from './url.js';
import { VHD_FOOTER_BYTES, vhdFooter } from './vhd.js';

const MiB = 1024 * 1024;
/** Azure managed disks need a virtual size that is a whole number of MiB. */
export const VHD_ALIGN = MiB;
/** The most one Put Page call takes. */
const MAX_PAGES_CALL = 4 * MiB;
const PAGE = 512;
/** Zero detection granularity: a block with any non-zero byte is uploaded whole. */
const BLOCK = 4096;
/** Put Page calls in flight per chunk (the restore has several chunks in flight too). */
const PER_CHUNK = 4;
/** The metadata name under which a blob carries the id of the restore that created it (Azure lowercases names). */
const RUN_METADATA = 'rnoderun';

export async function openAzureVhdOutput(url: URL, opts: OpenOutputOptions): Promise<OutputSink> {
  const name = objectName(url);
  if (!/\.vhd$/i.test(name)) throw badOut(displayUrl(url), 'must name a .vhd page blob (azblob://container/name.vhd)');
  // A fixed VHD of no sectors is a lone footer, which qemu-img cannot open (and Azure takes no disk under 20 MiB).
  if (opts.diskSize === 0) throw badOut(displayUrl(url), 'cannot hold a 0-byte disk: a VHD needs at least one sector of data');
  let service: BlobServiceClient;
  try {
    service = azureServiceClient(url, opts.env);
  } catch (err) {
    // Missing or unreadable credentials are the store's STORE_AUTH: for --out they are OUTPUT_IO, as its requests' are.
    throw err instanceof RnodeError ? outputError(err) : err;
  }
  const blob = service.getContainerClient(url.hostname).getPageBlobClient(name);
  const sink = new AzureVhdSink(displayUrl(url), containerUrl(url), blob, opts.diskSize);
  try {
    await sink.create();
  } catch (err) {
    await sink.abort(err); // a create that failed after all may have left this run's blob
    throw err;
  }
  return sink;
}

class AzureVhdSink implements OutputSink {
  readonly ordered = false;
  /** The virtual size: the disk rounded up to 1 MiB; the padding reads as zeros. */
  readonly virtualSize: number;
  private created = false;
  /** A create got no answer (the network, a timeout): it may have made the blob all the same. */
  private createUnanswered = false;
  /** Written into the blob's metadata at create: how this run knows the blob as its own after a lost answer. */
  private readonly runId = randomUUID();

  constructor(
    readonly location: string,
    /** Failure messages name the blob in its container: "upload pages <name> in azblob://<container>". */
    private readonly container: string,
    private readonly blob: PageBlobClient,
    private readonly diskSize: number,
  ) {
    this.virtualSize = roundUp(diskSize, VHD_ALIGN);
  }

  private call<T>(op: string, fn: () => Promise<T>): Promise<T> {
    return retried(this.container, op, this.blob.name, azureFailure, fn);
  }

  async create(): Promise<void> {
    // Never over an existing blob: it may be a disk someone uses. A failed restore deletes what it created.
    await this.call('create page blob', async () => {
      try {
        await this.blob.create(this.virtualSize + VHD_FOOTER_BYTES, {
          conditions: { ifNoneMatch: '*' },
          metadata: { [RUN_METADATA]: this.runId },
          abortSignal: signal(),
        });
      } catch (err) {
        // Answers, not failures: thrown as RnodeErrors, which retried() passes through without retrying.
        const { code, status } = azureFailure(err);
        if (status === undefined) this.createUnanswered = true;
        if (code === 'BlobAlreadyExists' || code === 'ConditionNotMet') {
          // A retry whose first attempt did create the blob (its answer was lost) finds this run's own blob. Credentials
          // that may create but not read (a write-only SAS) cannot tell: the blob is someone's, as far as this run knows.
          const own = await this.isOwnBlob().catch(() => false);
          if (own) return;
          throw new RnodeError(ErrorCodes.OUTPUT_IO, `--out ${this.location} already exists; delete it or choose another name`, { cause: err });
        }
        if (code === 'ContainerNotFound') {
          throw new RnodeError(ErrorCodes.OUTPUT_IO, `the container of --out ${this.location} does not exist; create it first`, { cause: err });
        }
        throw err;
      }
    });
    this.created = true;
  }

  /** True when the blob at the name is the one this run created (its metadata holds this run's id). */
  private async isOwnBlob(): Promise<boolean> {
    try {
      const props = await this.blob.getProperties({ abortSignal: signal() });
      return props.metadata?.[RUN_METADATA] === this.runId;
    } catch (err) {
      if (azureFailure(err).status === 404) return false;
      throw err;
    }
  }

  async write(offset: number, data: Buffer): Promise<number> {
    const pieces: { offset: number; body: Buffer }[] = [];
    for (const run of nonZeroRuns(data, BLOCK)) {
      for (let o = run.offset; o < run.offset + run.length; o += MAX_PAGES_CALL) {
        let body = data.subarray(o, Math.min(o + MAX_PAGES_CALL, run.offset + run.length));
        // Only the disk's last block can be short of a whole page; the rest of the page is padding (zeros).
        if (body.length % PAGE !== 0) body = Buffer.concat([body, Buffer.alloc(roundUp(body.length, PAGE) - body.length)]);
        pieces.push({ offset: offset + o, body });
      }
    }
    let sent = 0;
    await eachLimited(pieces, PER_CHUNK, async (p) => {
      await this.call('upload pages', () => this.blob.uploadPages(p.body, p.offset, p.body.length, { abortSignal: signal(p.body.length) }));
      sent += p.body.length;
    });
    return sent;
  }

  /** A new page blob reads as zeros: nothing to send. */
  async zero(): Promise<number> {
    return 0;
  }

  /** The footer goes last: until it is there the blob is no valid VHD, so a cut upload cannot pass for a disk. */
  async finish(): Promise<void> {
    const footer = vhdFooter({ size: this.virtualSize });
    await this.call('upload footer', () => this.blob.uploadPages(footer, this.virtualSize, footer.length, { abortSignal: signal() }));
  }

  async abort(cause?: unknown): Promise<void> {
    try {
      // A create whose answer never came may still have made the blob: it is deleted only when it is this run's. One
      // refused (the blob was there, the credentials were wrong) made nothing: no note sends the operator to delete a
      // blob this run never wrote.
      if (!this.created && (!this.createUnanswered || !(await this.isOwnBlob()))) return;
      await this.blob.deleteIfExists({ abortSignal: signal() });
    } catch {
      // The server that failed the restore often fails the delete too: the operator must know what is left.
      if (cause instanceof Error && !cause.message.includes('partial blob')) {
        cause.message += `; a partial blob may remain at ${this.location}: delete it before a rerun`;
      }
    }
  }
}

/** Each request's timeout: the SDK has none of its own (src/store/azure/azure-store.ts, AZURE_PIPELINE). */
function signal(bytes = 0): AbortSignal {
  return requestSignal(DEFAULT_REQUEST_TIMEOUT_MS, bytes);
}
