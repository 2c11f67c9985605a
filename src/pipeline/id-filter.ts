// Chunk ids a domain may hold, shared with the codec workers: a chunk that is probably stored already is not
// compressed on its way through a worker. A hint only: the chunk index on the main thread decides. The bit layout is
// idFilterAdd/idFilterHas in seal-kernel.cjs, the code the workers run.
import { sealKernel } from '../format/seal.js';

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
    sealKernel.idFilterAdd(this.words, id);
  }

  /** False: the id was never added. True: it probably was. */
  has(id: Buffer): boolean {
    return sealKernel.idFilterHas(this.words, id);
  }
}
