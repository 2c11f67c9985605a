// v2 points written and read with the format modules alone (packs, index objects, tables v3, manifests v4, prune
// marks), as a replicate does, so prune, stats and check can be tested on real v2 repositories; the writer follows
// the rules prune relies on: never reuse a blob of a blocked pack, and refuse to commit when a pack the point reused
// or wrote is blocked or gone (docs/prune.md).
import crypto from 'node:crypto';
import type { EncryptionKey } from '../../src/crypto/keys.js';
import { ErrorCodes, RnodeError, isRnodeError } from '../../src/errors.js';
import { Codec } from '../../src/format/codecs.js';
import { MANIFEST_FORMAT, type PointManifest } from '../../src/format/manifest.js';
import { TABLE_SEGMENT_RECORDS, type ChunkEntry } from '../../src/format/table.js';
import { Domain } from '../../src/repository/domain.js';
import { ChunkIndex, encodeIndex, type ChunkLocation } from '../../src/repository/index-file.js';
import { r2, type ObjectId } from '../../src/repository/names.js';
import { PackBuilder, newObjectId } from '../../src/repository/pack.js';
import { blobAad } from '../../src/format/seal.js';
import { encodeManifestV4, encodeTableV3, segmentDigest, v2Entry, encodePendingV2 } from '../../src/repository/point-format.js';
import { readPruneMarks } from '../../src/repository/prune-marks.js';
import { loadV2Chain } from '../../src/repository/points.js';
import { chainView } from '../../src/repository/view.js';
import type { ObjectStore } from '../../src/store/types.js';

export const CHUNK = 64 * 1024;

/** Changes of one point: chunk index -> its new plaintext (null: now zero). */
export type Changes = Map<number, Buffer | null>;

function sealBlob(key: EncryptionKey, id: Buffer, plain: Buffer): Buffer {
  const nonce = crypto.randomBytes(12);
  const c = crypto.createCipheriv('aes-256-gcm', key.subkeys().cipherKey, nonce, { authTagLength: 16 });
  c.setAAD(blobAad(id, Codec.NONE, plain.length));
  return Buffer.concat([nonce, c.update(plain), c.final(), c.getAuthTag()]);
}

export function openBlob(key: EncryptionKey | undefined, id: Buffer, blob: Buffer, plainLength: number): Buffer {
  if (!key) return blob;
  const d = crypto.createDecipheriv('aes-256-gcm', key.subkeys().cipherKey, blob.subarray(0, 12), { authTagLength: 16 });
  d.setAAD(blobAad(id, Codec.NONE, plainLength));
  d.setAuthTag(blob.subarray(blob.length - 16));
  return Buffer.concat([d.update(blob.subarray(12, blob.length - 16)), d.final()]);
}

/** A point being written: decisions made (reuse or new blob), packs put as they fill; commit() checks and commits. */
export class PendingPoint {
  readonly reused = new Set<ObjectId>();
  readonly written = new Set<ObjectId>();
  readonly entries: ChunkEntry[] = [];
  chunksDeduplicated = 0;
  private builder: PackBuilder | undefined;
  private locations: ChunkLocation[] = [];

  constructor(
    readonly store: ObjectStore,
    readonly domain: Domain,
    readonly disk: string,
    readonly seq: number,
    readonly parent: number | null,
    readonly diskSize: number,
    private readonly index: ChunkIndex,
    private readonly blocked: (p: ObjectId) => boolean,
    readonly packSize: number,
  ) {}

  async add(i: number, plain: Buffer | null): Promise<void> {
    if (plain === null) {
      this.entries.push(v2Entry(i, undefined, Math.min(CHUNK, this.diskSize - i * CHUNK), this.seq));
      return;
    }
    const id = this.domain.chunkId(plain);
    const reuse = this.index.lookup(id).find((l) => !this.blocked(l.packId));
    if (reuse) {
      if (!this.written.has(reuse.packId)) this.reused.add(reuse.packId);
      this.chunksDeduplicated++;
    } else {
      const blob = this.domain.key ? sealBlob(this.domain.key, id, plain) : plain;
      if (this.builder?.wouldOverflow(blob.length)) await this.flushPack();
      this.builder ??= new PackBuilder(this.domain.name, this.packSize, this.domain.key);
      const e = this.builder.add(blob, { id, plainLength: plain.length, codec: Codec.NONE });
      this.index.add({ packId: this.builder.id, entry: e });
    }
    this.entries.push(v2Entry(i, id, plain.length, this.seq));
  }

  private async flushPack(): Promise<void> {
    const b = this.builder;
    this.builder = undefined;
    if (!b || b.count === 0) return;
    await this.store.put(r2.pack(this.domain.name, b.id), b.finish());
    this.written.add(b.id);
    for (const e of b.entries) this.locations.push({ packId: b.id, entry: e });
  }

  /** Closes the open pack and puts its index, the table segment and the checkpoint (as a replicate's checkpoint). */
  async checkpoint(): Promise<void> {
    await this.flushPack();
    if (this.locations.length) {
      const indexId = newObjectId();
      await this.store.put(r2.index(this.domain.name, indexId), encodeIndex(this.domain, indexId, this.locations));
      this.locations = [];
    }
    const segs = await this.writeSegments(0);
    await this.store.put(
      r2.pending(this.domain.name, this.domain.dname(this.disk), this.seq),
      encodePendingV2(this.domain, this.disk, this.seq, {
        format: 'rnode-pending',
        disk: this.disk,
        point: this.seq,
        parent: this.parent,
        segments: segs,
      }),
    );
  }

  private async writeSegments(gen: number): Promise<PointManifest['table']['segments']> {
    const sorted = [...this.entries].sort((a, b) => a.index - b.index);
    const segs: PointManifest['table']['segments'] = [];
    for (let n = 0; n === 0 || n * TABLE_SEGMENT_RECORDS < sorted.length; n++) {
      const part = sorted.slice(n * TABLE_SEGMENT_RECORDS, (n + 1) * TABLE_SEGMENT_RECORDS);
      const bytes = encodeTableV3(this.domain, { disk: this.disk, point: this.seq, parent: this.parent, generation: gen, segment: n }, part);
      const key = r2.segment(this.domain.name, this.domain.dname(this.disk), this.seq, gen, n);
      await this.store.put(key, bytes);
      segs.push({
        key,
        records: part.length,
        first: part.length ? part[0].index : -1,
        last: part.length ? part[part.length - 1].index : -1,
        digest: segmentDigest(bytes),
      });
    }
    return segs;
  }

  /** The commit rule: re-read the marks; a pack reused or written that is blocked or gone stops the commit. */
  async commit(): Promise<PointManifest> {
    await this.checkpoint();
    const marks = await readPruneMarks(this.store, this.domain);
    for (const p of [...this.reused, ...this.written]) {
      if (marks.blocks(p)) throw new RnodeError(ErrorCodes.CHUNK_MISSING, `pack ${p} this point uses was marked by prune; not committed`);
      try {
        await this.store.head(r2.pack(this.domain.name, p));
      } catch (err) {
        if (isRnodeError(err, ErrorCodes.STORE_NOT_FOUND))
          throw new RnodeError(ErrorCodes.CHUNK_MISSING, `pack ${p} this point uses is gone; not committed`);
        throw err;
      }
    }
    const segments = await this.writeSegments(0);
    const m: PointManifest = {
      format: MANIFEST_FORMAT,
      version: 4,
      disk: this.disk,
      point: this.seq,
      parent: this.parent,
      full: this.parent === null,
      createdAt: new Date().toISOString(),
      diskSize: this.diskSize,
      chunkSize: CHUNK,
      source: { kind: 'test', location: 'fixture' },
      table: { generation: 0, records: this.entries.length, segments },
      stats: {
        chunksTotal: Math.ceil(this.diskSize / CHUNK),
        chunksChanged: this.entries.length,
        chunksZero: 0,
        bytesRead: 0,
        bytesWritten: 0,
        seconds: 0,
        bytesDeduplicated: 0,
        chunksDeduplicated: this.chunksDeduplicated,
        packsWritten: this.written.size,
      },
      ...(this.domain.key ? { encryption: { alg: 'aes-256-gcm' as const, keyId: this.domain.key.keyId } } : {}),
    };
    await this.store.put(r2.point(this.domain.name, this.domain.dname(this.disk), this.seq), encodeManifestV4(this.domain, m), { ifNoneMatch: true });
    await this.store.delete(r2.pending(this.domain.name, this.domain.dname(this.disk), this.seq));
    return m;
  }
}

/** Starts a point: loads the index and the marks as a replicate does at its start. */
export async function beginPoint(
  store: ObjectStore,
  key: EncryptionKey | undefined,
  disk: string,
  seq: number,
  parent: number | null,
  diskSize: number,
  packSize = 1024 * 1024,
): Promise<PendingPoint> {
  const domain = await Domain.openOrCreate(store, key);
  const index = await ChunkIndex.load(store, domain);
  const marks = await readPruneMarks(store, domain);
  return new PendingPoint(store, domain, disk, seq, parent, diskSize, index, (p) => marks.blocks(p), packSize);
}

/** Writes and commits one point with these changes. */
export async function writePoint(
  store: ObjectStore,
  key: EncryptionKey | undefined,
  disk: string,
  seq: number,
  parent: number | null,
  diskSize: number,
  changes: Changes,
  packSize?: number,
): Promise<PointManifest> {
  const p = await beginPoint(store, key, disk, seq, parent, diskSize, packSize);
  for (const [i, b] of [...changes].sort(([a], [b]) => a - b)) await p.add(i, b);
  return p.commit();
}

/** The disk at a point, read back through the index (every location tried), each blob's id checked. */
export async function readPointV2(store: ObjectStore, key: EncryptionKey | undefined, disk: string, seq: number): Promise<Buffer> {
  const domain = (await Domain.open(store, key))!;
  const chain = await loadV2Chain(store, disk, seq, key);
  const out = Buffer.alloc(chain[0].diskSize);
  const index = await ChunkIndex.load(store, domain);
  for await (const e of chainView(store, chain, key)) {
    if (!e.id) continue;
    let got: Buffer | undefined;
    for (const l of index.lookup(e.id)) {
      try {
        const blob = await store.get(r2.pack(domain.name, l.packId), { offset: l.entry.offset, length: l.entry.length });
        got = openBlob(key, e.id, blob, l.entry.plainLength);
        break;
      } catch (err) {
        if (!isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) throw err;
      }
    }
    if (!got) throw new RnodeError(ErrorCodes.CHUNK_MISSING, `chunk ${e.index} of point ${seq} of disk ${disk} is in no pack`);
    if (!domain.chunkId(got).equals(e.id)) throw new RnodeError(ErrorCodes.CHUNK_CORRUPT, `chunk ${e.index} of point ${seq} does not match its id`);
    got.copy(out, e.index * CHUNK);
  }
  return out;
}

/** A deterministic pseudo-random chunk. */
export function chunkData(seed: number, len = CHUNK): Buffer {
  const out = Buffer.alloc(len);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < len; i += 4) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out.writeUInt32LE(x >>> 0, i);
  }
  return out;
}

/** Applies changes to a disk image model. */
export function applyChanges(img: Buffer, changes: Changes): void {
  for (const [i, b] of changes) (b ?? Buffer.alloc(CHUNK)).copy(img, i * CHUNK);
}
