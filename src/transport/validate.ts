// What the receiving node checks before it stores an object a peer sent: the key must name one of the
// object kinds of src/format/layout.ts, and the bytes must be a valid object of that kind. A chunk is
// checked in full (header, key match, lengths, payload xxh64, decode, plaintext xxh64) on the codec workers;
// an encrypted chunk, which this node holds no key for, by its header and the xxh64 of its stored bytes.
import { ErrorCodes, RnodeError, isRnodeError } from '../errors.js';
import { CHUNK_HEADER_BYTES, ChunkFlag, decodeChunkHeader, type ChunkHeader } from '../format/chunk.js';
import { Codec, isKnownCodec } from '../format/codecs.js';
import { layout } from '../format/layout.js';
import { EnvelopeKind, isEnvelope } from '../repository/envelope.js';
import { classify } from '../repository/names.js';
import { PACK_TAIL_BYTES, trailerPlace } from '../repository/pack.js';
import { decodeManifest } from '../format/manifest.js';
import { decodeSegment } from '../format/table.js';
import { copyBytes } from '../native/index.js';
import { BufferPool } from '../pipeline/buffer-pool.js';
import { newReadSlot, storedPayloadDigest, type ReadSlot } from '../pipeline/chunk-codec.js';
import { SEAL_OVERHEAD } from '../format/seal.js';
import { codecWorkers } from '../pipeline/codec-workers.js';
import { MIN_CHUNK_SIZE } from '../pipeline/grid.js';
import type { ObjectStore } from '../store/types.js';
import { TransportErrorCodes } from './errors.js';
import { FrameFlag } from './frame.js';

const DISK = '[A-Za-z0-9][A-Za-z0-9._-]{0,127}';
const KINDS = [
  { kind: 'manifest', re: new RegExp(`^disks/(${DISK})/points/(\\d{10})\\.json$`) },
  { kind: 'segment', re: new RegExp(`^disks/(${DISK})/tables/(\\d{10})/g\\d{4}-\\d{8}$`) },
  { kind: 'chunk', re: new RegExp(`^disks/(${DISK})/chunks/(\\d{10})/(\\d{12})$`) },
  { kind: 'pending', re: new RegExp(`^disks/(${DISK})/pending/(\\d{10})\\.json$`) },
  { kind: 'lease', re: new RegExp(`^disks/(${DISK})/lease\\.json$`) },
  { kind: 'marker', re: new RegExp(`^disks/(${DISK})/encryption\\.json$`) },
  // A VM's objects (vmLayout): for these, KeyInfo.disk holds the VM id.
  { kind: 'vm-point', re: new RegExp(`^vms/(${DISK})/points/(\\d{10})\\.json$`) },
  { kind: 'vm-partial', re: new RegExp(`^vms/(${DISK})/partial/(\\d{10})-\\d{15}\\.json$`) },
  { kind: 'vm-access', re: new RegExp(`^vms/(${DISK})/access\\.json$`) },
] as const;

/** Repository v2 objects (src/repository/names.ts): KeyInfo.disk holds the domain's disk name, or the domain. */
type R2Kind = 'r2-config' | 'r2-pack' | 'r2-index' | 'r2-manifest' | 'r2-table' | 'r2-pending' | 'r2-prune';
export type ObjectKind = (typeof KINDS)[number]['kind'] | R2Kind;

const R2_ENVELOPE: Record<string, number> = {
  config: EnvelopeKind.CONFIG, index: EnvelopeKind.INDEX, manifest: EnvelopeKind.MANIFEST, table: EnvelopeKind.TABLE,
  pending: EnvelopeKind.PENDING, prune: EnvelopeKind.PRUNE_MARKS,
};

function classifyR2(key: string): KeyInfo | undefined {
  const h = classify(key);
  if (!h || !('domain' in h)) return undefined;
  return { kind: `r2-${h.kind}` as R2Kind, disk: 'dname' in h ? h.dname : h.domain, ...('point' in h ? { seq: h.point } : {}) };
}

/**
 * Structure only (the receiving node may hold no key, and sealed objects cannot be read without one): an envelope of
 * the kind its key names, or a pack whose tail and trailer length are consistent. Full checks of v2 objects over
 * the link come with the v2 transport.
 */
function checkR2Structure(p: PutCheck, k: KeyInfo): void {
  const kind = k.kind.slice(3);
  if (kind === 'pack') {
    trailerPlace(p.data.subarray(Math.max(0, p.data.length - PACK_TAIL_BYTES)), p.data.length, p.key);
    return;
  }
  if (!isEnvelope(p.data) || p.data.readUInt8(5) !== R2_ENVELOPE[kind]) throw new Error(`not a ${kind} metadata envelope`);
}

export interface KeyInfo { kind: ObjectKind; disk: string; seq?: number; index?: number }

/** The kind of object a key names, or undefined for a key no rnode writer produces. */
export function classifyKey(key: string): KeyInfo | undefined {
  for (const { kind, re } of KINDS) {
    const m = re.exec(key);
    if (!m) continue;
    if (m[1].split('.').some((s) => s === '')) continue; // ".." inside a disk id is valid; keep it a plain segment
    return { kind, disk: m[1], ...(m[2] ? { seq: Number(m[2]) } : {}), ...(m[3] ? { index: Number(m[3]) } : {}) };
  }
  return undefined;
}

export interface PutCheck {
  key: string;
  data: Buffer;
  /** FrameFlag bits of the PUT frame. */
  flags: number;
  /** The sender's disk offset for a chunk frame (informational). */
  diskOffset: number | null;
  /** The sender's plaintext xxh64 for a chunk frame (must match the chunk header). */
  plainXxh64: bigint;
}

function rejected(message: string, details: Record<string, unknown>, cause?: unknown): RnodeError {
  return new RnodeError(TransportErrorCodes.REJECTED, message, { details, cause });
}

/** Checks objects against their kind; one per receiving node (its decode slots are shared by all sessions). */
export class ObjectValidator {
  private readonly pools = new Map<number, BufferPool<ReadSlot>>();

  constructor(private readonly store: ObjectStore, private readonly slotsPerSize = 4) {}

  /** Throws RNODE_TRANSPORT_REJECTED (details name the key, and for chunks the index and disk offset). */
  async checkPut(p: PutCheck): Promise<KeyInfo> {
    const k = classifyKey(p.key) ?? classifyR2(p.key);
    if (!k) {
      throw rejected(`key ${JSON.stringify(p.key.slice(0, 200))} is not an rnode object (points, tables, chunks, pending or lease of a disk); it was not stored`,
        { key: p.key });
    }
    try {
      switch (k.kind) {
        case 'chunk': await this.checkChunk(p, k); break;
        case 'segment': decodeSegment(p.data, p.key, 'any'); break;
        case 'manifest': await this.checkManifest(p, k); break;
        case 'pending': checkPending(p.data, p.key, k); break;
        case 'lease':
          // The node owns its leases: a peer takes one with a lease message, and a written lease could lock a disk.
          throw rejected(`${p.key}: leases are not written over the peer link; the receiving node writes them (lease messages, docs/wire-protocol.md); it was not stored`,
            { key: p.key, kind: 'lease' });
        case 'marker': checkJsonObject(p.data, p.key); break;
        case 'vm-point': await this.checkVmPoint(p, k); break;
        case 'vm-partial': if (checkJsonObject(p.data, p.key).format !== 'rnode-vm-partial') throw new Error('not a partial VM run record'); break;
        case 'vm-access': checkJsonObject(p.data, p.key); break;
        default: checkR2Structure(p, k);
      }
    } catch (err) {
      if (isRnodeError(err, TransportErrorCodes.REJECTED)) throw err;
      const why = err instanceof Error ? err.message : String(err);
      throw rejected(`${k.kind} ${p.key} was rejected: ${why}; it was not stored`, { key: p.key, kind: k.kind }, err);
    }
    return k;
  }

  /** Whether a delete is allowed: only the writer's own scratch objects; points and chunks are pruned on the node. */
  checkDelete(key: string): void {
    const k = classifyKey(key) ?? classifyR2(key);
    if (!k || (k.kind !== 'pending' && k.kind !== 'vm-access' && k.kind !== 'r2-pending')) {
      throw rejected(`deleting ${JSON.stringify(key.slice(0, 200))} over the peer link is not allowed (only pending checkpoints and VM access markers; leases are released with a lease message); run "rnode prune" on the receiving node`,
        { key });
    }
  }

  private async checkChunk(p: PutCheck, k: KeyInfo): Promise<void> {
    let h: ChunkHeader | undefined;
    const offsetOf = () => p.diskOffset ?? (h ? k.index! * h.plainLength : null);
    const fail = (why: string, cause?: unknown) => {
      const off = offsetOf();
      return rejected(`chunk ${k.index} of disk ${k.disk} point ${k.seq}${off !== null ? ` at disk offset ${off}` : ''} was rejected: ${why}; it was not stored`,
        { key: p.key, kind: 'chunk', disk: k.disk, point: k.seq, index: k.index, offset: off }, cause);
    };
    if ((p.flags & FrameFlag.CHUNK) === 0) throw fail('the frame is not marked as a chunk');
    try {
      h = decodeChunkHeader(p.data);
    } catch (err) {
      throw fail((err as Error).message, err);
    }
    if (h.index !== k.index || h.writer !== k.seq) throw fail(`its header names chunk ${h.index} of point ${h.writer}`);
    if (p.data.length !== CHUNK_HEADER_BYTES + h.payloadLength) {
      throw fail(`object is ${p.data.length} bytes, its header says ${CHUNK_HEADER_BYTES + h.payloadLength}`);
    }
    if (!isKnownCodec(h.codec)) throw fail(`unknown codec id ${h.codec} (is the sender a newer rnode? upgrade this node)`);
    const encrypted = (h.flags & ChunkFlag.ENCRYPTED) !== 0;
    if (h.codec === Codec.NONE && h.payloadLength !== h.plainLength + (encrypted ? SEAL_OVERHEAD : 0)) {
      throw fail('uncompressed payload length differs from the plaintext length');
    }
    if (((p.flags & FrameFlag.COMPRESSED) !== 0) !== (h.codec !== Codec.NONE)) throw fail('frame compressed flag disagrees with the chunk codec');
    if (((p.flags & FrameFlag.ENCRYPTED) !== 0) !== encrypted) throw fail('frame encrypted flag disagrees with the chunk header');
    if (p.plainXxh64 !== h.plainXxh64) throw fail('frame plaintext xxh64 disagrees with the chunk header');
    const pool = this.pool(h.plainLength);
    const slot = await pool.acquire();
    try {
      if (p.data.length > slot.object.length) throw fail('payload is larger than the codec can produce for this chunk size');
      copyBytes(p.data, slot.object);
      const payload = slot.object.subarray(CHUNK_HEADER_BYTES, p.data.length);
      if (encrypted) {
        // Encrypted payloads cannot be decoded here (the node holds no key, and the header's plaintext digest is
        // keyed): the stored bytes are checked by the payload digest alone, still on a worker.
        if (await storedPayloadDigest(payload) !== h.payloadXxh64) throw fail('payload xxh64 mismatch');
        return;
      }
      let r;
      try {
        r = await codecWorkers().decode(payload, h.codec, h.plainLength, slot.plain);
      } catch (err) {
        throw fail(`payload does not decode: ${(err as Error).message}`, err);
      }
      if (r.payloadXxh64 !== h.payloadXxh64) throw fail('payload xxh64 mismatch');
      if (r.xxh64 !== h.plainXxh64) throw fail('plaintext xxh64 mismatch');
    } finally {
      pool.release(slot);
    }
  }

  private async checkManifest(p: PutCheck, k: KeyInfo): Promise<void> {
    if ((p.flags & FrameFlag.IF_NONE_MATCH) === 0) {
      throw rejected(`point manifest ${p.key} must be committed with if-none-match (points are immutable over the peer link; run "rnode prune" on the receiving node)`,
        { key: p.key, kind: 'manifest' });
    }
    const m = decodeManifest(p.data, p.key);
    if (m.disk !== k.disk || m.point !== k.seq) throw new Error(`it names point ${m.point} of disk ${m.disk}`);
    const prefix = layout.diskPrefix(k.disk);
    for (const s of m.table.segments) {
      if (!s || typeof s.key !== 'string' || !s.key.startsWith(prefix) || classifyKey(s.key)?.kind !== 'segment') {
        throw new Error(`it references ${JSON.stringify(String(s?.key)).slice(0, 200)}, which is not a table segment of disk ${k.disk}`);
      }
    }
    // Every referenced segment must already be durable here: a point is committed only over complete tables.
    const limit = 16;
    for (let i = 0; i < m.table.segments.length; i += limit) {
      await Promise.all(m.table.segments.slice(i, i + limit).map(async (s) => {
        try {
          await this.store.head(s.key);
        } catch (err) {
          if (isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) throw new Error(`its table segment ${s.key} is not on this node`);
          throw err;
        }
      }));
    }
  }

  /** A VM point is immutable and commits a VM: every disk point it names must already be here. */
  private async checkVmPoint(p: PutCheck, k: KeyInfo): Promise<void> {
    if ((p.flags & FrameFlag.IF_NONE_MATCH) === 0) throw new Error('a VM point must be committed with if-none-match');
    const v = checkJsonObject(p.data, p.key);
    if (v.format !== 'rnode-vm-point' || v.vm !== k.disk || v.seq !== k.seq || !Array.isArray(v.disks)) throw new Error(`it is not VM point ${k.seq} of ${k.disk}`);
    for (const d of v.disks as Array<{ disk?: unknown; point?: unknown }>) {
      const key = typeof d?.disk === 'string' && Number.isSafeInteger(d.point) ? layout.point(d.disk, d.point as number) : undefined;
      if (!key || classifyKey(key)?.kind !== 'manifest') throw new Error('it names a disk point that is not one');
      try {
        await this.store.head(key);
      } catch (err) {
        if (isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) throw new Error(`its disk point ${key} is not on this node`);
        throw err;
      }
    }
  }

  private pool(plainLength: number): BufferPool<ReadSlot> {
    let size = MIN_CHUNK_SIZE;
    while (size < plainLength) size *= 2;
    let pool = this.pools.get(size);
    if (!pool) this.pools.set(size, pool = new BufferPool(this.slotsPerSize, () => newReadSlot(size)));
    return pool;
  }
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

function checkPending(data: Buffer, key: string, k: KeyInfo): void {
  const ck = checkJsonObject(data, key);
  const okInt = (v: unknown) => Number.isSafeInteger(v) && (v as number) >= 0;
  if (ck.format !== 'rnode-pending' || ck.point !== k.seq || !(ck.parent === null || okInt(ck.parent)) ||
      !okInt(ck.diskSize) || !okInt(ck.chunkSize) || !okInt(ck.records) || !okInt(ck.nextIndex) ||
      !Array.isArray(ck.segments) || ck.segments.some((s: any) => !s || typeof s.key !== 'string' || classifyKey(s.key)?.kind !== 'segment')) {
    throw new Error('not a pending checkpoint of this point');
  }
}
