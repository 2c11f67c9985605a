// What the receiving node checks before it stores an object a peer sent: the key must name one of the object
// kinds of src/repository/names.ts (classify), and the bytes must be a valid object of that kind. A legacy chunk is
// checked in full (header, key match, lengths, payload xxh64, decode, plaintext xxh64) on the codec workers; an
// encrypted chunk, which this node holds no key for, by its header and the xxh64 of its stored bytes. Repository v2
// objects are checked by validate-r2.ts.
import { ErrorCodes, RnodeError, isRnodeError } from '../errors.js';
import { ChunkFlag, decodeChunkHeader, type ChunkHeader } from '../format/chunk.js';
import { Codec } from '../format/codecs.js';
import { decodeManifest } from '../format/manifest.js';
import { decodeSegment } from '../format/table.js';
import { copyBytes } from '../native/index.js';
import { BufferPool } from '../pipeline/buffer-pool.js';
import { checkArrivingChunkInto, checkStoredChunkInto, newReadSlot, type ReadSlot } from '../pipeline/chunk-codec.js';
import { codecWorkers } from '../pipeline/codec-workers.js';
import { MIN_CHUNK_SIZE } from '../pipeline/grid.js';
import { classify, layout, PLAIN_DOMAIN, r2, type KeyHandle } from '../repository/names.js';
import { decodeClaim, readClaim } from '../repository/claims.js';
import type { BlobEntry } from '../repository/pack.js';
import type { ObjectStore } from '../store/types.js';
import { TransportErrorCodes } from '../transport/errors.js';
import { FrameFlag } from '../transport/frame.js';
import type { ObjectChecks, PutCheck, PutVerdict } from '../transport/object-checks.js';
import { checkR2Put, type DecodedBlob } from './validate-r2.js';

export type KeyInfo = KeyHandle;
export type ObjectKind = KeyHandle['kind'];

/**
 * The kind of object a key names (names.ts's classify), or undefined for a key no rnode writer produces. A disk or
 * VM id with an empty dot-separated part ("a..b", "a.") is refused too: it is a plain path segment everywhere.
 */
export function classifyKey(key: string): KeyInfo | undefined {
  const h = classify(key);
  if (!h) return undefined;
  const id = 'disk' in h ? h.disk : 'vm' in h ? h.vm : 'dname' in h ? h.dname : undefined;
  if (id !== undefined && id.split('.').some((s) => s === '')) return undefined;
  return h;
}

/** How a kind is named in a refusal. */
const KIND_WORDS: Record<ObjectKind, string> = {
  config: 'repository config',
  pack: 'pack',
  index: 'index',
  manifest: 'point manifest',
  table: 'table segment',
  pending: 'pending checkpoint',
  prune: 'prune record',
  claim: 'disk claim',
  'legacy-manifest': 'point manifest',
  'legacy-table': 'table segment',
  'legacy-chunk': 'chunk',
  'legacy-pending': 'pending checkpoint',
  lease: 'lease',
  'encryption-marker': 'encryption marker',
  'vm-point': 'VM point',
  'vm-partial': 'partial VM run record',
  'vm-access': 'VM access marker',
};

/**
 * The kinds their writers rewrite in place: checkpoints, prune's marks, a VM run's access marker. Every other object
 * is written once, and a peer never replaces it (the node stores it create-only).
 */
const REWRITTEN_KINDS: ReadonlySet<ObjectKind> = new Set<ObjectKind>(['pending', 'legacy-pending', 'prune', 'vm-access']);

/** How long an unclaimed disk's legacy chunks are taken without looking for its claim again. */
const UNCLAIMED_RECHECK_MS = 5000;
const MAX_REMEMBERED_DISKS = 10_000;

function rejected(message: string, details: Record<string, unknown>, cause?: unknown): RnodeError {
  return new RnodeError(TransportErrorCodes.REJECTED, message, { details, cause });
}

/** Checks objects against their kind; one per receiving node (its decode slots are shared by all sessions). */
export class ObjectValidator implements ObjectChecks {
  private readonly pools = new Map<number, BufferPool<ReadSlot>>();
  /** Disks with a claim, and when an unclaimed disk's claim was last looked up (hasClaim). */
  private readonly claimed = new Set<string>();
  private readonly unclaimedAt = new Map<string, number>();

  constructor(
    private readonly store: ObjectStore,
    private readonly slotsPerSize = 4,
  ) {
    // The codec workers start with the node, not at the first pack it checks: a fresh node's first packs waited for
    // them to load, and the sender's pipeline waited for those packs' acks.
    codecWorkers();
  }

  /**
   * How the object may be stored (PutVerdict: written once, or rewritten); throws RNODE_TRANSPORT_REJECTED (details
   * name the key, and for chunks the index and disk offset).
   */
  async checkPut(p: PutCheck): Promise<KeyInfo & PutVerdict> {
    const k = await this.checkObject(p);
    const replaceable = this.replaceable(k);
    return { ...k, createOnly: !REWRITTEN_KINDS.has(k.kind), ...(replaceable ? { replaceable } : {}) };
  }

  /**
   * For a point's own object (a table segment, a legacy chunk): it may be replaced only while no point from its number
   * on is committed. A run cut after writing it and before its checkpoint writes it again when it resumes (sealed
   * ones with new nonces); once a point is committed, what it and the points after it use never changes.
   */
  private replaceable(k: KeyInfo): (() => Promise<boolean>) | undefined {
    if (k.kind === 'table') return () => this.noPointFrom(r2.pointsPrefix(k.domain, k.dname), k.point);
    if (k.kind === 'legacy-table') return () => this.noPointFrom(layout.pointsPrefix(k.disk), k.point);
    if (k.kind === 'legacy-chunk') return () => this.noPointFrom(layout.pointsPrefix(k.disk), k.writer);
    return undefined;
  }

  private async noPointFrom(pointsPrefix: string, point: number): Promise<boolean> {
    for await (const o of this.store.list(pointsPrefix)) {
      const h = classifyKey(o.key);
      if ((h?.kind === 'manifest' || h?.kind === 'legacy-manifest') && h.point >= point) return false;
    }
    return true;
  }

  private async checkObject(p: PutCheck): Promise<KeyInfo> {
    const k = classifyKey(p.key);
    if (!k) {
      throw rejected(
        `key ${JSON.stringify(p.key.slice(0, 200))} is not an rnode object (points, tables, chunks, pending or lease of a disk, or a v2 repository object); it was not stored`,
        { key: p.key },
      );
    }
    try {
      switch (k.kind) {
        case 'config':
        case 'pack':
        case 'index':
        case 'manifest':
        case 'table':
        case 'pending':
        case 'prune':
          await checkR2Put(p, k, { store: this.store, decodeBlobs: (pack, blobs) => this.decodeBlobs(pack, blobs) });
          break;
        case 'claim':
          if ((p.flags & FrameFlag.IF_NONE_MATCH) === 0) throw new Error('a disk claim is written once, with if-none-match');
          decodeClaim(p.data);
          break;
        case 'legacy-chunk':
          await this.refuseLegacyPointOfV2Disk(p.key, k.disk, { fresh: false });
          await this.checkChunk(p, k);
          break;
        case 'legacy-table':
          await this.refuseLegacyPointOfV2Disk(p.key, k.disk);
          decodeSegment(p.data, p.key, 'any');
          break;
        case 'legacy-manifest':
          await this.refuseLegacyPointOfV2Disk(p.key, k.disk);
          await this.checkManifest(p, k);
          break;
        case 'legacy-pending':
          await this.refuseLegacyPointOfV2Disk(p.key, k.disk);
          checkPending(p.data, p.key, k);
          break;
        case 'lease':
          // The node owns its leases: a peer takes one with a lease message, and a written lease could lock a disk.
          throw rejected(
            `${p.key}: leases are not written over the peer link; the receiving node writes them (lease messages, docs/wire-protocol.md); it was not stored`,
            { key: p.key, kind: 'lease' },
          );
        case 'encryption-marker':
          checkJsonObject(p.data, p.key);
          break;
        case 'vm-point':
          await this.checkVmPoint(p, k);
          break;
        case 'vm-partial':
          if (checkJsonObject(p.data, p.key).format !== 'rnode-vm-partial') throw new Error('not a partial VM run record');
          break;
        case 'vm-access':
          checkJsonObject(p.data, p.key);
          break;
      }
    } catch (err) {
      if (isRnodeError(err, TransportErrorCodes.REJECTED)) throw err;
      const why = err instanceof Error ? err.message : String(err);
      throw rejected(`${KIND_WORDS[k.kind]} ${p.key} was rejected: ${why}; it was not stored`, { key: p.key, kind: k.kind }, err);
    }
    return k;
  }

  kindOf(key: string): ObjectKind | undefined {
    return classifyKey(key)?.kind;
  }

  /** Whether a delete is allowed: only the writer's own scratch objects; points and chunks are pruned on the node. */
  checkDelete(key: string): void {
    const k = classifyKey(key);
    if (!k || (k.kind !== 'legacy-pending' && k.kind !== 'pending' && k.kind !== 'vm-access')) {
      throw rejected(
        `deleting ${JSON.stringify(key.slice(0, 200))} over the peer link is not allowed (only pending checkpoints and VM access markers; leases are released with a lease message); run "rnode prune" on the receiving node`,
        { key },
      );
    }
  }

  /**
   * A legacy chunk object: the frame's labels must agree with its header (only the node has both), then the chunk is
   * checked by the same code recover, verify and export run (src/pipeline/chunk-codec.ts) against the chunk its key
   * names; an encrypted one (the node holds no key) by its header and stored payload digest, as verify does.
   */
  private async checkChunk(p: PutCheck, k: Extract<KeyInfo, { kind: 'legacy-chunk' }>): Promise<void> {
    let h: ChunkHeader | undefined;
    const offsetOf = () => p.diskOffset ?? (h ? k.index! * h.plainLength : null);
    const fail = (why: string, cause?: unknown) => {
      const off = offsetOf();
      return rejected(
        `chunk ${k.index} of disk ${k.disk} point ${k.writer}${off !== null ? ` at disk offset ${off}` : ''} was rejected: ${why}; it was not stored`,
        { key: p.key, kind: 'chunk', disk: k.disk, point: k.writer, index: k.index, offset: off },
        cause,
      );
    };
    if ((p.flags & FrameFlag.CHUNK) === 0) throw fail('the frame is not marked as a chunk (its writer labels it: PutOptions.chunk)');
    try {
      h = decodeChunkHeader(p.data);
    } catch (err) {
      throw fail((err as Error).message, err);
    }
    const encrypted = (h.flags & ChunkFlag.ENCRYPTED) !== 0;
    if (((p.flags & FrameFlag.COMPRESSED) !== 0) !== (h.codec !== Codec.NONE)) throw fail('frame compressed flag disagrees with the chunk codec');
    if (((p.flags & FrameFlag.ENCRYPTED) !== 0) !== encrypted) throw fail('frame encrypted flag disagrees with the chunk header');
    if (p.plainXxh64 !== h.plainXxh64) throw fail('frame plaintext xxh64 disagrees with the chunk header');
    const pool = this.pool(h.plainLength);
    const slot = await pool.acquire();
    try {
      if (p.data.length > slot.object.length) throw fail('payload is larger than the codec can produce for this chunk size');
      copyBytes(p.data, slot.object);
      const expect = { index: k.index!, writer: k.writer!, plainLength: h.plainLength, xxh64: p.plainXxh64 };
      const where = `${k.index} of point ${k.writer}`;
      if (encrypted) await checkStoredChunkInto(slot, p.data.length, expect, where);
      else await checkArrivingChunkInto(slot, p.data.length, expect, where);
    } catch (err) {
      if (isRnodeError(err, TransportErrorCodes.REJECTED)) throw err;
      if (isRnodeError(err, ErrorCodes.CHUNK_CORRUPT) || isRnodeError(err, ErrorCodes.FORMAT_CODEC) || isRnodeError(err, ErrorCodes.FORMAT_VERSION)) {
        throw fail(err.message, err);
      }
      throw err;
    } finally {
      pool.release(slot);
    }
  }

  /**
   * A legacy point or checkpoint for a disk that has v2 points (or a v2 run under way) comes from an rnode older than
   * repository v2, which sees only the legacy points: stored, it would number a point after them (maybe a v2 point's
   * number), or start a second disk of the same id beside an encrypted one. Every disk with v2 points has a claim,
   * written before its first commit, whatever its key; its name needs no key.
   */
  private async refuseLegacyPointOfV2Disk(key: string, disk: string, opts = { fresh: true }): Promise<void> {
    if (!(await this.hasClaim(disk, opts.fresh))) return;
    throw rejected(
      `${key} is a legacy point object from an rnode older than repository v2, but disk ${disk} is in the v2 format on ` +
        `this node: upgrade rnode on the sending node and replicate again; it was not stored`,
      { key, kind: 'legacy-point', disk },
    );
  }

  /**
   * Whether the disk has a claim. Claims are never deleted, so a claimed disk is remembered; an unclaimed one is
   * looked up again after UNCLAIMED_RECHECK_MS, or at once when `fresh` (checkpoints and manifests, which commit):
   * an old sender's chunks cost no extra read each, and none of its points commits past a claim.
   */
  private async hasClaim(disk: string, fresh: boolean): Promise<boolean> {
    if (this.claimed.has(disk)) return true;
    const lookedUp = this.unclaimedAt.get(disk);
    if (!fresh && lookedUp !== undefined && performance.now() - lookedUp < UNCLAIMED_RECHECK_MS) return false;
    const claimed = (await readClaim(this.store, disk)) !== undefined;
    // Both are bounded: forgetting only costs a lookup.
    for (const m of [this.claimed, this.unclaimedAt]) if (m.size >= MAX_REMEMBERED_DISKS) m.clear();
    if (claimed) this.claimed.add(disk);
    else this.unclaimedAt.set(disk, performance.now());
    return claimed;
  }

  private async checkManifest(p: PutCheck, k: Extract<KeyInfo, { kind: 'legacy-manifest' }>): Promise<void> {
    if ((p.flags & FrameFlag.IF_NONE_MATCH) === 0) {
      throw rejected(
        `point manifest ${p.key} must be committed with if-none-match (points are immutable over the peer link; run "rnode prune" on the receiving node)`,
        { key: p.key, kind: 'manifest' },
      );
    }
    const m = decodeManifest(p.data, p.key);
    if (m.disk !== k.disk || m.point !== k.point) throw new Error(`it names point ${m.point} of disk ${m.disk}`);
    for (const s of m.table.segments) {
      const h = s && typeof s.key === 'string' ? classifyKey(s.key) : undefined;
      if (h?.kind !== 'legacy-table' || h.disk !== k.disk) {
        throw new Error(`it references ${JSON.stringify(String(s?.key)).slice(0, 200)}, which is not a table segment of disk ${k.disk}`);
      }
    }
    // Every referenced segment must already be durable here: a point is committed only over complete tables.
    const limit = 16;
    for (let i = 0; i < m.table.segments.length; i += limit) {
      await Promise.all(
        m.table.segments.slice(i, i + limit).map(async (s) => {
          try {
            await this.store.head(s.key);
          } catch (err) {
            if (isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) throw new Error(`its table segment ${s.key} is not on this node`);
            throw err;
          }
        }),
      );
    }
  }

  /** A VM point is immutable and commits a VM: every disk point it names must already be here. */
  /** Whether the store holds an encrypted v2 repository (whose disk points have keyed names). */
  private async hasEncryptedDomain(): Promise<boolean> {
    for await (const o of this.store.list(r2.prefix)) if (!o.key.startsWith(`${r2.prefix}${PLAIN_DOMAIN}/`)) return true;
    return false;
  }

  private async checkVmPoint(p: PutCheck, k: Extract<KeyInfo, { kind: 'vm-point' }>): Promise<void> {
    if ((p.flags & FrameFlag.IF_NONE_MATCH) === 0) throw new Error('a VM point must be committed with if-none-match');
    const v = checkJsonObject(p.data, p.key);
    if (v.format !== 'rnode-vm-point' || v.vm !== k.vm || v.seq !== k.point || !Array.isArray(v.disks))
      throw new Error(`it is not VM point ${k.point} of ${k.vm}`);
    for (const d of v.disks as Array<{ disk?: unknown; point?: unknown }>) {
      const key = typeof d?.disk === 'string' && Number.isSafeInteger(d.point) ? layout.point(d.disk, d.point as number) : undefined;
      if (!key || classifyKey(key)?.kind !== 'legacy-manifest') throw new Error('it names a disk point that is not one');
      try {
        // A legacy point, or a v2 point of the plain domain. An encrypted disk's v2 point has a keyed name this node
        // cannot compute without the key: its manifest was checked when it was put.
        await this.store.head(key).catch((err) => {
          if (!isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) throw err;
          return this.store.head(r2.point(PLAIN_DOMAIN, d.disk as string, d.point as number)).catch(async (err2) => {
            if (isRnodeError(err2, ErrorCodes.STORE_NOT_FOUND) && (await this.hasEncryptedDomain())) return undefined;
            throw err2;
          });
        });
      } catch (err) {
        if (isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) throw new Error(`its disk point ${key} is not on this node`);
        throw err;
      }
    }
  }

  /**
   * Decodes a plain pack's blobs on the codec workers. A pack in shared memory (as the node receives them) is read in
   * place, in one trip per worker, each taking a contiguous share of the blobs: a trip per blob cost more than the
   * decoding (a message with two SharedArrayBuffers each way, and the garbage they leave). Any other pack: blob by blob.
   */
  private async decodeBlobs(pack: Buffer, blobs: BlobEntry[]): Promise<DecodedBlob[]> {
    const out: DecodedBlob[] = blobs.map(() => ({ error: 'not checked (a blob before it failed)' }));
    if (!(pack.buffer instanceof SharedArrayBuffer)) {
      await Promise.all(
        blobs.map(async (e, i) => {
          try {
            out[i] = await this.decodeBlob(pack.subarray(e.offset, e.offset + e.length), e.codec, e.plainLength, e.id);
          } catch (err) {
            out[i] = { error: (err as Error).message };
          }
        }),
      );
      return out;
    }
    await Promise.allSettled(
      shares(blobs, codecWorkers().size).map(async ({ from, to }) => {
        const share = blobs.slice(from, to);
        const pool = this.pool(Math.max(...share.map((e) => e.plainLength)));
        const slot = await pool.acquire();
        try {
          const r = await codecWorkers().decodeBlobs(pack, share, slot.plain, PLAIN_DOMAIN);
          r.results.forEach((d, i) => {
            out[from + i] = d;
          });
          if (r.failed !== undefined) out[from + r.failed] = { error: r.error ?? 'does not decode' };
        } catch (err) {
          out[from] = { error: (err as Error).message };
        } finally {
          pool.release(slot);
        }
      }),
    );
    return out;
  }

  /**
   * Decodes one plain blob of a pack on the codec workers; returns the id of its plaintext and its payload xxh64 as
   * computed, or throws when it does not decode. A blob in shared memory (an assembled pack) is read in place.
   */
  private async decodeBlob(blob: Buffer, codec: number, plainLength: number, chunkId: Buffer): Promise<{ id: Buffer; payloadXxh64: bigint }> {
    const slot = await this.pool(plainLength).acquire();
    try {
      if (blob.length > slot.object.length) throw new Error(`a blob of ${blob.length} bytes is larger than the codec makes for ${plainLength} bytes`);
      let input: Uint8Array = blob;
      if (!(blob.buffer instanceof SharedArrayBuffer)) {
        copyBytes(blob, slot.object);
        input = slot.object.subarray(0, blob.length);
      }
      return await codecWorkers().decodeBlob(input, slot.plain, { codec, plainLength, chunkId, idName: PLAIN_DOMAIN });
    } finally {
      this.pool(plainLength).release(slot);
    }
  }

  private pool(plainLength: number): BufferPool<ReadSlot> {
    let size = MIN_CHUNK_SIZE;
    while (size < plainLength) size *= 2;
    let pool = this.pools.get(size);
    if (!pool) this.pools.set(size, (pool = new BufferPool(this.slotsPerSize, () => newReadSlot(size))));
    return pool;
  }
}

/** Up to n contiguous shares of blobs, of about equal plaintext bytes (each a worker's trip). */
function shares(blobs: BlobEntry[], n: number): Array<{ from: number; to: number }> {
  const total = blobs.reduce((s, e) => s + e.plainLength, 0);
  const out: Array<{ from: number; to: number }> = [];
  let from = 0;
  let bytes = 0;
  for (let i = 0; i < blobs.length; i++) {
    bytes += blobs[i].plainLength;
    if (bytes >= (total * (out.length + 1)) / n || i === blobs.length - 1) {
      out.push({ from, to: i + 1 });
      from = i + 1;
    }
  }
  return out;
}

function checkJsonObject(data: Buffer, key: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(data.toString('utf8'));
  } catch {
    throw new Error('not valid JSON');
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error(`${key} is not a JSON object`);
  return v as Record<string, unknown>;
}

function checkPending(data: Buffer, key: string, k: Extract<KeyInfo, { kind: 'legacy-pending' }>): void {
  const ck = checkJsonObject(data, key);
  const okInt = (v: unknown) => Number.isSafeInteger(v) && (v as number) >= 0;
  if (
    ck.format !== 'rnode-pending' ||
    ck.point !== k.point ||
    !(ck.parent === null || okInt(ck.parent)) ||
    !okInt(ck.diskSize) ||
    !okInt(ck.chunkSize) ||
    !okInt(ck.records) ||
    !okInt(ck.nextIndex) ||
    !Array.isArray(ck.segments) ||
    ck.segments.some((s: any) => !s || typeof s.key !== 'string' || classifyKey(s.key)?.kind !== 'legacy-table')
  ) {
    throw new Error('not a pending checkpoint of this point');
  }
}
