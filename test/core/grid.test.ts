// The chunk grid: sizes parse with units, only powers of two from 64KiB to 16MiB are chunk sizes (with a usage
// error that says what to pass), the last chunk is partial, and extents coalesce onto whole grid cells in order, in
// batches that never wait for extents not yet known.
import t from 'tap';
import { ErrorCodes, RnodeError } from '../../src/errors.js';
import { ChunkGrid, allChunks, chunkBatchesOf, chunksOf, parseSize, validateChunkSize } from '../../src/pipeline/grid.js';
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

t.test('chunk batches: bounded, in order, and handed on before the next extent is waited for', async (t) => {
  const C = 65536;
  const g = new ChunkGrid(5000 * C, C);
  const extents = [
    { offset: 0, length: 3000 * C }, // more than one batch
    { offset: 3100 * C + 7, length: 10 }, // a single chunk: waits for more
    { offset: 3200 * C, length: 70 * C },
  ];
  const batches = await collect(chunkBatchesOf(from(extents), g, 64, 1024));
  t.ok(
    batches.every((b) => b.length > 0 && b.length <= 1024),
    'every batch holds 1 to 1024 indexes',
  );
  t.same(batches.flat(), await collect(chunksOf(from(extents), g)), 'the batches are chunksOf() cut up');
  t.same(
    batches.map((b) => b.length),
    [1024, 1024, 952, 71],
    'a batch below 64 indexes waits for the next extent',
  );

  // The first batch comes out while the source is still fetching its next extent.
  let release!: () => void;
  const held = new Promise<void>((r) => (release = r));
  async function* slow(): AsyncIterable<Extent> {
    yield { offset: 0, length: 100 * C };
    await held;
    yield { offset: 200 * C, length: C };
  }
  const it = chunkBatchesOf(slow(), g)[Symbol.asyncIterator]();
  const first = await Promise.race([it.next(), new Promise<'waited'>((r) => setTimeout(() => r('waited'), 2000))]);
  t.not(first, 'waited', 'the first batch did not wait for the second extent');
  if (first !== 'waited') t.equal((first.value as number[]).length, 100);
  release();
  t.same((await it.next()).value, [200]);
  t.ok((await it.next()).done);
});
