// VddkSource: one disk of a VM snapshot as a BlockSource. Data comes through VDDK; which areas to read comes
// from vSphere CBT (QueryChangedDiskAreas), and every way CBT can be unusable becomes CHANGE_MARKER_INVALID.
import { ErrorCodes, RnodeError } from '../../errors.js';
import { VddkError, type VddkDisk } from './vddk.js';
import type { VSphereClient, VirtualDiskInfo } from './vsphere/client.js';
import { VSphereFault } from './vsphere/errors.js';
import type { BlockSource, Extent } from '../types.js';

/** Faults with which QueryChangedDiskAreas rejects a changeId it cannot answer for (CBT reset, stale id). */
const UNUSABLE_CHANGE_ID_FAULTS = new Set(['FileFault', 'InvalidArgument', 'NotFound', 'InvalidState']);
/** Granularity of QueryAllocatedBlocks when CBT cannot say what is allocated. */
const ALLOCATION_CHUNK = 64 * 1024;

export interface VddkSourceContext {
  client: VSphereClient;
  host: string;
  vm: string;
  snapshot: string;
  disk: VirtualDiskInfo;
  vddk: VddkDisk;
  /** Notes for the run log (fallbacks taken); never secrets. */
  log?: (line: string) => void;
}

/** "52 1f ... 9c/17" -> { epoch: "52 1f ... 9c", seq: 17 }; undefined if it is not of that shape. */
export function parseChangeId(id: string): { epoch: string; seq: string } | undefined {
  const i = id.lastIndexOf('/');
  if (i <= 0 || i === id.length - 1) return undefined;
  return { epoch: id.slice(0, i).trim().toLowerCase(), seq: id.slice(i + 1) };
}

export class VddkSource implements BlockSource {
  readonly kind = 'vddk';
  readonly alignment = 512;
  /** The native side splits reads into VixDiskLib_Read calls of the configured cap. */
  readonly maxReadBytes = 64 * 1024 * 1024;
  readonly location: string;
  readonly size: number;
  readonly deviceKey: number;
  #ctx: VddkSourceContext;
  #closed = false;
  #onClose?: () => Promise<void>;

  constructor(ctx: VddkSourceContext, onClose?: () => Promise<void>) {
    this.#ctx = ctx;
    this.#onClose = onClose;
    this.deviceKey = ctx.disk.key;
    this.size = ctx.vddk.capacity;
    // The snapshot is part of the location, so a checkpoint left by a failed run is never continued against
    // a different snapshot (its data would be from another moment).
    this.location = `vddk://${ctx.host}/${ctx.vm}/disk-${ctx.disk.key}@${ctx.snapshot}`;
    if (ctx.disk.capacityBytes && ctx.disk.capacityBytes !== this.size) {
      ctx.log?.(`disk ${ctx.disk.key}: vSphere reports ${ctx.disk.capacityBytes} bytes, VDDK ${this.size}; using VDDK's`);
    }
  }

  /** The snapshot disk's CBT change id; absent when CBT is off for the VM. */
  get changeId(): string | undefined {
    return this.#ctx.disk.changeId;
  }
  /**
   * Always: a disk without CBT (off, and enableCbt false) is then scanned as a changed-extents source whose marker is
   * unusable, so the point records why (rescanReason) instead of scanning silently as a raw source does.
   */
  get tracksChanges(): boolean {
    return true;
  }
  get transportMode(): string {
    return this.#ctx.vddk.info.transportMode;
  }

  async changeMarker(): Promise<string | undefined> {
    return this.changeId;
  }

  /**
   * The same vCenter, VM and device key (any snapshot). A changeId's epoch alone does not name a disk: a clone can carry
   * its original's CBT history, and QueryChangedDiskAreas would answer for the clone's writes only.
   */
  tracksSameDiskAs(location: string): boolean {
    const { host, vm, disk } = this.#ctx;
    return location.startsWith(`vddk://${host}/${vm}/disk-${disk.key}@`);
  }

  /** Allocated areas: CBT's '*' query when CBT is on, else VDDK's QueryAllocatedBlocks, else the whole disk. */
  async *allocatedExtents(): AsyncIterable<Extent> {
    if (this.changeId) {
      const it = this.#changedAreas('*')[Symbol.asyncIterator]();
      let first: IteratorResult<Extent> | undefined;
      try {
        first = await it.next();
      } catch (err) {
        if (!(err instanceof VSphereFault)) throw err;
        this.#ctx.log?.(`disk ${this.deviceKey}: CBT cannot list allocated areas (${err.fault}); asking VDDK instead`);
      }
      if (first) {
        if (first.done) return;
        yield first.value;
        for (let r = await it.next(); !r.done; r = await it.next()) yield r.value;
        return;
      }
    }
    let extents: Extent[];
    try {
      extents = await this.#ctx.vddk.queryAllocated(0, this.size, ALLOCATION_CHUNK);
    } catch (err) {
      if (!(err instanceof VddkError)) throw err;
      this.#ctx.log?.(`disk ${this.deviceKey}: VDDK cannot list allocated blocks (${err.code}); reading the whole disk`);
      extents = this.size > 0 ? [{ offset: 0, length: this.size }] : [];
    }
    yield* extents;
  }

  async *changedExtentsSince(marker: string): AsyncIterable<Extent> {
    const current = this.changeId;
    if (!current) throw invalid(`CBT is off for VM ${this.#ctx.vm}, so the disk has no change id`);
    const was = parseChangeId(marker);
    const now = parseChangeId(current);
    if (!was || !now) throw invalid(`change id "${marker}" is not of the form "<uuid>/<sequence>"`);
    if (was.epoch !== now.epoch) {
      throw invalid(`CBT of disk ${this.deviceKey} was reset (change id ${marker} -> ${current})`);
    }
    yield* this.#changedAreas(marker);
  }

  // Pages through QueryChangedDiskAreas: each answer covers [startOffset, startOffset+length) and the next
  // question starts where it ended, until the capacity. Adjacent areas (also across pages) are merged.
  async *#changedAreas(changeId: string): AsyncIterable<Extent> {
    const { client, vm, snapshot, disk } = this.#ctx;
    let pos = 0;
    let pending: Extent | undefined;
    while (pos < this.size) {
      let info;
      try {
        info = await client.queryChangedDiskAreas(vm, snapshot, disk.key, pos, changeId);
      } catch (err) {
        if (changeId !== '*' && err instanceof VSphereFault && UNUSABLE_CHANGE_ID_FAULTS.has(err.fault)) {
          throw invalid(
            `vSphere rejected change id ${changeId} of disk ${disk.key} (${err.fault}${err.faultString ? `: ${err.faultString}` : ''})`,
            err,
          );
        }
        throw err;
      }
      const end = info.startOffset + info.length;
      if (info.startOffset > pos || end <= pos) {
        throw new RnodeError(
          'RNODE_VSPHERE_PROTOCOL',
          `QueryChangedDiskAreas answered for [${info.startOffset}, ${end}) when asked from ${pos}; cannot page through the disk`,
        );
      }
      for (const a of info.changedArea) {
        const start = Math.max(a.start, pos, pending ? pending.offset + pending.length : 0);
        const stop = Math.min(a.start + a.length, this.size);
        if (stop <= start) continue;
        if (pending && pending.offset + pending.length === start) {
          pending.length = stop - pending.offset;
        } else {
          if (pending) yield pending;
          pending = { offset: start, length: stop - start };
        }
      }
      pos = end;
    }
    if (pending) yield pending;
  }

  async read(offset: number, buf: Buffer, length: number): Promise<number> {
    try {
      return await this.#ctx.vddk.read(buf, offset, length);
    } catch (err) {
      if (err instanceof VddkError) {
        throw new VddkError(
          err.code,
          `reading disk ${this.deviceKey} of VM ${this.#ctx.vm} through VDDK (${this.transportMode || 'unknown transport'}) failed at offset ${offset}: ` +
            `${err.vddkText}; check the connection to the ESXi host and run again`,
          { op: err.op, vddkText: err.vddkText, vixError: err.vixError, vixCode: err.vixCode },
        );
      }
      throw err;
    }
  }

  /** Adds work for close() to do after the disk is closed (a vddk:// source ends its snapshot and session). */
  afterClose(fn: () => Promise<void>): void {
    const prev = this.#onClose;
    this.#onClose = prev
      ? async () => {
          try {
            await prev();
          } finally {
            await fn();
          }
        }
      : fn;
  }

  /** Closes the VDDK handle only; what owns the snapshot calls this. Idempotent. */
  release(): Promise<void> {
    return this.#ctx.vddk.close();
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      await this.release();
    } finally {
      await this.#onClose?.();
    }
  }
}

function invalid(message: string, cause?: unknown): RnodeError {
  return new RnodeError(ErrorCodes.CHANGE_MARKER_INVALID, `${message}; reading all allocated areas instead`, cause === undefined ? {} : { cause });
}
