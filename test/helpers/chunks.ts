// A main-thread chunk encoder and decoder for the format tests: the same codec kernel the codec workers run,
// called directly, and stored objects built and checked without workers (a second decode path to hold the
// worker path against). rnode itself only encodes and decodes on the workers.
import * as lz4napi from 'lz4-napi';
import { ErrorCodes, RnodeError } from '../../src/errors.js';
import { strongDigest, xxh64 } from '../../src/format/checksum.js';
import { CHUNK_HEADER_BYTES, encodeChunkHeader } from '../../src/format/chunk.js';
import { makeKernel } from '../../src/format/codec-kernel.js';
import { Codec, CODEC_NAMES, isKnownCodec, payloadOverhead, type CodecId } from '../../src/format/codecs.js';
import type { ChunkEntry } from '../../src/format/table.js';
import { copyBytes, lz4Block, zeroBytes } from '../../src/native/index.js';
import { checkHeader, corruption } from '../../src/pipeline/chunk-codec.js';

const kernel = makeKernel({ ...lz4napi, block: lz4Block, copy: copyBytes, zero: zeroBytes });

/** Encodes plaintext; falls back to NONE when the encoded form would not be smaller. */
export async function encodeChunk(codec: CodecId, plain: Buffer): Promise<{ codec: CodecId; payload: Buffer }> {
  if (!isKnownCodec(codec)) throw new RnodeError(ErrorCodes.FORMAT_CODEC, `unknown codec id ${codec}`);
  const out = Buffer.allocUnsafe(plain.length + payloadOverhead(plain.length));
  const r = kernel.encodeInto(plain, codec, out, 0);
  return { codec: r.codec as CodecId, payload: out.subarray(0, r.length) };
}

export async function decodeChunk(codec: number, payload: Buffer, plainLength: number): Promise<Buffer> {
  if (!isKnownCodec(codec)) {
    throw new RnodeError(ErrorCodes.FORMAT_CODEC, `unknown codec id ${codec}; this chunk was written by a newer rnode, upgrade to read it`);
  }
  const out = Buffer.alloc(plainLength);
  try {
    kernel.decodeInto(codec, payload, plainLength, out);
  } catch (err) {
    throw new RnodeError(ErrorCodes.CHUNK_CORRUPT, `${CODEC_NAMES[codec]} payload does not decode: ${(err as Error).message}`);
  }
  return out;
}

export interface ChunkDigests {
  xxh64: bigint;
  strong: Buffer;
}

export function digestChunk(plain: Buffer): ChunkDigests {
  return { xxh64: xxh64(plain), strong: strongDigest(plain) };
}

/** Encodes plaintext (already digested) as the object stored for (writer, index). */
export async function encodeStoredChunk(
  plain: Buffer,
  digests: ChunkDigests,
  index: number,
  writer: number,
  codec: CodecId,
): Promise<{ object: Buffer; entry: ChunkEntry }> {
  const enc = await encodeChunk(codec, plain);
  const header = encodeChunkHeader({
    codec: enc.codec,
    flags: 0,
    plainLength: plain.length,
    payloadLength: enc.payload.length,
    // An uncompressed payload is the plaintext: its digest is already known.
    plainXxh64: digests.xxh64,
    payloadXxh64: enc.codec === Codec.NONE ? digests.xxh64 : xxh64(enc.payload),
    index,
    writer,
  });
  const object = Buffer.concat([header, enc.payload], CHUNK_HEADER_BYTES + enc.payload.length);
  return {
    object,
    entry: {
      index,
      xxh64: digests.xxh64,
      strong: digests.strong,
      writer,
      plainLength: plain.length,
      storedLength: object.length,
      flags: 0,
      codec: enc.codec,
    },
  };
}

/** Checks an unencrypted stored object against its table entry (the header checks the workers' path uses) and returns the plaintext. */
export async function decodeStoredChunk(object: Buffer, expect: ChunkEntry, where: string): Promise<Buffer> {
  const fail = corruption(expect, where);
  const h = checkHeader(object, expect, where, Infinity, false);
  const payload = object.subarray(CHUNK_HEADER_BYTES);
  if (xxh64(payload) !== h.payloadXxh64) throw fail('payload checksum mismatch');
  let plain: Buffer;
  try {
    plain = await decodeChunk(h.codec, payload, h.plainLength);
  } catch (err) {
    if (err instanceof RnodeError && err.code === ErrorCodes.FORMAT_CODEC) throw err;
    throw fail((err as Error).message);
  }
  if (plain.length !== expect.plainLength) throw fail(`decoded to ${plain.length} bytes, expected ${expect.plainLength}`);
  if (xxh64(plain) !== expect.xxh64 || h.plainXxh64 !== expect.xxh64) throw fail('plaintext xxh64 mismatch');
  if (!strongDigest(plain).equals(expect.strong)) throw fail('plaintext BLAKE3 mismatch');
  return plain;
}
