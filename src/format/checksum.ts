// Content digests: xxh64 (fast, every chunk and every metadata object) and BLAKE3 (strong; confirms identity
// where a 64-bit hash would otherwise be trusted to be unique, e.g. change detection by content).
import { blake3, nativeXxh64 } from '../native/index.js';
import { STRONG_DIGEST_BYTES } from './chunk.js';

// The addon's xxh64, the codec workers' default too (the same digests as xxhash-wasm: test/native.test.ts). Loading
// and compiling xxhash-wasm here cost every process 10-15 ms of start-up; the workers keep it as their fallback.
export function xxh64(data: Uint8Array): bigint {
  return nativeXxh64(data);
}

export function xxh64Hex(data: Uint8Array): string {
  return xxh64(data).toString(16).padStart(16, '0');
}

export function strongDigest(data: Uint8Array): Buffer {
  return blake3(Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength)).subarray(0, STRONG_DIGEST_BYTES);
}
