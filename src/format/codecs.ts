// Codec and flag ids of stored chunks, in one place. Ids are written to disk and on the wire:
// never renumber, only add.
import { compress, uncompress } from 'lz4-napi';
import { ErrorCodes, RnodeError } from '../errors.js';

export const Codec = {
  /** Payload is the plaintext as is (used when compression would not shrink the chunk). */
  NONE: 0,
  /** LZ4 block with a 4-byte little-endian plaintext-size prefix (lz4-napi `compress`). */
  LZ4: 1,
} as const;
export type CodecId = (typeof Codec)[keyof typeof Codec];

export const CODEC_NAMES: Record<number, string> = { [Codec.NONE]: 'none', [Codec.LZ4]: 'lz4' };

export function codecByName(name: string): CodecId {
  const id = Object.entries(CODEC_NAMES).find(([, n]) => n === name)?.[0];
  if (id === undefined) {
    throw new RnodeError(ErrorCodes.USAGE, `unknown compression "${name}"; use one of: ${Object.values(CODEC_NAMES).join(', ')}`);
  }
  return Number(id) as CodecId;
}

/**
 * Encode plaintext with the preferred codec; falls back to NONE when the encoded form would not be
 * smaller, so incompressible data is stored once and restores without a decode pass.
 */
export async function encodeChunk(codec: CodecId, plain: Buffer): Promise<{ codec: CodecId; payload: Buffer }> {
  if (codec === Codec.LZ4) {
    const packed = await compress(plain);
    if (packed.length < plain.length) return { codec: Codec.LZ4, payload: packed };
  }
  return { codec: Codec.NONE, payload: plain };
}

export async function decodeChunk(codec: number, payload: Buffer, plainLength: number): Promise<Buffer> {
  switch (codec) {
    case Codec.NONE:
      return payload;
    case Codec.LZ4: {
      // The size prefix is ours to check before the decoder allocates: a hostile length must not balloon memory.
      if (payload.length < 4 || payload.readUInt32LE(0) !== plainLength) {
        throw new RnodeError(ErrorCodes.CHUNK_CORRUPT, 'lz4 payload size prefix does not match the chunk header');
      }
      try {
        return await uncompress(payload);
      } catch (err) {
        throw new RnodeError(ErrorCodes.CHUNK_CORRUPT, `lz4 payload does not decode: ${(err as Error).message}`);
      }
    }
    default:
      throw new RnodeError(ErrorCodes.FORMAT_CODEC, `unknown codec id ${codec}; this chunk was written by a newer rnode, upgrade to read it`);
  }
}
