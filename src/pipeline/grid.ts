// The fixed chunk grid: chunk i covers [i*chunkSize, min((i+1)*chunkSize, diskSize)). Extents from a source
// are coalesced onto it, so every stored chunk is a whole grid cell and points compose by index.
import { ErrorCodes, RnodeError } from '../errors.js';
import type { Extent } from '../source/types.js';

export const MIN_CHUNK_SIZE = 64 * 1024;
export const MAX_CHUNK_SIZE = 16 * 1024 * 1024;
export const DEFAULT_CHUNK_SIZE = 1024 * 1024;

const UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1024,
  kb: 1000,
  kib: 1024,
  m: 1024 ** 2,
  mb: 1000 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gb: 1000 ** 3,
  gib: 1024 ** 3,
  t: 1024 ** 4,
  tb: 1000 ** 4,
  tib: 1024 ** 4,
};

/** Parses "1048576", "1MiB", "64k", "1.5GiB" into bytes; undefined when it is not a size. */
export function parseSize(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  if (!m) return undefined;
  const unit = UNITS[m[2].toLowerCase()];
  if (unit === undefined) return undefined;
  const v = Number(m[1]) * unit;
  return Number.isSafeInteger(v) ? v : undefined;
}

export function validateChunkSize(value: string | number): number {
  const n = typeof value === 'number' ? value : parseSize(value);
  if (n === undefined || n < MIN_CHUNK_SIZE || n > MAX_CHUNK_SIZE || (n & (n - 1)) !== 0) {
    throw new RnodeError(
      ErrorCodes.BAD_CHUNK_SIZE,
      `chunk size ${JSON.stringify(String(value))} is not valid: use a power of two from 64KiB to 16MiB, e.g. --chunk-size 1MiB`,
    );
  }
  return n;
}

export class ChunkGrid {
  readonly count: number;
  constructor(
    readonly diskSize: number,
    readonly chunkSize: number,
  ) {
    this.count = Math.ceil(diskSize / chunkSize);
  }
  offset(index: number): number {
    return index * this.chunkSize;
  }
  length(index: number): number {
    return Math.min(this.chunkSize, this.diskSize - index * this.chunkSize);
  }
}

/** Chunk indexes touched by sorted extents, ascending and without repeats. */
export async function* chunksOf(extents: AsyncIterable<Extent>, grid: ChunkGrid): AsyncIterable<number> {
  for await (const batch of chunkBatchesOf(extents, grid)) yield* batch;
}

/**
 * chunksOf() in batches of at most `max` indexes (a replicate steps through them without a trip through the event loop
 * per chunk). A batch is handed on once it holds `min` indexes, so a slow source of extents does not hold up the
 * chunks it has named while it fetches more.
 */
export async function* chunkBatchesOf(extents: AsyncIterable<Extent>, grid: ChunkGrid, min = 64, max = 1024): AsyncIterable<number[]> {
  let next = 0; // lowest index not yet yielded
  let batch: number[] = [];
  for await (const e of extents) {
    if (e.length <= 0) continue;
    const end = Math.min(e.offset + e.length, grid.diskSize);
    if (end <= e.offset) continue;
    const first = Math.max(Math.floor(e.offset / grid.chunkSize), next);
    const last = Math.floor((end - 1) / grid.chunkSize);
    for (let i = first; i <= last; i++) {
      batch.push(i);
      if (batch.length >= max) {
        yield batch;
        batch = [];
      }
    }
    if (last + 1 > next) next = last + 1;
    if (batch.length >= min) {
      yield batch;
      batch = [];
    }
  }
  if (batch.length) yield batch;
}

/** Every index of the grid, for sources that cannot say what is allocated. */
export async function* allChunks(grid: ChunkGrid): AsyncIterable<number> {
  for (let i = 0; i < grid.count; i++) yield i;
}
