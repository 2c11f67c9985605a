// The codecs' payload encoders and decoders in plain CommonJS, so the codec worker threads (which cannot load
// TypeScript) and the main thread share one implementation. Ids and layouts are documented in codecs.ts.
'use strict';

const NONE = 0;
const LZ4 = 1;
const LZ4_BLOCKS = 2;
const SUB_BLOCK = 64 * 1024;
const KIND_RAW = 0;
const KIND_LZ4 = 1;
const KIND_ZERO = 2;
const SAMPLE = 4096;
const ZEROS = Buffer.alloc(SUB_BLOCK);

/** deps: { compressSync, uncompressSync } from lz4-napi; onGarbage(n) is told how many native bytes were dropped. */
function makeKernel(deps, onGarbage = () => {}) {
  const { compressSync, uncompressSync } = deps;

  // A sample that LZ4 cannot shrink by 3% says the block is noise (encrypted, compressed, random):
  // storing it raw saves the whole-block attempt. Two samples, so a block that only starts noisy still compresses.
  function looksIncompressible(sub) {
    if (sub.length < 4 * SAMPLE) return false;
    const head = compressSync(sub.subarray(0, SAMPLE));
    onGarbage(head.length);
    if (head.length < SAMPLE * 0.97) return false;
    const tail = compressSync(sub.subarray(sub.length - SAMPLE));
    onGarbage(tail.length);
    return tail.length >= SAMPLE * 0.97;
  }

  /** Encodes plain into out at offset; returns { codec, length } of the payload written there. */
  function encodeInto(plain, codec, out, offset) {
    if (codec === LZ4) {
      const packed = compressSync(plain);
      onGarbage(packed.length);
      if (packed.length < plain.length && offset + packed.length <= out.length) {
        packed.copy(out, offset);
        return { codec: LZ4, length: packed.length };
      }
    } else if (codec === LZ4_BLOCKS) {
      const n = Math.ceil(plain.length / SUB_BLOCK);
      let o = offset;
      const limit = Math.min(out.length, offset + plain.length); // never bigger than storing it raw
      if (o + 4 + 4 * n <= limit) {
        out.writeUInt32LE(SUB_BLOCK, o);
        o += 4;
        for (let i = 0; i < n && o >= 0; i++) {
          const sub = plain.subarray(i * SUB_BLOCK, Math.min((i + 1) * SUB_BLOCK, plain.length));
          if (sub.equals(sub.length === SUB_BLOCK ? ZEROS : ZEROS.subarray(0, sub.length))) {
            out.writeUInt32LE((KIND_ZERO << 30) >>> 0, o);
            o += 4;
            continue;
          }
          let packed;
          if (!looksIncompressible(sub)) {
            packed = compressSync(sub);
            onGarbage(packed.length);
          }
          if (packed && packed.length < sub.length) {
            if (o + 4 + packed.length > limit) { o = -1; break; }
            out.writeUInt32LE(((KIND_LZ4 << 30) | packed.length) >>> 0, o);
            packed.copy(out, o + 4);
            o += 4 + packed.length;
          } else {
            if (o + 4 + sub.length > limit) { o = -1; break; }
            out.writeUInt32LE(((KIND_RAW << 30) | sub.length) >>> 0, o);
            sub.copy(out, o + 4);
            o += 4 + sub.length;
          }
        }
        if (o >= 0 && o - offset < plain.length) return { codec: LZ4_BLOCKS, length: o - offset };
      }
    } else if (codec !== NONE) {
      throw new Error(`cannot encode with codec id ${codec}`);
    }
    plain.copy(out, offset);
    return { codec: NONE, length: plain.length };
  }

  /**
   * Decodes payload into out[0..plainLength); returns the bytes written. Every length comes from untrusted
   * bytes and is checked before it is used; a bad payload throws, it never reads or writes out of bounds.
   */
  function decodeInto(codec, payload, plainLength, out) {
    if (plainLength > out.length) throw new Error(`plaintext length ${plainLength} exceeds the buffer`);
    if (codec === NONE) {
      if (payload.length !== plainLength) throw new Error(`raw payload is ${payload.length} bytes, expected ${plainLength}`);
      payload.copy(out, 0);
      return plainLength;
    }
    if (codec === LZ4) {
      if (payload.length < 4 || payload.readUInt32LE(0) !== plainLength) throw new Error('lz4 size prefix does not match the chunk header');
      const plain = uncompressSync(payload);
      onGarbage(plain.length);
      if (plain.length !== plainLength) throw new Error(`lz4 payload decoded to ${plain.length} bytes, expected ${plainLength}`);
      plain.copy(out, 0);
      return plainLength;
    }
    if (codec === LZ4_BLOCKS) {
      if (payload.length < 4) throw new Error('lz4 block payload is truncated');
      const sub = payload.readUInt32LE(0);
      if (sub < 4096 || sub > 16 * 1024 * 1024 || (sub & (sub - 1)) !== 0) throw new Error(`lz4 block size ${sub} is invalid`);
      const n = Math.ceil(plainLength / sub);
      let o = 4;
      for (let i = 0; i < n; i++) {
        if (o + 4 > payload.length) throw new Error('lz4 block payload is truncated');
        const tag = payload.readUInt32LE(o);
        o += 4;
        const kind = tag >>> 30;
        const len = tag & 0x3fffffff;
        const start = i * sub;
        const want = Math.min(sub, plainLength - start);
        if (kind === KIND_ZERO) {
          if (len !== 0) throw new Error('zero block with a length');
          out.fill(0, start, start + want);
          continue;
        }
        if (o + len > payload.length) throw new Error('lz4 block overruns the payload');
        const data = payload.subarray(o, o + len);
        o += len;
        if (kind === KIND_RAW) {
          if (len !== want) throw new Error(`raw block is ${len} bytes, expected ${want}`);
          data.copy(out, start);
        } else if (kind === KIND_LZ4) {
          if (len < 4 || data.readUInt32LE(0) !== want) throw new Error('lz4 block size prefix is wrong');
          const plain = uncompressSync(data);
          onGarbage(plain.length);
          if (plain.length !== want) throw new Error(`lz4 block decoded to ${plain.length} bytes, expected ${want}`);
          plain.copy(out, start);
        } else {
          throw new Error(`unknown block kind ${kind}`);
        }
      }
      if (o !== payload.length) throw new Error('lz4 block payload has trailing bytes');
      return plainLength;
    }
    throw new Error(`unknown codec id ${codec}`);
  }

  return { encodeInto, decodeInto };
}

module.exports = { makeKernel, NONE, LZ4, LZ4_BLOCKS, SUB_BLOCK };
