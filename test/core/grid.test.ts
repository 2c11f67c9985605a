// The chunk grid: sizes parse with units, only powers of two from 64KiB to 16MiB are chunk sizes (with a usage
// error that says what to pass), the last chunk is partial, and extents coalesce onto whole grid cells in order.
import t from 'tap';
import { ErrorCodes, RnodeError } from '../../src/errors.js';
import { ChunkGrid, allChunks, chunksOf, parseSize, validateChunkSize } from '../../src/pipeline/grid.js';
import type { Extent } from '../../src/source/types.js';

t.test('parseSize understands bytes and units', async (t) => {
  const cases: Array<[string, number | undefined]> = [
    ['1048576', 1048576],
    ['64KiB', 65536],
    ['64k', 65536],
    ['1MiB', 1048576],
    ['1m', 1048576],
    ['1MB', 1000000],
    ['16MiB', 16777216],
    ['1.5GiB', 1.5 * 1024 ** 3],
    [' 2 MiB ', 2097152],
    ['abc', undefined],
    ['', undefined],
    ['-1', undefined],
    ['1XB', undefined],
    ['1.5', undefined],
  ];
  for (const [text, want] of cases) t.equal(parseSize(text), want, JSON.stringify(text));
});

t.test('validateChunkSize accepts powers of two from 64KiB to 16MiB only', async (t) => {
  for (let n = 64 * 1024; n <= 16 * 1024 * 1024; n *= 2) {
    t.equal(validateChunkSize(n), n);
    t.equal(validateChunkSize(String(n)), n);
  }
  t.equal(validateChunkSize('64KiB'), 65536);
  t.equal(validateChunkSize('16MiB'), 16 * 1024 * 1024);
  for (const bad of ['100000', '3MiB', '32KiB', '32MiB', 'abc', '0', '', '1MB', 65535, 96 * 1024, 0, -65536, 2 ** 40]) {
    try {
      validateChunkSize(bad as string);
      t.fail(`${JSON.stringify(bad)} was accepted`);
    } catch (e) {
      t.ok(e instanceof RnodeError && e.code === ErrorCodes.BAD_CHUNK_SIZE && e.isUsage, `${JSON.stringify(bad)}: BAD_CHUNK_SIZE`);
      t.match((e as Error).message, /power of two from 64KiB to 16MiB/);
    }
  }
});

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

async function* from(extents: Extent[]): AsyncIterable<Extent> {
  yield* extents;
}

t.test('the grid has a partial last chunk', async (t) => {
  const g = new ChunkGrid(3 * 65536 + 1234, 65536);
  t.equal(g.count, 4);
  t.equal(g.offset(3), 3 * 65536);
  t.equal(g.length(3), 1234);
  t.equal(g.length(0), 65536);
  t.equal(new ChunkGrid(1, 65536).count, 1);
  t.equal(new ChunkGrid(1, 65536).length(0), 1);
  t.equal(new ChunkGrid(0, 65536).count, 0);
  t.same(await collect(allChunks(g)), [0, 1, 2, 3]);
});

t.test('extents coalesce onto whole chunks, ascending and without repeats', async (t) => {
  const C = 65536;
  const g = new ChunkGrid(10 * C + 5, C);
  t.same(await collect(chunksOf(from([]), g)), []);
  t.same(await collect(chunksOf(from([{ offset: 0, length: 1 }]), g)), [0]);
  t.same(await collect(chunksOf(from([{ offset: C - 1, length: 2 }]), g)), [0, 1], 'an extent across a boundary touches both chunks');
  t.same(await collect(chunksOf(from([{ offset: C, length: C }]), g)), [1], 'an extent that is exactly one chunk');
  t.same(
    await collect(
      chunksOf(
        from([
          { offset: 10, length: 10 },
          { offset: 100, length: 10 },
          { offset: C + 5, length: 1 },
        ]),
        g,
      ),
    ),
    [0, 1],
    'several extents in one chunk yield it once',
  );
  t.same(await collect(chunksOf(from([{ offset: 10 * C, length: 4096 }]), g)), [10], 'the partial last chunk (extent past the end is clipped)');
  t.same(await collect(chunksOf(from([{ offset: 11 * C, length: 4096 }]), g)), [], 'an extent past the end is ignored');
  t.same(
    await collect(
      chunksOf(
        from([
          { offset: 0, length: 0 },
          { offset: 3 * C, length: 2 * C + 1 },
        ]),
        g,
      ),
    ),
    [3, 4, 5],
  );
});
