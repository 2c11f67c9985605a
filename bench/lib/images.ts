// The disks the benchmark reads: the mixed image (kept in page cache so every contender reads it alike), the
// ~1% change between points, and a large sparse image whose allocated data is a small scattered part.
import fsp from 'node:fs/promises';
import { fillMixed, generateSampleDisk, Prng, scatterWrites } from 'replication-node/testing';

const MiB = 1024 * 1024;

export async function makeMixedImage(file: string, size: number): Promise<void> {
  await generateSampleDisk(file, { size, seed: 1, holeEvery: 0 });
}

/** Reads the whole file once, so it is served from page cache (the caller syncs first so nothing is dirty). */
export async function warm(file: string): Promise<void> {
  const fh = await fsp.open(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(8 * MiB);
    for (let pos = 0; ;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) break;
      pos += bytesRead;
    }
  } finally {
    await fh.close();
  }
}

/**
 * Changes ~`fraction` of the chunks with scatterWrites (one random 4 KiB block per pick). Returns how many
 * distinct chunks were touched, which is what an incremental point must find.
 */
export async function changeChunks(file: string, size: number, chunkSize: number, fraction: number, seed: number): Promise<number> {
  const chunks = Math.ceil(size / chunkSize);
  const offsets = await scatterWrites(file, size, Math.max(1, Math.round(chunks * fraction)), seed);
  return new Set(offsets.map((o) => Math.floor(o / chunkSize))).size;
}

/** A sparse disk of `size` bytes: `data` bytes of the mixed pattern in 1 MiB pieces spread over it, the rest holes. */
export async function makeSparseImage(file: string, size: number, data: number): Promise<void> {
  const pieces = Math.max(1, Math.floor(data / MiB));
  const stride = Math.floor(size / pieces / MiB) * MiB;
  const prng = new Prng(3);
  const buf = Buffer.alloc(MiB);
  const fh = await fsp.open(file, 'w');
  try {
    await fh.truncate(size);
    for (let i = 0; i < pieces; i++) {
      const at = i * stride + prng.int(stride / MiB) * MiB;
      fillMixed(buf, prng);
      await fh.write(buf, 0, MiB, at);
    }
  } finally {
    await fh.close();
  }
}

/** Bytes the file really occupies (allocated blocks). */
export async function allocatedBytes(file: string): Promise<number> {
  return (await fsp.stat(file)).blocks * 512;
}

/** Byte-compares two files; returns the first differing offset or -1. Holes read as zeros, as on a disk. */
export async function firstDifference(a: string, b: string): Promise<number> {
  const [fa, fb] = await Promise.all([fsp.open(a, 'r'), fsp.open(b, 'r')]);
  try {
    const [sa, sb] = await Promise.all([fa.stat(), fb.stat()]);
    if (sa.size !== sb.size) return Math.min(sa.size, sb.size);
    const ba = Buffer.allocUnsafe(8 * MiB);
    const bb = Buffer.allocUnsafe(8 * MiB);
    for (let pos = 0; pos < sa.size;) {
      const [ra, rb] = await Promise.all([fa.read(ba, 0, ba.length, pos), fb.read(bb, 0, bb.length, pos)]);
      const n = Math.min(ra.bytesRead, rb.bytesRead);
      if (n === 0) return pos;
      if (!ba.subarray(0, n).equals(bb.subarray(0, n))) {
        for (let i = 0; i < n; i++) if (ba[i] !== bb[i]) return pos + i;
      }
      pos += n;
    }
    return -1;
  } finally {
    await Promise.all([fa.close(), fb.close()]);
  }
}
