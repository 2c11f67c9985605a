// The codecs' payload encoders and decoders: what the codec worker threads (src/pipeline/codec-worker.ts) run, and
// the main-thread decoder of `rnode check`. Ids and layouts are documented in codecs.ts, the one table of codec ids.
import { Codec, type CodecId } from './codecs.js';

const { NONE, LZ4, LZ4_BLOCKS } = Codec;
const SUB_BLOCK = 64 * 1024;
const KIND_RAW = 0;
const KIND_LZ4 = 1;
const KIND_ZERO = 2;
const SAMPLE = 4096;
const ZEROS = Buffer.alloc(SUB_BLOCK);

/**
 * compressSync and uncompressSync from lz4-napi, and optionally from the addon block: { compress(src, dst),
 * decompress(src, dst) } (liblz4, in place, about twice as fast), copy(src, dst) and zero(dst) (memcpy and memset:
 * V8 moves bytes of the shared chunk slots word by word). Both LZ4s write the same block format, so either decodes
 * the other's output; lz4-napi is needed only without the block.
 */
export interface KernelDeps {
  compressSync?: (data: Buffer) => Buffer;
  uncompressSync?: (data: Buffer) => Buffer;
  block?: { compress(src: Uint8Array, dst: Uint8Array): number; decompress(src: Uint8Array, dst: Uint8Array): number };
  copy?: (src: Buffer, dst: Buffer) => void;
  zero?: (dst: Buffer) => void;
}

export interface CodecKernel {
  /** Encodes plain into out at offset; returns { codec, length } of the payload written there. */
  encodeInto(plain: Buffer, codec: number, out: Buffer, offset: number): { codec: CodecId; length: number };
  /** Decodes payload into out[0..plainLength); returns the bytes written. */
  decodeInto(codec: number, payload: Buffer, plainLength: number, out: Buffer): number;
}

/** onGarbage(n) is told how many native bytes lz4-napi left for the GC. */
export function makeKernel(deps: KernelDeps, onGarbage: (bytes: number) => void = () => {}): CodecKernel {
  const { block } = deps;
  const compressSync = deps.compressSync ?? missingLz4Napi;
  const uncompressSync = deps.uncompressSync ?? missingLz4Napi;
  const copy =
    deps.copy ??
    ((src: Buffer, dst: Buffer) => {
      src.copy(dst);
    });
  const zero =
    deps.zero ??
    ((dst: Buffer) => {
      dst.fill(0);
    });

  // A sample that LZ4 cannot shrink by 3% says the block is noise (encrypted, compressed, random):
  // storing it raw saves the whole-block attempt. Two samples, so a block that only starts noisy still compresses.
  // Only lz4-napi needs this: liblz4 skips noise at several GB/s by itself.
  function looksIncompressible(sub: Buffer): boolean {
    if (block || sub.length < 4 * SAMPLE) return false;
    const head = compressSync(sub.subarray(0, SAMPLE));
    onGarbage(head.length);
    if (head.length < SAMPLE * 0.97) return false;
    const tail = compressSync(sub.subarray(sub.length - SAMPLE));
    onGarbage(tail.length);
    return tail.length >= SAMPLE * 0.97;
  }

  /**
   * Writes plain as an LZ4 block with its u32 size prefix at out[at..end); returns the bytes written, or -1
   * when that would not be smaller than plain or would not fit.
   */
  function packInto(plain: Buffer, out: Buffer, at: number, end: number): number {
    const room = Math.min(end - at, plain.length - 1) - 4;
    if (room <= 0) return -1;
    if (block) {
      const n = block.compress(plain, out.subarray(at + 4, at + 4 + room));
      if (n <= 0) return -1;
      out.writeUInt32LE(plain.length, at);
      return n + 4;
    }
    const packed = compressSync(plain);
    onGarbage(packed.length);
    if (packed.length > room + 4) return -1;
    copy(packed, out.subarray(at));
    return packed.length;
  }

  /** Decodes a size-prefixed LZ4 block into out[start, start + want); throws unless it yields exactly want bytes. */
  function unpackInto(data: Buffer, out: Buffer, start: number, want: number, what: string): void {
    if (data.length < 4 || data.readUInt32LE(0) !== want) throw new Error(`${what} size prefix does not match the chunk header`);
    if (block) {
      const n = block.decompress(data.subarray(4), out.subarray(start, start + want));
      if (n !== want) throw new Error(n < 0 ? `${what} is not a valid LZ4 block` : `${what} decoded to ${n} bytes, expected ${want}`);
      return;
    }
    const plain = uncompressSync(data);
    onGarbage(plain.length);
    if (plain.length !== want) throw new Error(`${what} decoded to ${plain.length} bytes, expected ${want}`);
    copy(plain, out.subarray(start));
  }

  function encodeInto(plain: Buffer, codec: number, out: Buffer, offset: number): { codec: CodecId; length: number } {
    if (codec === LZ4) {
      const n = looksIncompressible(plain) ? -1 : packInto(plain, out, offset, out.length);
      if (n > 0) return { codec: LZ4, length: n };
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
          const n = looksIncompressible(sub) ? -1 : packInto(sub, out, o + 4, limit);
          if (n > 0) {
            out.writeUInt32LE(((KIND_LZ4 << 30) | n) >>> 0, o);
            o += 4 + n;
          } else {
            if (o + 4 + sub.length > limit) {
              o = -1;
              break;
            }
            out.writeUInt32LE(((KIND_RAW << 30) | sub.length) >>> 0, o);
            copy(sub, out.subarray(o + 4));
            o += 4 + sub.length;
          }
        }
        if (o >= 0 && o - offset < plain.length) return { codec: LZ4_BLOCKS, length: o - offset };
      }
    } else if (codec !== NONE) {
      throw new Error(`cannot encode with codec id ${codec}`);
    }
    copy(plain, out.subarray(offset));
    return { codec: NONE, length: plain.length };
  }

  /**
   * Decodes payload into out[0..plainLength); returns the bytes written. Every length comes from untrusted
   * bytes and is checked before it is used; a bad payload throws, it never reads or writes out of bounds.
   */
  function decodeInto(codec: number, payload: Buffer, plainLength: number, out: Buffer): number {
    if (plainLength > out.length) throw new Error(`plaintext length ${plainLength} exceeds the buffer`);
    if (codec === NONE) {
      if (payload.length !== plainLength) throw new Error(`raw payload is ${payload.length} bytes, expected ${plainLength}`);
      copy(payload, out);
      return plainLength;
    }
    if (codec === LZ4) {
      unpackInto(payload, out, 0, plainLength, 'lz4 payload');
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
          zero(out.subarray(start, start + want));
          continue;
        }
        if (o + len > payload.length) throw new Error('lz4 block overruns the payload');
        const data = payload.subarray(o, o + len);
        o += len;
        if (kind === KIND_RAW) {
          if (len !== want) throw new Error(`raw block is ${len} bytes, expected ${want}`);
          copy(data, out.subarray(start));
        } else if (kind === KIND_LZ4) {
          unpackInto(data, out, start, want, 'lz4 block');
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

function missingLz4Napi(): never {
  throw new Error('the codec kernel has neither liblz4 nor lz4-napi');
}
