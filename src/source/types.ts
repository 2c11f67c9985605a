// BlockSource: what the pipeline needs from anything that holds a disk (raw image or device, NBD export,
// VMware disk through VDDK). Sources with change tracking report changed extents; the raw source does not,
// and the pipeline then finds changes by comparing each chunk with the previous point.

export interface Extent {
  offset: number;
  length: number;
}

export interface BlockSource {
  /** 'raw' | 'nbd' | 'vddk' */
  readonly kind: string;
  /** Where the data comes from, for messages and manifests; never contains secrets. */
  readonly location: string;
  /** Disk size in bytes. */
  readonly size: number;
  /** Reads must start and end on multiples of this (except at the end of the disk). */
  readonly alignment: number;
  /** True when changedExtentsSince() can be used. */
  readonly tracksChanges: boolean;
  /** Largest single read the source accepts; the pipeline splits larger reads. */
  readonly maxReadBytes: number;

  /** Areas that may hold data, sorted and non-overlapping; everything else reads as zeros. */
  allocatedExtents(): AsyncIterable<Extent>;
  /**
   * Areas changed since `marker` (a value returned by changeMarker() of an earlier run), sorted and
   * non-overlapping. Throws RnodeError CHANGE_MARKER_INVALID when the marker is unusable (tracking reset,
   * disk resized...), and the caller falls back to a full sync.
   */
  changedExtentsSince(marker: string): AsyncIterable<Extent>;
  /** The marker to save with the point being written, or undefined if the source has none. */
  changeMarker(): Promise<string | undefined>;
  /**
   * Whether a point read from `location` (its manifest's source.location) was read from the disk whose changes this
   * source tracks, so that its marker may be asked about here. A marker is only a name (a bitmap's, a change id) that
   * another disk can hold too; a source that tracks changes and leaves this out is never trusted with a marker.
   */
  tracksSameDiskAs?(location: string): boolean;
  /**
   * A token that changes whenever the data may have changed (a snapshot id; a file's mtime, size and inode).
   * An interrupted point is resumed only if the token is the same; undefined means "cannot tell": never resume.
   */
  identity?(): Promise<string | undefined>;
  /** Fill buf[0..length) from disk offset; returns the bytes read (short only at the end of the disk). */
  read(offset: number, buf: Buffer, length: number): Promise<number>;
  /**
   * A file descriptor the codec workers may pread the same bytes from (a raw image or device read through the page
   * cache), or undefined: reads must go through read(). A scan hands them whole runs of chunks to read and compare
   * there, a full point each chunk to read and encode there, and both report what was read with readElsewhere().
   * close() waits until release().
   */
  lendFd?(): { fd: number; release: () => void } | undefined;
  /**
   * Bytes read through a lent fd, for wrappers that count what read() returns: a full point's chunks, and a scan's
   * chunks found unchanged (a changed one is read again through read(), and counted then): each byte counts once.
   */
  readElsewhere?(bytes: number): void;
  close(): Promise<void>;
}

/**
 * A source that forwards everything to `inner` except what `over` replaces or adds. Wrappers (throttling,
 * counting) built on it stay complete as the interface grows; hand-written ones silently dropped identity().
 */
export function delegatingSource<T extends object>(inner: BlockSource, over: T & Partial<BlockSource>): BlockSource & T {
  // A wrapper that replaces read() sees every read only if no worker reads past it: it lends the inner fd only when it
  // says so (a lendFd of its own, with readElsewhere to hear what the workers read).
  const lends = !('read' in over);
  const base: BlockSource = {
    get kind() {
      return inner.kind;
    },
    get location() {
      return inner.location;
    },
    get size() {
      return inner.size;
    },
    get alignment() {
      return inner.alignment;
    },
    get tracksChanges() {
      return inner.tracksChanges;
    },
    get maxReadBytes() {
      return inner.maxReadBytes;
    },
    allocatedExtents: () => inner.allocatedExtents(),
    changedExtentsSince: (marker) => inner.changedExtentsSince(marker),
    changeMarker: () => inner.changeMarker(),
    tracksSameDiskAs: (location) => inner.tracksSameDiskAs?.(location) ?? false,
    identity: () => inner.identity?.() ?? Promise.resolve(undefined),
    read: (offset, buf, length) => inner.read(offset, buf, length),
    lendFd: () => (lends ? inner.lendFd?.() : undefined),
    readElsewhere: (bytes) => inner.readElsewhere?.(bytes),
    close: () => inner.close(),
  };
  return Object.defineProperties(base, Object.getOwnPropertyDescriptors(over)) as BlockSource & T;
}
