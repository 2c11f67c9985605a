// What a codec worker thread does with each message of src/pipeline/codec-workers.ts, apart from the thread itself
// (codec-worker.ts): plain chunks ('encode', 'decode': xxh64, BLAKE3, the codec), encrypted chunks ('seal:*': keyed
// digests, AES-256-GCM seal or open) and repository v2 blobs ('blob:*': keyed chunk ids, blobs with or without a seal).
import type { Blake3Hasher } from '@napi-rs/blake-hash';
import { CHUNK_HEADER_BYTES, STRONG_DIGEST_BYTES } from '../format/chunk.js';
import { Codec } from '../format/codecs.js';
import type { CodecKernel } from '../format/codec-kernel.js';
import { blobAad, chunkAad, NONCE_BYTES, openSealed, sealInPlace, TAG_BYTES } from '../format/seal.js';
import { idFilterHas } from './id-filter.js';

/** A request from the main thread. Buffers are SharedArrayBuffers: the worker reads and writes them in place. */
export interface OpMessage {
  op: string;
  /** Set on requests that expect a reply; key and id-key messages have none. */
  id?: number;
  in: SharedArrayBuffer;
  inOff: number;
  len: number;
  out: SharedArrayBuffer;
  outOff: number;
  outCap: number;
  codec: number;
  plainLength: number;
  unchangedIf?: { xxh64: bigint; strong: Uint8Array };
  /** Encryption key id ('seal:key' registers it). */
  key?: string;
  // The AAD fields of an encrypted chunk (format/seal.ts chunkAad).
  disk: string;
  version: number;
  index: number;
  writer: number;
  plainDigest64: bigint;
  payloadXxh64?: bigint;
  // Repository v2.
  chunkId: Uint8Array;
  idName: string;
  parentId?: Uint8Array;
  known?: Int32Array;
  // blob:scan and blob:read-id-encode.
  fd: number;
  position: number;
  chunks: Float64Array;
  parentIds: Uint8Array;
  /** Also take each chunk's change hash (xxh3 under this seed): blob:id-encode, blob:read-id-encode, blob:scan. */
  changeSeed?: bigint;
  blobs: Array<{ offset: number; length: number; codec: number; plainLength: number }>;
  // Key messages.
  name: string;
  idKey?: Uint8Array;
  cipherKey: Uint8Array;
  digestKey: Uint8Array;
  domain?: string;
}

export type OpReply = Record<string, unknown>;

export interface CodecOpsDeps {
  kernel: CodecKernel;
  h64Raw: (data: Uint8Array) => bigint;
  blake3: (data: Buffer) => Buffer;
  Blake3Hasher: typeof Blake3Hasher;
  /** A clock in ms for the stage times: the thread's CPU time where the addon reads it. */
  cpu: () => number;
  /** Chunk-id keys by domain name, known from the start (the plain domain's is public). */
  idKeys: Array<[string, Buffer]>;
  /** blob:scan's reads (fs.readSync: one pread) and zero test (the addon's). */
  readSync?: (fd: number, buf: Uint8Array, offset: number, length: number, position: number) => number;
  isZero?: (buf: Uint8Array) => boolean;
  /** The addon's xxh3, where libxxhash is loaded: change hashes (src/jobs/replicate/change-hashes.ts). */
  xxh3?: (data: Uint8Array, seed: bigint, out: Uint8Array) => void;
}

/** A scanned chunk's parent (blob:scan's input), three numbers per chunk with its offset and length. */
export const ScanParent = { NONE: 0, ZERO: 1, ID: 2, DATA: 3 } as const;
/** What blob:scan found of a chunk. */
export const ScanState = { UNCHANGED: 0, ZERO: 1, CHANGED: 2 } as const;

const view = (sab: SharedArrayBuffer, off: number, len: number): Buffer => Buffer.from(sab, off, len);

export function makeCodecOps(deps: CodecOpsDeps): { handle(m: OpMessage): OpReply | undefined } {
  const { kernel, h64Raw, blake3, Blake3Hasher, cpu } = deps;
  const HDR = CHUNK_HEADER_BYTES;
  const strongOf = (plain: Buffer) => new Uint8Array(blake3(plain).subarray(0, STRONG_DIGEST_BYTES));

  /** Hashes a plain chunk and writes its payload behind the header room of out. */
  function encode(m: OpMessage): OpReply {
    const plain = view(m.in, m.inOff, m.len);
    const out = view(m.out, m.outOff, m.outCap);
    // Each reply says what its hashing and packing cost: the pipeline's per-stage counters.
    const t0 = cpu();
    const xxh64 = h64Raw(plain);
    const strong = strongOf(plain);
    const t1 = cpu();
    // Same content as the previous point (both digests): skip the compressor, the chunk is not stored.
    if (m.unchangedIf && m.unchangedIf.xxh64 === xxh64 && Buffer.from(m.unchangedIf.strong).equals(strong)) {
      return { xxh64, strong, unchanged: true, hashMs: t1 - t0, packMs: 0 };
    }
    const r = kernel.encodeInto(plain, m.codec, out, HDR);
    // A raw payload is the plaintext: its digest is already known.
    const payloadXxh64 = r.codec === Codec.NONE ? xxh64 : h64Raw(out.subarray(HDR, HDR + r.length));
    return { xxh64, strong, codec: r.codec, payloadLength: r.length, payloadXxh64, hashMs: t1 - t0, packMs: cpu() - t1 };
  }

  /** m.in holds the payload; the plaintext goes to m.out. */
  function decode(m: OpMessage): OpReply {
    const payload = view(m.in, m.inOff, m.len);
    const payloadXxh64 = h64Raw(payload);
    const out = view(m.out, m.outOff, m.outCap);
    kernel.decodeInto(m.codec, payload, m.plainLength, out);
    const plain = out.subarray(0, m.plainLength);
    return { xxh64: h64Raw(plain), strong: strongOf(plain), payloadXxh64, plainLength: m.plainLength };
  }

  // Encrypted chunks. Keys arrive once ('seal:key', by key id) and are referred to by id; encode and decode mirror
  // the plain ops with the keyed digests in place of xxh64/BLAKE3 and the seal/open step between codec and bytes.
  const keys = new Map<string, { cipherKey: Buffer; digestKey: Buffer; domain?: string }>();
  const keyOf = (id: string | undefined) => {
    const k = id === undefined ? undefined : keys.get(id);
    if (!k) throw new Error(`encryption key ${id} was not given to this worker`);
    return k;
  };

  /**
   * Keyed BLAKE3-256 of the plaintext under the digest subkey: bytes 0-15 are the table's strong digest, bytes 16-23
   * (u64 LE) the 64-bit digest kept in the header and the table where an unencrypted chunk has its xxh64.
   */
  function keyedDigests(digestKey: Buffer, plain: Buffer): { digest64: bigint; strong: Uint8Array } {
    const d = Blake3Hasher.newKeyed(digestKey).update(plain).digestBuffer();
    return { digest64: d.readBigUInt64LE(STRONG_DIGEST_BYTES), strong: new Uint8Array(d.subarray(0, STRONG_DIGEST_BYTES)) };
  }

  function sealedEncode(m: OpMessage): OpReply {
    const k = keyOf(m.key);
    const plain = view(m.in, m.inOff, m.len);
    const out = view(m.out, m.outOff, m.outCap);
    // Stage times for the pipeline's counters (hash, pack, seal), as the plain encode reports them.
    const t0 = cpu();
    const { digest64, strong } = keyedDigests(k.digestKey, plain);
    const t1 = cpu();
    if (m.unchangedIf && m.unchangedIf.xxh64 === digest64 && Buffer.from(m.unchangedIf.strong).equals(strong)) {
      return { xxh64: digest64, strong, unchanged: true, hashMs: t1 - t0, packMs: 0, sealMs: 0 };
    }
    // Pack behind the room kept for the nonce, then seal in place.
    const r = kernel.encodeInto(plain, m.codec, out.subarray(0, out.length - TAG_BYTES), HDR + NONCE_BYTES);
    const t2 = cpu();
    const aad = chunkAad({
      disk: m.disk,
      version: m.version,
      codec: r.codec,
      plainLength: plain.length,
      plainDigest64: digest64,
      index: m.index,
      writer: m.writer,
    });
    const payloadLength = sealInPlace(k.cipherKey, out, HDR, r.length, aad);
    const payloadXxh64 = h64Raw(out.subarray(HDR, HDR + payloadLength));
    return { xxh64: digest64, strong, codec: r.codec, payloadLength, payloadXxh64, hashMs: t1 - t0, packMs: t2 - t1, sealMs: cpu() - t2 };
  }

  function sealedDecode(m: OpMessage): OpReply {
    const k = keyOf(m.key);
    const payload = view(m.in, m.inOff, m.len);
    const payloadXxh64 = h64Raw(payload);
    // Damaged stored bytes are reported as such; only consistent bytes get as far as the tag check.
    if (payloadXxh64 !== m.payloadXxh64) throw new Error('payload checksum mismatch');
    const aad = chunkAad({
      disk: m.disk,
      version: m.version,
      codec: m.codec,
      plainLength: m.plainLength,
      plainDigest64: m.plainDigest64,
      index: m.index,
      writer: m.writer,
    });
    const packed = openSealed(k.cipherKey, payload, aad);
    const out = view(m.out, m.outOff, m.outCap);
    kernel.decodeInto(m.codec, packed, m.plainLength, out);
    const { digest64, strong } = keyedDigests(k.digestKey, out.subarray(0, m.plainLength));
    return { xxh64: digest64, strong, payloadXxh64, plainLength: m.plainLength };
  }

  // Replies name the id chunkId: `id` is the message id.
  // Repository v2 blobs: the chunk id is keyed BLAKE3-256 under the domain's id key (registered by name), the blob
  // has no header, and an encrypted blob's AAD is blobAad(id, codec, plainLength).
  const idKeys = new Map<string, Buffer>(deps.idKeys);
  const idKeyOf = (name: string) => {
    const k = idKeys.get(name);
    if (!k) throw new Error(`chunk-id key of domain ${name} was not given to this worker`);
    return k;
  };
  const chunkId = (name: string, plain: Buffer) => Blake3Hasher.newKeyed(idKeyOf(name)).update(plain).digestBuffer();

  /** Packs (and seals, with m.key) plain into out[0..); returns the blob's length and stored xxh64. */
  function blobEncode(m: OpMessage): OpReply {
    const plain = view(m.in, m.inOff, m.len);
    const out = view(m.out, m.outOff, m.outCap);
    const t0 = cpu();
    const id = Buffer.from(m.chunkId);
    let r;
    let length;
    let sealMs = 0;
    if (m.key) {
      const k = keyOf(m.key);
      r = kernel.encodeInto(plain, m.codec, out.subarray(0, out.length - TAG_BYTES), NONCE_BYTES);
      const t1 = cpu();
      length = sealInPlace(k.cipherKey, out, 0, r.length, blobAad(id, r.codec, plain.length));
      sealMs = cpu() - t1;
    } else {
      r = kernel.encodeInto(plain, m.codec, out, 0);
      length = r.length;
    }
    const payloadXxh64 = h64Raw(out.subarray(0, length));
    return { codec: r.codec, payloadLength: length, payloadXxh64, packMs: cpu() - t0 - sealMs, sealMs };
  }

  /**
   * A new chunk's one trip to a worker: its id, then its blob in the same turn, unless the id is m.parentId (the chunk
   * is unchanged since the parent point) or idFilterHas(m.known) says the domain may hold it already. Either way the
   * main thread decides from the id what is stored; it encodes a skipped chunk after all if the filter was wrong.
   */
  function blobIdEncode(m: OpMessage): OpReply {
    const t0 = cpu();
    const plain = view(m.in, m.inOff, m.len);
    const id = chunkId(m.idName, plain);
    const change = changeHash(m, plain);
    const hashMs = cpu() - t0;
    const reply = { chunkId: new Uint8Array(id), hashMs, ...(change ? { change } : {}) };
    if ((m.parentId && id.equals(m.parentId)) || (m.known && idFilterHas(m.known, id))) return { ...reply, skipped: true };
    return { ...reply, ...blobEncode({ ...m, chunkId: id }) };
  }

  /** The change hash of plain when m asks for one and this thread has xxh3. */
  function changeHash(m: OpMessage, plain: Uint8Array): Uint8Array | undefined {
    if (m.changeSeed === undefined || !deps.xxh3) return undefined;
    const h = new Uint8Array(16);
    deps.xxh3(plain, m.changeSeed, h);
    return h;
  }

  /** The reads of blob:scan and blob:read-id-encode: one pread and the zero test, both from the worker's deps. */
  function sourceReads(op: string): { readSync: NonNullable<CodecOpsDeps['readSync']>; isZero: NonNullable<CodecOpsDeps['isZero']> } {
    const { readSync, isZero } = deps;
    if (!readSync || !isZero) throw new Error(`${op} needs readSync and isZero`);
    return { readSync, isZero };
  }

  /** Reads length bytes of fd at position into buf until it has them or the file ends; returns the bytes read. */
  function readFully(readSync: NonNullable<CodecOpsDeps['readSync']>, fd: number, buf: Buffer, length: number, position: number): number {
    let got = 0;
    while (got < length) {
      const n = readSync(fd, buf, got, length - got, position + got);
      if (n === 0) break;
      got += n;
    }
    return got;
  }

  /**
   * A chunk of a full point's one trip: read from the source's lent fd into m.in on this thread (no pool thread and
   * no wake-ups of the main thread for the read), then blob:id-encode unless it reads as zeros (`zero`: nothing to
   * store). `got` is what the read returned; short of m.len, nothing else is done.
   */
  function blobReadIdEncode(m: OpMessage): OpReply {
    const { readSync, isZero } = sourceReads(m.op);
    const plain = view(m.in, m.inOff, m.len);
    const t0 = cpu();
    const got = readFully(readSync, m.fd, plain, m.len, m.position);
    const readMs = cpu() - t0;
    if (got !== m.len) return { got, readMs };
    if (isZero(plain)) return { got, readMs, zero: true };
    return { got, readMs, ...blobIdEncode(m) };
  }

  /** Checks, opens and decodes a blob into out; returns the id of what it decoded to (the caller compares). */
  function blobDecode(m: OpMessage): { chunkId: Uint8Array; payloadXxh64: bigint } {
    const payload = view(m.in, m.inOff, m.len);
    const payloadXxh64 = h64Raw(payload);
    if (m.payloadXxh64 !== undefined && payloadXxh64 !== m.payloadXxh64) throw new Error('stored blob checksum mismatch');
    const packed = m.key ? openSealed(keyOf(m.key).cipherKey, payload, blobAad(Buffer.from(m.chunkId), m.codec, m.plainLength)) : payload;
    const out = view(m.out, m.outOff, m.outCap);
    kernel.decodeInto(m.codec, packed, m.plainLength, out);
    return { chunkId: new Uint8Array(chunkId(m.idName, out.subarray(0, m.plainLength))), payloadXxh64 };
  }

  /**
   * Several plain blobs of one pack (m.in) decoded one after the other into the same out buffer, each to its chunk id:
   * one trip for a pack's share instead of one per blob (a receiving node checks every blob of every plain pack).
   * Stops at the first blob that does not decode, and says which.
   */
  function blobDecodeMany(m: OpMessage): OpReply {
    const ids = new Uint8Array(32 * m.blobs.length);
    const payloadXxh64s: bigint[] = [];
    for (let i = 0; i < m.blobs.length; i++) {
      const b = m.blobs[i];
      try {
        const r = blobDecode({
          ...m,
          inOff: b.offset,
          len: b.length,
          codec: b.codec,
          plainLength: b.plainLength,
          key: undefined,
          payloadXxh64: undefined,
        });
        ids.set(r.chunkId, 32 * i);
        payloadXxh64s.push(r.payloadXxh64);
      } catch (err) {
        // Not `error`: that field fails the whole trip.
        return { chunkIds: ids.subarray(0, 32 * i), payloadXxh64s, failed: i, reason: errorText(err) };
      }
    }
    return { chunkIds: ids, payloadXxh64s };
  }

  // blob:scan's read buffer: one chunk, kept across runs up to the default chunk size (an agent's workers live for
  // months; a run of 16 MiB chunks would otherwise leave 16 MiB resident in each).
  const KEEP_SCAN_BUFFER = 1024 * 1024;
  let scanBuf = Buffer.alloc(0);

  /**
   * A run of chunks read from a lent source fd and compared with the parent point on this thread, so a scan of an
   * unchanged disk costs the main thread one trip per run instead of a read and a trip per chunk. m.chunks holds
   * (offset, length, ScanParent) per chunk, m.parentIds the parent's id at 32 x its position (ScanParent.ID). A chunk
   * is UNCHANGED (same id), ZERO (reads as zeros, the parent had no data) or CHANGED (the main thread reads it again
   * and stores it). A short read stops the run: `short` is that chunk's position, `got` its bytes. With
   * m.changeSeed, `changes` holds each chunk's change hash at 16 x its position.
   */
  function blobScan(m: OpMessage): OpReply {
    const { readSync, isZero } = sourceReads(m.op);
    const count = m.chunks.length / 3;
    const states = new Uint8Array(count);
    const changes = m.changeSeed !== undefined && deps.xxh3 ? new Uint8Array(16 * count) : undefined;
    let readMs = 0;
    let hashMs = 0;
    let longest = 0;
    for (let i = 0; i < count; i++) longest = Math.max(longest, m.chunks[3 * i + 1]);
    const buf = longest <= scanBuf.length ? scanBuf : Buffer.allocUnsafeSlow(longest);
    if (longest <= KEEP_SCAN_BUFFER) scanBuf = buf;
    for (let i = 0; i < count; i++) {
      const [offset, length, parent] = m.chunks.subarray(3 * i, 3 * i + 3);
      const t0 = cpu();
      const got = readFully(readSync, m.fd, buf, length, offset);
      const t1 = cpu();
      readMs += t1 - t0;
      if (got !== length) return { states: states.subarray(0, i), short: i, got, readMs, hashMs };
      const plain = buf.subarray(0, length);
      if (changes) deps.xxh3!(plain, m.changeSeed!, changes.subarray(16 * i, 16 * i + 16));
      if (isZero(plain)) states[i] = parent === ScanParent.NONE || parent === ScanParent.ZERO ? ScanState.ZERO : ScanState.CHANGED;
      else if (parent !== ScanParent.ID) states[i] = ScanState.CHANGED;
      else {
        const same = chunkId(m.idName, plain).equals(m.parentIds.subarray(32 * i, 32 * i + 32));
        states[i] = same ? ScanState.UNCHANGED : ScanState.CHANGED;
        hashMs += cpu() - t1;
      }
    }
    return { states, readMs, hashMs, ...(changes ? { changes } : {}) };
  }

  /** Handles one message; returns the reply (undefined for the key messages, which have none). */
  function handle(m: OpMessage): OpReply | undefined {
    switch (m.op) {
      case 'encode':
        return encode(m);
      case 'decode':
        return decode(m);
      case 'blob:idkey':
        idKeys.set(m.name, Buffer.from(m.idKey!));
        return undefined;
      case 'blob:forget':
        idKeys.delete(m.name);
        return undefined;
      case 'blob:encode':
        return blobEncode(m);
      case 'blob:id-encode':
        return blobIdEncode(m);
      case 'blob:read-id-encode':
        return blobReadIdEncode(m);
      case 'blob:decode':
        return blobDecode(m);
      case 'blob:decode-many':
        return blobDecodeMany(m);
      case 'blob:scan':
        return blobScan(m);
      case 'seal:key':
        keys.set(m.key!, { cipherKey: Buffer.from(m.cipherKey), digestKey: Buffer.from(m.digestKey), domain: m.domain });
        // The key's v2 domain: its chunk-id key lives exactly as long as the cipher key.
        if (m.domain && m.idKey) idKeys.set(m.domain, Buffer.from(m.idKey));
        return undefined;
      case 'seal:forget': {
        const k = m.key === undefined ? undefined : keys.get(m.key);
        if (k) {
          k.cipherKey.fill(0);
          k.digestKey.fill(0);
          keys.delete(m.key!);
          if (k.domain) {
            idKeys.get(k.domain)?.fill(0);
            idKeys.delete(k.domain);
          }
        }
        return undefined;
      }
      case 'seal:encode':
        return sealedEncode(m);
      case 'seal:decode':
        return sealedDecode(m);
      // Stored bytes only (a peer node or a verify without the key): the digest of the payload as stored.
      case 'seal:stored':
        return { payloadXxh64: h64Raw(view(m.in, m.inOff, m.len)) };
      default:
        throw new Error(`unknown op ${m.op}`);
    }
  }

  return { handle };
}

export function errorText(err: unknown): string {
  return String((err instanceof Error && err.message) || err);
}
