// Content digests: xxh64 (fast, every chunk and every metadata object) and BLAKE3 (strong; confirms identity
// where a 64-bit hash would otherwise be trusted to be unique, e.g. change detection by content).
import xxhash from 'xxhash-wasm';
import { blake3 } from '@napi-rs/blake-hash';
import { STRONG_DIGEST_BYTES } from './chunk.js';

// Loaded once at import (top-level await), so no caller can hash before the wasm module is ready.
const { h64Raw } = await xxhash();

export function xxh64(data: Uint8Array): bigint {
  return h64Raw(data);
}

export function xxh64Hex(data: Uint8Array): string {
  return xxh64(data).toString(16).padStart(16, '0');
}

export function strongDigest(data: Uint8Array): Buffer {
  return blake3(Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength))
    .subarray(0, STRONG_DIGEST_BYTES);
}
