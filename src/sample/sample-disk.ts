// Generates deterministic sample disks for the default job, tests and benchmarks: per MiB one third random
// bytes, one third compressible text, one third zeros, optionally with unallocated holes.
import fsp from 'node:fs/promises';

const MiB = 1024 * 1024;
const WORDS = (
  'replication node chunk block recovery point snapshot extent store verify restore stream ' +
  'credit commit manifest cloud bucket vmware qemu bitmap lz4 hash the quick brown fox jumps over lazy dog'
).split(' ');

/** xorshift128+: fast, seedable, good enough to make incompressible bytes. */
export class Prng {
  private s0: bigint;
  private s1: bigint;
  constructor(seed: number) {
    this.s0 = (BigInt(seed) * 0x9e3779b97f4a7c15n + 1n) & 0xffffffffffffffffn;
    this.s1 = ((this.s0 ^ 0xdeadbeefcafebaben) * 0xbf58476d1ce4e5b9n) & 0xffffffffffffffffn;
  }
  private nextBig(): bigint {
    let x = this.s0;
    const y = this.s1;
    this.s0 = y;
    x ^= (x << 23n) & 0xffffffffffffffffn;
    this.s1 = x ^ y ^ (x >> 17n) ^ (y >> 26n);
    return (this.s1 + y) & 0xffffffffffffffffn;
  }
  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Number(this.nextBig() % BigInt(n));
  }
  /** Fills buf with random bytes (a fresh 32-bit state per call keeps it fast). */
  fill(buf: Uint8Array): void {
    let x = Number(this.nextBig() & 0xffffffffn) | 1;
    const words = new Uint32Array(buf.buffer, buf.byteOffset, buf.byteLength >>> 2);
    for (let i = 0; i < words.length; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      words[i] = x >>> 0;
    }
    for (let i = words.length * 4; i < buf.byteLength; i++) buf[i] = this.int(256);
  }
}

let textPool: Buffer | undefined;

/** 256 KiB of words, made once; text thirds are slices of it at random offsets (fast, still compressible). */
function wordText(): Buffer {
  if (textPool) return textPool;
  const prng = new Prng(12345);
  const parts: string[] = [];
  let n = 0;
  while (n < 256 * 1024) {
    const w = WORDS[prng.int(WORDS.length)] + (prng.int(12) === 0 ? '\n' : ' ');
    parts.push(w);
    n += w.length;
  }
  textPool = Buffer.from(parts.join(''), 'latin1');
  return textPool;
}

/** One chunk of the mixed pattern: [random | text | zeros]. */
export function fillMixed(buf: Buffer, prng: Prng): void {
  const third = Math.floor(buf.length / 3);
  const r = third & ~3;
  prng.fill(new Uint8Array(buf.buffer, buf.byteOffset, r));
  const text = wordText();
  let p = r;
  const end = 2 * third;
  while (p < end) {
    const from = prng.int(text.length - 4096);
    const n = Math.min(512 + prng.int(3584), end - p);
    text.copy(buf, p, from, from + n);
    p += n;
  }
  buf.fill(0, end);
}

export interface SampleDiskOptions {
  size: number;
  seed?: number;
  /** Every n-th MiB is left as a hole (never written); 0 for none. */
  holeEvery?: number;
}

/** Writes a sparse sample disk image; holes stay unallocated. */
export async function generateSampleDisk(path: string, opts: SampleDiskOptions): Promise<void> {
  const prng = new Prng(opts.seed ?? 1);
  const fh = await fsp.open(path, 'w');
  try {
    await fh.truncate(opts.size);
    const buf = Buffer.alloc(MiB);
    for (let off = 0, i = 0; off < opts.size; off += MiB, i++) {
      if (opts.holeEvery && i % opts.holeEvery === opts.holeEvery - 1) continue;
      const len = Math.min(MiB, opts.size - off);
      fillMixed(buf, prng);
      await fh.write(buf, 0, len, off);
    }
  } finally {
    await fh.close();
  }
}

/** Overwrites `count` scattered 4 KiB blocks with random bytes; returns their offsets. */
export async function scatterWrites(path: string, size: number, count: number, seed = 2): Promise<number[]> {
  const prng = new Prng(seed);
  const fh = await fsp.open(path, 'r+');
  const offsets: number[] = [];
  try {
    const buf = Buffer.alloc(4096);
    const blocks = Math.floor(size / 4096);
    for (let i = 0; i < count; i++) {
      const off = prng.int(blocks) * 4096;
      prng.fill(buf);
      await fh.write(buf, 0, 4096, off);
      offsets.push(off);
    }
  } finally {
    await fh.close();
  }
  return offsets;
}
