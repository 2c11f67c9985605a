// Codec and flag ids of stored chunks, in one place. Ids are written to disk and on the wire:
// never renumber, only add. The encoders themselves live in codec-kernel.ts, which the codec worker threads run;
// they use the system's liblz4 through the addon, or lz4-napi where liblz4 is missing (same block format either way).
//
//   0 none        the payload is the plaintext
//   1 lz4         one LZ4 block with a 4-byte little-endian plaintext-size prefix (as lz4-napi `compress` writes)
//   2 lz4-blocks  u32 sub-block size (64 KiB), then per sub-block a u32 tag (bits 31-30: 0 raw, 1 lz4, 2 zero;
//                 bits 29-0: stored length) and its bytes. Zero and noisy sub-blocks skip the compressor.
import { ErrorCodes, RnodeError } from '../errors.js';

export const Codec = {
  NONE: 0,
  LZ4: 1,
  LZ4_BLOCKS: 2,
} as const;
export type CodecId = (typeof Codec)[keyof typeof Codec];

export const CODEC_NAMES: Record<number, string> = { [Codec.NONE]: 'none', [Codec.LZ4]: 'lz4', [Codec.LZ4_BLOCKS]: 'lz4-blocks' };

/**
 * What new chunks are written with unless a policy says otherwise. One LZ4 block per chunk: on the bench image's text
 * liblz4 compresses a whole MiB 10% faster than sixteen 64 KiB sub-blocks, stores 15% fewer bytes (a match may reach
 * back past 64 KiB), and decodes 28% faster; it crosses noise and zero runs at several GB/s by itself, so skipping
 * them (lz4-blocks) no longer pays. A full replicate of the bench image: 0.95x the wall time of lz4-blocks, 10 pairs.
 */
export const DEFAULT_CODEC: CodecId = Codec.LZ4;

/** Every codec name a user or a Management Server may ask for, the default first (the control protocol's enum). */
export const CODEC_NAME_LIST: readonly string[] = [
  CODEC_NAMES[DEFAULT_CODEC],
  ...Object.entries(CODEC_NAMES)
    .filter(([id]) => Number(id) !== DEFAULT_CODEC)
    .sort(([a], [b]) => Number(b) - Number(a))
    .map(([, n]) => n),
];

/** Bytes a payload may take beyond the plaintext, in the worst case, for any codec that encoders choose. */
export function payloadOverhead(plainLength: number): number {
  return Math.ceil(plainLength / 255) + 16 + 4 + 4 * Math.ceil(plainLength / 4096);
}

export function codecByName(name: string): CodecId {
  const id = Object.entries(CODEC_NAMES).find(([, n]) => n === name)?.[0];
  if (id === undefined) {
    throw new RnodeError(ErrorCodes.USAGE, `unknown compression "${name}"; use one of: ${Object.values(CODEC_NAMES).join(', ')}`);
  }
  return Number(id) as CodecId;
}

export function isKnownCodec(id: number): boolean {
  return CODEC_NAMES[id] !== undefined;
}
