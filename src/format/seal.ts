// The encrypted payload of a chunk (chunk format version 2): nonce || AES-256-GCM ciphertext || tag, bound to its
// chunk by the AAD. The code lives in seal-kernel.cjs, shared with the codec worker threads; layout in chunk.ts.
import { createRequire } from 'node:module';

interface SealKernel {
  NONCE_BYTES: number;
  TAG_BYTES: number;
  SEAL_OVERHEAD: number;
  blobAad(id: Uint8Array, codec: number, plainLength: number): Buffer;
  sealInPlace(cipherKey: Buffer, out: Buffer, offset: number, packedLength: number, aad: Buffer): number;
  chunkAad(f: { disk: string; version: number; codec: number; plainLength: number; plainDigest64: bigint; index: number; writer: number }): Buffer;
  keyedDigests(hasher: unknown, digestKey: Buffer, plain: Buffer): { digest64: bigint; strong: Uint8Array };
  open(cipherKey: Buffer, payload: Buffer, aad: Buffer): Buffer;
  idFilterAdd(words: Int32Array, id: Buffer): void;
  idFilterHas(words: Int32Array, id: Buffer): boolean;
}

const require = createRequire(import.meta.url);
export const SEAL_KERNEL_PATH: string = require.resolve('./seal-kernel.cjs');
export const sealKernel: SealKernel = require(SEAL_KERNEL_PATH);

export const NONCE_BYTES = sealKernel.NONCE_BYTES;
export const TAG_BYTES = sealKernel.TAG_BYTES;
/** Bytes an encrypted payload has beyond the packed (compressed) one. */
export const SEAL_OVERHEAD = sealKernel.SEAL_OVERHEAD;
