// The NBD source: a disk exported by qemu-nbd (or any NBD server) read over one connection. base:allocation
// tells a full sync what to skip; a qemu dirty bitmap (libvirt-style checkpoints) tells an incremental what
// changed. See docs/nbd.md for the URL and the marker rules.
import { ErrorCodes, RnodeError } from '../../errors.js';
import type { BlockSource, Extent } from '../types.js';
import { NbdConnection, type ConnectionOptions } from './connection.js';
import { DEFAULT_STATUS_WINDOW, statusRuns } from './extents.js';
import { BASE_ALLOCATION, DIRTY_BITMAP_PREFIX, STATE_DIRTY, STATE_ZERO } from './protocol.js';
import { parseNbdUrl, type NbdUrl } from './url.js';

export interface NbdSourceOptions extends ConnectionOptions {
  /** Cap on one READ request (the server's maximum block size still applies). */
  maxReadBytes?: number;
  /** Bytes of the disk asked about per BLOCK_STATUS request. */
  statusWindow?: number;
}

/** Used when the server states no maximum block size: what qemu-nbd advertises, and what the spec lets a client assume safe. */
export const DEFAULT_MAX_READ = 32 * 1024 * 1024;
/** Never more per request, whatever the server allows: bounds the reply this client accepts. */
const READ_CEILING = 64 * 1024 * 1024;

export class NbdSource implements BlockSource {
  readonly kind = 'nbd';
  readonly alignment: number;
  readonly maxReadBytes: number;
  private readonly statusWindow: number;

  private constructor(
    private readonly url: NbdUrl,
    private readonly conn: NbdConnection,
    opts: NbdSourceOptions,
  ) {
    const bs = conn.info.blockSize;
    this.alignment = bs?.minimum ?? 1;
    const serverMax = bs && bs.maximum !== 0xffffffff ? bs.maximum : DEFAULT_MAX_READ;
    const max = Math.min(serverMax, READ_CEILING, opts.maxReadBytes ?? Infinity);
    this.maxReadBytes = Math.max(this.alignment, max - (max % this.alignment));
    // Windows stay whole blocks so every BLOCK_STATUS request is aligned.
    const w = opts.statusWindow ?? DEFAULT_STATUS_WINDOW;
    this.statusWindow = Math.max(this.alignment, w - (w % this.alignment));
  }

  static async open(location: string, opts: NbdSourceOptions = {}): Promise<NbdSource> {
    const url = parseNbdUrl(location);
    const contexts = [BASE_ALLOCATION];
    if (url.bitmap !== undefined) contexts.push(DIRTY_BITMAP_PREFIX + url.bitmap);
    const conn = await NbdConnection.connect(
      url.target,
      { exportName: url.exportName, contexts, listPrefix: url.bitmap !== undefined ? DIRTY_BITMAP_PREFIX : undefined },
      url.location,
      opts,
    );
    // Every request must be whole blocks, and the last block of such an export ends past its end: its tail can never be
    // read (qemu's client drops it, which would be a shorter disk). The server's setup has to change, not the timing.
    const minimum = conn.info.blockSize?.minimum;
    if (minimum !== undefined && conn.info.size % minimum !== 0) {
      await conn.close().catch(() => undefined);
      throw new RnodeError(
        ErrorCodes.BAD_SOURCE,
        `NBD export ${url.location} is ${conn.info.size} bytes, not a whole number of its ${minimum}-byte minimum blocks, so its last ` +
          `${conn.info.size % minimum} bytes cannot be read with the aligned requests it asks for; serve it with a size that is a multiple ` +
          `of ${minimum} bytes, or without a minimum block size`,
      );
    }
    return new NbdSource(url, conn, opts);
  }

  get location(): string {
    return this.url.location;
  }
  get size(): number {
    return this.conn.info.size;
  }
  /** Only a named bitmap can say what changed; without one every point is a scan of allocated areas. */
  get tracksChanges(): boolean {
    return this.url.bitmap !== undefined;
  }

  allocatedExtents(): AsyncIterable<Extent> {
    const id = this.conn.info.contexts.get(BASE_ALLOCATION);
    if (id === undefined) return wholeDisk(this.size);
    // Skip only what is known to read as zeros: HOLE|ZERO (unallocated) and ZERO alone (allocated zeros). A hole
    // without ZERO has undefined contents per the spec, so it is read like data.
    return statusRuns(
      (o, l) => this.conn.blockStatus(o, l, id),
      this.size,
      (flags) => (flags & STATE_ZERO) === 0,
      this.statusWindow,
    );
  }

  async *changedExtentsSince(marker: string): AsyncIterable<Extent> {
    const { bitmap } = this.url;
    if (bitmap === undefined) {
      throw new RnodeError(
        ErrorCodes.CHANGE_MARKER_INVALID,
        `NBD source ${this.location} names no dirty bitmap (bitmap=); this run reads the whole disk`,
      );
    }
    if (marker !== bitmap) {
      throw new RnodeError(
        ErrorCodes.CHANGE_MARKER_INVALID,
        `the previous point's checkpoint is "${marker}" but the source URL names bitmap "${bitmap}", which does not record changes since that point; ` +
          `pass bitmap=${marker} (and export it with qemu-nbd -B ${marker}) for an incremental, or accept this full read`,
        { details: { marker, bitmap } },
      );
    }
    const context = DIRTY_BITMAP_PREFIX + bitmap;
    const id = this.conn.info.contexts.get(context);
    if (id === undefined) {
      const offered = this.conn.info.offered;
      const what = !this.conn.info.structuredReplies
        ? 'has no structured replies, so no dirty bitmaps'
        : `does not offer ${context}${offered ? ` (it offers ${offered.length ? offered.join(', ') : 'no dirty bitmap'})` : ''}`;
      throw new RnodeError(
        ErrorCodes.CHANGE_MARKER_INVALID,
        `NBD server ${this.location} ${what}; export the bitmap (qemu-nbd -B ${bitmap}) for an incremental, or accept this full read`,
        { details: { marker, bitmap } },
      );
    }
    yield* statusRuns(
      (o, l) => this.conn.blockStatus(o, l, id),
      this.size,
      (flags) => (flags & STATE_DIRTY) !== 0,
      this.statusWindow,
    );
  }

  /**
   * The same server (socket path, or host and port) and the same export: every VM's bitmaps may be named c1, c2...,
   * so a name alone does not say whose disk it tracks. A socket path that changed between runs (libvirt may name them
   * per run) only costs a rescan.
   */
  tracksSameDiskAs(location: string): boolean {
    let was: NbdUrl;
    try {
      was = parseNbdUrl(location);
    } catch {
      return false;
    }
    const a = was.target;
    const b = this.url.target;
    const sameTarget =
      'path' in a ? 'path' in b && a.path === b.path : 'host' in b && a.host.toLowerCase() === b.host.toLowerCase() && a.port === b.port;
    return sameTarget && was.exportName === this.url.exportName;
  }

  async changeMarker(): Promise<string | undefined> {
    if (this.url.checkpoint !== undefined) return this.url.checkpoint;
    // Without a new checkpoint the same bitmap keeps accumulating: still a valid (if growing) "since" for next time,
    // if the server has it. One it does not offer may be created later, and would miss every write made before that.
    const { bitmap } = this.url;
    return bitmap !== undefined && this.conn.info.contexts.has(DIRTY_BITMAP_PREFIX + bitmap) ? bitmap : undefined;
  }

  async read(offset: number, buf: Buffer, length: number): Promise<number> {
    if (offset >= this.size || length <= 0) return 0;
    const n = Math.min(length, this.size - offset, buf.length);
    if (offset % this.alignment !== 0 || (n % this.alignment !== 0 && offset + n !== this.size)) {
      throw new RnodeError(ErrorCodes.INTERNAL, `NBD read of ${n} bytes at ${offset} is not aligned to the export's ${this.alignment}-byte blocks`);
    }
    // Pieces go out together (the connection bounds how many are in flight); every one settles before this
    // returns, so no late reply can write into buf after the caller has moved on.
    const pieces: Promise<void>[] = [];
    for (let done = 0; done < n; done += this.maxReadBytes) {
      const len = Math.min(this.maxReadBytes, n - done);
      pieces.push(this.conn.read(offset + done, buf.subarray(done, done + len), len));
    }
    const results = await Promise.allSettled(pieces);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    return n;
  }

  async close(): Promise<void> {
    await this.conn.close();
  }
}

async function* wholeDisk(size: number): AsyncIterable<Extent> {
  if (size > 0) yield { offset: 0, length: size };
}

/** The source factory registered for nbd:// and nbd+unix:// (options: timeouts, in-flight bound, read cap). */
export async function openNbdSource(location: string, opts: Record<string, unknown> = {}): Promise<BlockSource> {
  const known = ['connectTimeoutMs', 'requestTimeoutMs', 'maxInFlight', 'maxReadBytes', 'statusWindow'];
  // Never silently ignored: a job's options come from a Management Server that expects them honoured.
  for (const key of Object.keys(opts)) {
    if (!known.includes(key))
      throw new RnodeError(ErrorCodes.BAD_SOURCE, `NBD source option "${key}" is not one it takes (it takes: ${known.join(', ')}); remove it`);
  }
  const pick = (key: keyof NbdSourceOptions): number | undefined => {
    const v = opts[key];
    if (v === undefined) return undefined;
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
      throw new RnodeError(ErrorCodes.BAD_SOURCE, `NBD source option ${key} must be a positive number, got ${JSON.stringify(v)}`);
    }
    return v;
  };
  return NbdSource.open(location, {
    connectTimeoutMs: pick('connectTimeoutMs'),
    requestTimeoutMs: pick('requestTimeoutMs'),
    maxInFlight: pick('maxInFlight'),
    maxReadBytes: pick('maxReadBytes'),
    statusWindow: pick('statusWindow'),
  });
}
