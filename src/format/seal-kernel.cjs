// Encrypted chunk payloads (chunk format version 2, layout in chunk.ts) in plain CommonJS, so the codec worker
// threads run the same code the format documents: keyed digests of the plaintext, AES-256-GCM seal and open, and
// the AAD that binds a ciphertext to the one chunk object it was written as.
'use strict';

const crypto = require('node:crypto');

const NONCE_BYTES = 12;
const TAG_BYTES = 16;
/** Bytes sealing adds to a payload: the nonce in front, the tag behind. */
const SEAL_OVERHEAD = NONCE_BYTES + TAG_BYTES;
const ALG = 'aes-256-gcm';
const AAD_MAGIC = Buffer.from('RNCK-AAD', 'latin1');
const STRONG_BYTES = 16;

/**
 * The associated data of a chunk: every header field fixed when the object is written (the chunk index and
 * writer point are the object's identity, which later points keep referring to unchanged), plus the disk id.
 * The payload length is authenticated by GCM itself; the payload xxh64 is computed over the ciphertext, so it
 * cannot be part of it.
 *
 *   "RNCK-AAD" | u8 version | u8 codec | u32 plain length | u64 keyed plaintext digest | u64 index | u32 writer |
 *   u8 disk id length | disk id (UTF-8)
 */
function chunkAad(f) {
  const disk = Buffer.from(f.disk, 'utf8');
  if (disk.length === 0 || disk.length > 255) throw new Error(`disk id of ${disk.length} bytes cannot be bound to a chunk`);
  const b = Buffer.alloc(AAD_MAGIC.length + 1 + 1 + 4 + 8 + 8 + 4 + 1 + disk.length);
  let o = AAD_MAGIC.copy(b, 0);
  o = b.writeUInt8(f.version, o);
  o = b.writeUInt8(f.codec, o);
  o = b.writeUInt32LE(f.plainLength, o);
  o = b.writeBigUInt64LE(f.plainDigest64, o);
  o = b.writeBigUInt64LE(BigInt(f.index), o);
  o = b.writeUInt32LE(f.writer, o);
  o = b.writeUInt8(disk.length, o);
  disk.copy(b, o);
  return b;
}

const BLOB_AAD_MAGIC = Buffer.from('rnode blob v2', 'latin1');
const CHUNK_ID_BYTES = 32;

/**
 * The associated data of a v2 blob (a chunk's stored bytes inside a pack): its chunk id, codec and plaintext length.
 * Nothing about where the blob sits (pack, offset, disk, point) is bound: the same blob serves every point of every
 * disk of its domain, and a repack copies it byte for byte. The id is a keyed hash of the plaintext, checked again
 * after decoding, so a blob can only ever be read as the chunk it is.
 *
 *   "rnode blob v2" | id (32) | u8 codec | u32 LE plain length
 */
function blobAad(id, codec, plainLength) {
  if (id.length !== CHUNK_ID_BYTES) throw new Error(`a chunk id is ${CHUNK_ID_BYTES} bytes, not ${id.length}`);
  const b = Buffer.alloc(BLOB_AAD_MAGIC.length + CHUNK_ID_BYTES + 1 + 4);
  let o = BLOB_AAD_MAGIC.copy(b, 0);
  o += Buffer.from(id.buffer, id.byteOffset, id.byteLength).copy(b, o);
  o = b.writeUInt8(codec, o);
  b.writeUInt32LE(plainLength, o);
  return b;
}

/**
 * Keyed BLAKE3-256 of the plaintext under the digest subkey: bytes 0-15 are the table's strong digest, bytes 16-23
 * (u64 LE) the 64-bit digest kept in the header and the table where an unencrypted chunk has its xxh64.
 */
function keyedDigests(Blake3Hasher, digestKey, plain) {
  const d = Blake3Hasher.newKeyed(digestKey).update(plain).digestBuffer();
  return { digest64: d.readBigUInt64LE(STRONG_BYTES), strong: new Uint8Array(d.subarray(0, STRONG_BYTES)) };
}

/** Encrypts out[offset+NONCE, +packedLength) in place, writes the nonce before it and the tag after; returns the payload length. */
function sealInPlace(cipherKey, out, offset, packedLength, aad) {
  // A random 96-bit nonce per chunk: safe for 2^32 chunks under one key (4 PiB of 1 MiB chunks).
  const nonce = crypto.randomBytes(NONCE_BYTES);
  nonce.copy(out, offset);
  const c = crypto.createCipheriv(ALG, cipherKey, nonce, { authTagLength: TAG_BYTES });
  c.setAAD(aad);
  const body = offset + NONCE_BYTES;
  const ct = c.update(out.subarray(body, body + packedLength));
  const rest = c.final();
  if (ct.length + rest.length !== packedLength) throw new Error('AES-GCM changed the payload length');
  ct.copy(out, body);
  rest.copy(out, body + ct.length);
  c.getAuthTag().copy(out, body + packedLength);
  return packedLength + SEAL_OVERHEAD;
}

/** Checks and decrypts nonce || ciphertext || tag; returns the packed (compressed) payload. */
function open(cipherKey, payload, aad) {
  if (payload.length < SEAL_OVERHEAD) throw new Error('encrypted payload is shorter than its nonce and tag');
  const d = crypto.createDecipheriv(ALG, cipherKey, payload.subarray(0, NONCE_BYTES), { authTagLength: TAG_BYTES });
  d.setAAD(aad);
  d.setAuthTag(payload.subarray(payload.length - TAG_BYTES));
  const packed = d.update(payload.subarray(NONCE_BYTES, payload.length - TAG_BYTES));
  try {
    d.final();
  } catch {
    throw new Error('ciphertext does not authenticate (AES-GCM tag mismatch): its bytes were altered, it belongs to another chunk or disk, or the key is not the one it was written with');
  }
  return packed;
}

/**
 * The worker side of encrypted chunks: 'seal:*' messages of src/pipeline/codec-workers.ts. Keys arrive once
 * ('seal:key', by key id) and are referred to by id; encode and decode mirror the unencrypted ops with the
 * keyed digests in place of xxh64/BLAKE3 and the seal/open step between the codec and the stored bytes.
 * deps: { kernel (codec-kernel.cjs), h64Raw, Blake3Hasher, headerBytes, cpu (a clock in ms for the stage times; default wall) }.
 */
function makeSealedOps(deps) {
  const { kernel, h64Raw, Blake3Hasher, headerBytes } = deps;
  const cpu = deps.cpu ?? (() => performance.now());
  const keys = new Map();
  const keyOf = (id) => {
    const k = keys.get(id);
    if (!k) throw new Error(`encryption key ${id} was not given to this worker`);
    return k;
  };
  const view = (sab, off, len) => Buffer.from(sab, off, len);

  function encode(m) {
    const k = keyOf(m.key);
    const plain = view(m.in, m.inOff, m.len);
    const out = view(m.out, m.outOff, m.outCap);
    // Stage times for the pipeline's counters (hash, pack, seal), as the unencrypted encode reports them.
    const t0 = cpu();
    const { digest64, strong } = keyedDigests(Blake3Hasher, k.digestKey, plain);
    const t1 = cpu();
    if (m.unchangedIf && m.unchangedIf.xxh64 === digest64 && Buffer.from(m.unchangedIf.strong).equals(strong)) {
      return { xxh64: digest64, strong, unchanged: true, hashMs: t1 - t0, packMs: 0, sealMs: 0 };
    }
    // Pack behind the room kept for the nonce, then seal in place.
    const r = kernel.encodeInto(plain, m.codec, out.subarray(0, out.length - TAG_BYTES), headerBytes + NONCE_BYTES);
    const t2 = cpu();
    const aad = chunkAad({ disk: m.disk, version: m.version, codec: r.codec, plainLength: plain.length, plainDigest64: digest64, index: m.index, writer: m.writer });
    const payloadLength = sealInPlace(k.cipherKey, out, headerBytes, r.length, aad);
    const payloadXxh64 = h64Raw(out.subarray(headerBytes, headerBytes + payloadLength));
    return { xxh64: digest64, strong, codec: r.codec, payloadLength, payloadXxh64, hashMs: t1 - t0, packMs: t2 - t1, sealMs: cpu() - t2 };
  }

  function decode(m) {
    const k = keyOf(m.key);
    const payload = view(m.in, m.inOff, m.len);
    const payloadXxh64 = h64Raw(payload);
    // Damaged stored bytes are reported as such; only consistent bytes get as far as the tag check.
    if (payloadXxh64 !== m.payloadXxh64) throw new Error('payload checksum mismatch');
    const aad = chunkAad({ disk: m.disk, version: m.version, codec: m.codec, plainLength: m.plainLength, plainDigest64: m.plainDigest64, index: m.index, writer: m.writer });
    const packed = open(k.cipherKey, payload, aad);
    const out = view(m.out, m.outOff, m.outCap);
    kernel.decodeInto(m.codec, packed, m.plainLength, out);
    const { digest64, strong } = keyedDigests(Blake3Hasher, k.digestKey, out.subarray(0, m.plainLength));
    return { xxh64: digest64, strong, payloadXxh64, plainLength: m.plainLength };
  }

  // Replies name the id chunkId: `id` is the message id.
  // Repository v2 blobs ('blob:*'): the chunk id is keyed BLAKE3-256 under the domain's id key (registered by name),
  // the blob has no header, and an encrypted blob's AAD is blobAad(id, codec, plainLength).
  const idKeys = new Map(deps.idKeys ?? []);
  const idKeyOf = (name) => {
    const k = idKeys.get(name);
    if (!k) throw new Error(`chunk-id key of domain ${name} was not given to this worker`);
    return k;
  };
  const chunkId = (name, plain) => Blake3Hasher.newKeyed(idKeyOf(name)).update(plain).digestBuffer();

  /** Packs (and seals, with m.key) plain into out[0..); returns the blob's length and stored xxh64. */
  function blobEncode(m) {
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
  function blobIdEncode(m) {
    const t0 = cpu();
    const id = chunkId(m.idName, view(m.in, m.inOff, m.len));
    const hashMs = cpu() - t0;
    const reply = { chunkId: new Uint8Array(id), hashMs };
    if ((m.parentId && id.equals(m.parentId)) || (m.known && idFilterHas(m.known, id))) return { ...reply, skipped: true };
    return { ...reply, ...blobEncode({ ...m, chunkId: id }) };
  }

  /** Checks, opens and decodes a blob into out; returns the id of what it decoded to (the caller compares). */
  function blobDecode(m) {
    const payload = view(m.in, m.inOff, m.len);
    const payloadXxh64 = h64Raw(payload);
    if (m.payloadXxh64 !== undefined && payloadXxh64 !== m.payloadXxh64) throw new Error('stored blob checksum mismatch');
    const packed = m.key ? open(keyOf(m.key).cipherKey, payload, blobAad(Buffer.from(m.chunkId), m.codec, m.plainLength)) : payload;
    const out = view(m.out, m.outOff, m.outCap);
    kernel.decodeInto(m.codec, packed, m.plainLength, out);
    return { chunkId: new Uint8Array(chunkId(m.idName, out.subarray(0, m.plainLength))), payloadXxh64 };
  }

  /**
   * Several plain blobs of one pack (m.in) decoded one after the other into the same out buffer, each to its chunk id:
   * one trip for a pack's share instead of one per blob (a receiving node checks every blob of every plain pack).
   * Stops at the first blob that does not decode, and says which.
   */
  function blobDecodeMany(m) {
    const ids = new Uint8Array(32 * m.blobs.length);
    const payloadXxh64s = [];
    for (let i = 0; i < m.blobs.length; i++) {
      const b = m.blobs[i];
      try {
        const r = blobDecode({ in: m.in, inOff: b.offset, len: b.length, out: m.out, outOff: m.outOff, outCap: m.outCap, codec: b.codec,
          plainLength: b.plainLength, idName: m.idName });
        ids.set(r.chunkId, 32 * i);
        payloadXxh64s.push(r.payloadXxh64);
      } catch (err) {
        // Not \`error\`: that field fails the whole trip.
        return { chunkIds: ids.subarray(0, 32 * i), payloadXxh64s, failed: i, reason: String((err && err.message) || err) };
      }
    }
    return { chunkIds: ids, payloadXxh64s };
  }

  /** Handles one 'seal:*' or 'blob:*' message; returns the reply (undefined for the key messages, which have none). */
  function handle(m) {
    switch (m.op) {
      case 'blob:idkey':
        idKeys.set(m.name, Buffer.from(m.idKey));
        return undefined;
      case 'blob:forget':
        idKeys.delete(m.name);
        return undefined;
      case 'blob:encode': return blobEncode(m);
      case 'blob:id-encode': return blobIdEncode(m);
      case 'blob:decode': return blobDecode(m);
      case 'blob:decode-many': return blobDecodeMany(m);
      case 'seal:key':
        keys.set(m.key, { cipherKey: Buffer.from(m.cipherKey), digestKey: Buffer.from(m.digestKey), domain: m.domain });
        // The key's v2 domain: its chunk-id key lives exactly as long as the cipher key.
        if (m.domain && m.idKey) idKeys.set(m.domain, Buffer.from(m.idKey));
        return undefined;
      case 'seal:forget': {
        const k = keys.get(m.key);
        if (k) {
          k.cipherKey.fill(0); k.digestKey.fill(0); keys.delete(m.key);
          if (k.domain) { idKeys.get(k.domain)?.fill(0); idKeys.delete(k.domain); }
        }
        return undefined;
      }
      case 'seal:encode': return encode(m);
      case 'seal:decode': return decode(m);
      // Stored bytes only (a peer node or a verify without the key): the digest of the payload as stored.
      case 'seal:stored': return { payloadXxh64: h64Raw(view(m.in, m.inOff, m.len)) };
      default: throw new Error(`unknown op ${m.op}`);
    }
  }

  return { handle };
}

/**
 * A filter of chunk ids the main thread shares with the workers (an Int32Array over a SharedArrayBuffer of a power of
 * two words): two bits per id, taken from its first 8 bytes (ids are keyed hashes, so uniform). No false negatives
 * for ids added before the test; a false positive only costs the chunk a second trip. A hint, never identity.
 */
function idFilterBits(words, id) {
  const mask = words.length * 32 - 1;
  return [id.readUInt32LE(0) & mask, id.readUInt32LE(4) & mask];
}

function idFilterAdd(words, id) {
  for (const b of idFilterBits(words, id)) Atomics.or(words, b >>> 5, 1 << (b & 31));
}

function idFilterHas(words, id) {
  return idFilterBits(words, id).every((b) => (Atomics.load(words, b >>> 5) & (1 << (b & 31))) !== 0);
}

module.exports = { makeSealedOps, idFilterAdd, idFilterHas, chunkAad, blobAad, keyedDigests, sealInPlace, open, NONCE_BYTES, TAG_BYTES, SEAL_OVERHEAD };
