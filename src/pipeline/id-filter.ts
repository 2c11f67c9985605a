// Chunk ids a domain may hold, shared with the codec workers: a chunk that is probably stored already is not
// compressed on its way through a worker. A hint only: the chunk index on the main thread decides. The workers test
// the same words with idFilterHas (src/pipeline/codec-ops.ts).

/** Bits per expected id: two bits set per id, so about 1.4% false positives at the expected count. */
const BITS_PER_ID = 16;
const MIN_WORDS = 2 ** 11; // 8 KiB
const MAX_WORDS = 2 ** 20; // 4 MiB: past ~2M ids, false positives grow (each costs its chunk a second trip)

export class IdFilter {
  /** The bits, over a SharedArrayBuffer: passed to the workers with each chunk, never copied. */
  readonly words: Int32Array;

  constructor(expectedIds: number) {
    let words = MIN_WORDS;
    while (words < MAX_WORDS && words * 32 < expectedIds * BITS_PER_ID) words *= 2;
    this.words = new Int32Array(new SharedArrayBuffer(words * 4));
  }

  add(id: Buffer): void {
    idFilterAdd(this.words, id);
  }

  /** False: the id was never added. True: it probably was. */
  has(id: Buffer): boolean {
    return idFilterHas(this.words, id);
  }
}

/**
 * Two bits per id, taken from its first 8 bytes (ids are keyed hashes, so uniform), in words of a power of two. No
 * false negatives for ids added before the test; a false positive only costs the chunk a second trip.
 */
function idFilterBits(words: Int32Array, id: Buffer): [number, number] {
  const mask = words.length * 32 - 1;
  return [id.readUInt32LE(0) & mask, id.readUInt32LE(4) & mask];
}

function idFilterAdd(words: Int32Array, id: Buffer): void {
  for (const b of idFilterBits(words, id)) Atomics.or(words, b >>> 5, 1 << (b & 31));
}

export function idFilterHas(words: Int32Array, id: Buffer): boolean {
  return idFilterBits(words, id).every((b) => (Atomics.load(words, b >>> 5) & (1 << (b & 31))) !== 0);
}
