// What the receiving node checks of a repository v2 object before it stores it (docs/wire-protocol.md). In the
// `plain` domain everything is checked that needs no key: envelope checksums, pack trailers, every blob decoded on
// the codec workers and its keyed BLAKE3 id recomputed, index entries naming packs the node holds, a manifest's
// segments read back and matched to its digests. An encrypted domain's objects are sealed and this node holds no
// key: they are checked for structure only (envelope header, sealed flag, sizes consistent with their kind).
import { META_NONCE_BYTES, META_TAG_BYTES } from '../crypto/keys.js';
import { ErrorCodes, isRnodeError } from '../errors.js';
import { decodeConfig, Domain } from '../repository/domain.js';
import {
  ENVELOPE_HEADER_BYTES,
  ENVELOPE_MAGIC,
  ENVELOPE_VERSION,
  EnvelopeKind,
  envelopeContext,
  openEnvelope,
  type EnvelopeKindId,
} from '../repository/envelope.js';
import { decodeIndex, INDEX_ENTRY_BYTES } from '../repository/index-file.js';
import { PLAIN_DOMAIN, r2, type R2Handle } from '../repository/names.js';
import { BLOB_ENTRY_BYTES, decodePack, PACK_TAIL_BYTES, trailerPlace, type BlobEntry } from '../repository/pack.js';
import { decodeManifestV4, decodePendingV2, decodeTableV3, TABLE_V3_RECORD_BYTES } from '../repository/point-format.js';
import type { ObjectStore } from '../store/types.js';
import { FrameFlag } from '../transport/frame.js';

const SEAL_BYTES = META_NONCE_BYTES + META_TAG_BYTES;
const CHECKSUM_BYTES = 32;
const COUNT_BYTES = 4;

export interface R2Put {
  key: string;
  data: Buffer;
  flags: number;
}

export interface R2Checks {
  store: ObjectStore;
  /**
   * Decodes a plain pack's blobs on the codec workers; resolves, per blob in order, to the id of its plaintext and its
   * payload xxh64 as computed there (hashing on the workers keeps the node's event loop free for the wire), or to why
   * it did not decode (or was not tried: a blob before it in its worker's share failed). Every decode has ended when
   * it resolves: the caller reuses the pack's buffer after.
   */
  decodeBlobs(pack: Buffer, blobs: BlobEntry[]): Promise<DecodedBlob[]>;
}

export type DecodedBlob = { id: Buffer; payloadXxh64: bigint } | { error: string };

/** The `plain` domain as a receiver sees it: no key, the fixed public chunk-id key (no config needed). */
const plainDomain = Domain.of(undefined);

/** Throws (a plain Error, turned into RNODE_TRANSPORT_REJECTED by the caller) when the object is not valid. */
export async function checkR2Put(p: R2Put, h: R2Handle, deps: R2Checks): Promise<void> {
  const sealed = h.domain !== PLAIN_DOMAIN;
  const conditional = (p.flags & FrameFlag.IF_NONE_MATCH) !== 0;
  switch (h.kind) {
    case 'config':
      if (!conditional) throw new Error('a repository config is written once, with if-none-match');
      if (sealed) sealedShape(p.data, EnvelopeKind.CONFIG);
      else decodeConfig(p.data, h.domain);
      return;
    case 'pack':
      if (sealed) sealedPackShape(p.data, p.key);
      else await checkPlainPack(p.data, h.id, deps);
      return;
    case 'index':
      if (sealed) sealedShape(p.data, EnvelopeKind.INDEX, INDEX_ENTRY_BYTES);
      else await checkPlainIndex(p.data, h.id, deps.store);
      return;
    case 'table':
      // Its checksum binds the point's parent, which only the manifest names: the manifest's commit reads every
      // segment back and checks it against the manifest's digest. Here: shape.
      if (sealed) sealedShape(p.data, EnvelopeKind.TABLE, TABLE_V3_RECORD_BYTES);
      else plainShape(p.data, EnvelopeKind.TABLE, TABLE_V3_RECORD_BYTES);
      return;
    case 'manifest':
      if (!conditional)
        throw new Error(
          'a point manifest must be committed with if-none-match (points are immutable over the peer link; run "rnode prune" on the receiving node)',
        );
      if (sealed) {
        sealedShape(p.data, EnvelopeKind.MANIFEST);
        await requireSome(deps.store, r2.tablesPrefix(h.domain, h.dname, h.point), 'table segment');
      } else {
        await checkPlainManifest(p.data, h, deps.store);
      }
      return;
    case 'pending':
      if (sealed) sealedShape(p.data, EnvelopeKind.PENDING);
      else if (!isObject(decodePendingV2(p.data, plainDomain, h.dname, h.point))) throw new Error('its checkpoint is not a JSON object');
      return;
    case 'prune':
      if (sealed) sealedShape(p.data, EnvelopeKind.PRUNE_MARKS);
      else openEnvelope(p.data, EnvelopeKind.PRUNE_MARKS, envelopeContext.prune(h.domain, h.name), p.key);
      return;
  }
}

function isObject(v: unknown): boolean {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** The 8-byte envelope header of kind, sealed or not. */
function header(b: Buffer, kind: EnvelopeKindId, sealed: boolean): void {
  if (b.length < ENVELOPE_HEADER_BYTES || !b.subarray(0, 4).equals(ENVELOPE_MAGIC)) throw new Error('not a metadata envelope');
  if (b.readUInt8(4) !== ENVELOPE_VERSION) throw new Error(`envelope version ${b.readUInt8(4)} (this node reads ${ENVELOPE_VERSION}; upgrade it)`);
  if (b.readUInt8(5) !== kind) throw new Error(`envelope of kind ${b.readUInt8(5)}, expected ${kind}`);
  if (b.readUInt8(6) !== (sealed ? 1 : 0) || b.readUInt8(7) !== 0) {
    throw new Error(sealed ? 'an object of an encrypted repository that is not sealed' : 'a sealed object in the unencrypted repository');
  }
}

/** A body of `u32 count | count records of recordBytes` must fill exactly `bodyBytes`. */
function recordsFit(bodyBytes: number, recordBytes: number): void {
  if (bodyBytes < COUNT_BYTES || (bodyBytes - COUNT_BYTES) % recordBytes !== 0)
    throw new Error(`its body of ${bodyBytes} bytes is not a count and records of ${recordBytes} bytes`);
}

/** A sealed object: header, room for nonce and tag, and (for record bodies) a body length its kind can have. */
function sealedShape(b: Buffer, kind: EnvelopeKindId, recordBytes?: number): void {
  header(b, kind, true);
  if (b.length < ENVELOPE_HEADER_BYTES + SEAL_BYTES) throw new Error('a sealed object shorter than its nonce and tag');
  if (recordBytes !== undefined) recordsFit(b.length - ENVELOPE_HEADER_BYTES - SEAL_BYTES, recordBytes);
}

/** An unsealed record object whose checksum cannot be checked yet: header, sizes and its count field. */
function plainShape(b: Buffer, kind: EnvelopeKindId, recordBytes: number): void {
  header(b, kind, false);
  const body = b.length - ENVELOPE_HEADER_BYTES - CHECKSUM_BYTES;
  recordsFit(body, recordBytes);
  if (b.readUInt32LE(ENVELOPE_HEADER_BYTES) !== (body - COUNT_BYTES) / recordBytes) throw new Error('its record count does not match its length');
}

/** A sealed pack: the tail's magic and trailer length, and a sealed trailer of whole entries. */
function sealedPackShape(b: Buffer, key: string): void {
  const { start, length } = trailerPlace(b.subarray(Math.max(0, b.length - PACK_TAIL_BYTES)), b.length, key);
  sealedShape(b.subarray(start, start + length), EnvelopeKind.PACK_TRAILER, BLOB_ENTRY_BYTES);
  const count = (length - ENVELOPE_HEADER_BYTES - SEAL_BYTES - COUNT_BYTES) / BLOB_ENTRY_BYTES;
  // Each sealed blob carries at least its nonce and tag and one byte.
  if (start < count * (SEAL_BYTES + 1)) throw new Error(`a blob area of ${start} bytes cannot hold ${count} sealed blobs`);
}

/** A plain pack: trailer checksum and entries, blobs back to back up to the trailer, each decoded to its id. */
async function checkPlainPack(b: Buffer, packId: string, deps: R2Checks): Promise<void> {
  const entries = decodePack(b, PLAIN_DOMAIN, packId);
  if (entries.length === 0) throw new Error('a pack without blobs');
  let end = 0;
  for (const e of entries) {
    if (e.offset !== end)
      throw new Error(`blob ${e.id.toString('hex').slice(0, 16)}… starts at ${e.offset}, not where the previous one ends (${end})`);
    end = e.offset + e.length;
  }
  const { start } = trailerPlace(b.subarray(b.length - PACK_TAIL_BYTES), b.length, packId);
  if (end !== start) throw new Error(`its blobs end at ${end}, its trailer starts at ${start}`);
  const decoded = await deps.decodeBlobs(b, entries);
  for (const [i, e] of entries.entries()) {
    const what = `blob ${i} (chunk id ${e.id.toString('hex').slice(0, 16)}…)`;
    const r = decoded[i];
    if ('error' in r) throw new Error(`${what} does not decode: ${r.error}`);
    if (r.payloadXxh64 !== e.payloadXxh64) throw new Error(`${what}: payload xxh64 mismatch`);
    if (!r.id.equals(e.id)) throw new Error(`${what}: its plaintext does not hash to its chunk id`);
  }
}

/** A plain index: checksum and entries; every pack it names must already be on this node (packs go first). */
async function checkPlainIndex(b: Buffer, indexId: string, store: ObjectStore): Promise<void> {
  const locations = decodeIndex(b, plainDomain, indexId);
  const packs = [...new Set(locations.map((l) => l.packId))];
  for (let i = 0; i < packs.length; i += 16) {
    await Promise.all(packs.slice(i, i + 16).map((id) => requireObject(store, r2.pack(PLAIN_DOMAIN, id), 'pack')));
  }
}

/** A plain manifest: checksum and fields, then every segment it pins read back from this node and matched. */
async function checkPlainManifest(b: Buffer, h: Extract<R2Handle, { kind: 'manifest' }>, store: ObjectStore): Promise<void> {
  // In the plain domain a disk's name is its id.
  const m = decodeManifestV4(b, plainDomain, h.dname, h.point);
  for (const [n, s] of m.table.segments.entries()) {
    let bytes: Buffer;
    try {
      bytes = await store.get(s.key);
    } catch (err) {
      if (isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) throw new Error(`its table segment ${s.key} is not on this node`, { cause: err });
      throw err;
    }
    decodeTableV3(
      bytes,
      plainDomain,
      { disk: m.disk, point: m.point, parent: m.parent, generation: m.table.generation, segment: n },
      s.key,
      s.digest,
    );
  }
}

async function requireObject(store: ObjectStore, key: string, what: string): Promise<void> {
  try {
    await store.head(key);
  } catch (err) {
    if (isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) throw new Error(`the ${what} ${key} it names is not on this node`, { cause: err });
    throw err;
  }
}

async function requireSome(store: ObjectStore, prefix: string, what: string): Promise<void> {
  for await (const _ of store.list(prefix)) return;
  throw new Error(`no ${what} of it (${prefix}) is on this node`);
}
