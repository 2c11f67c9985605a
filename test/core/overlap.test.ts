// Regression for issue 13's stall: each chunk held its plaintext and object buffers from read to the end of its
// durable put, so slow puts held every buffer and the codec workers sat idle while the disk worked. A store whose
// chunk puts take a fixed delay must not serialise the reads and compressions of later chunks behind earlier puts:
// checked by the order of timestamps the pipeline reports, never by wall-clock thresholds.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { pipelineDepths } from '../../src/jobs/replicate/budget.js';
import type { StageEvent } from '../../src/pipeline/stages.js';
import { FaultyStore } from '../../src/testing.js';
import type { ObjectStore } from '../../src/store/index.js';
import { MIN_PACK_SIZE } from '../../src/repository/domain.js';
import { KiB, expectRestore, fingerprint, fsStore, randomData, snap, stopCodecWorkersAtEnd, textData, tmpDir } from '../helpers/images.js';

stopCodecWorkersAtEnd(t);

const CHUNK = 64 * KiB;
const COUNT = 24;

t.test('slow puts do not serialise the compression of later chunks', async (t) => {
  const dir = tmpDir(t, 'overlap');
  const img = path.join(dir, 'disk.img');
  // Compressible (every chunk goes through LZ4) but only about half-way, so each blob fills most of a smallest pack
  // and the chunks go out in many pack puts: each chunk is half random bytes, half text.
  const text = textData(COUNT * CHUNK, 7);
  const noise = randomData(COUNT * CHUNK, 7);
  for (let i = 0; i < COUNT; i++) noise.copy(text, i * CHUNK, i * CHUNK, i * CHUNK + CHUNK / 2);
  fs.writeFileSync(img, text);
  const fp = fingerprint(img);
  const store = fsStore(path.join(dir, 'store'));
  const concurrency = 2;
  // v2: a chunk's "write" is its append to the open pack; what reaches the store is a pack put. A slow first pack put
  // (and the smallest packs, so many puts happen) stands for the slow durable puts of issue 13. One second, not less:
  // the later chunks must be read and compressed within it on a busy CI machine too.
  const slow = new FaultyStore(store).addFault('put', { match: (k) => k.includes('/packs/'), nth: 1, delayMs: 1000 });
  const packPuts: { start: number; end: number }[] = [];
  const timed: ObjectStore = Object.create(slow, {
    put: {
      value: async (key: string, ...rest: unknown[]) => {
        const start = performance.now();
        const r = await (slow.put as any).call(slow, key, ...rest);
        if (key.includes('/packs/')) packPuts.push({ start, end: performance.now() });
        return r;
      },
    },
  });
  const events: StageEvent[] = [];
  const r = await snap(timed, img, 'd', { chunkSize: CHUNK, concurrency, packSize: MIN_PACK_SIZE, onStage: (e) => events.push(e) });
  t.equal(r.chunksChanged, COUNT);

  const of = (stage: StageEvent['stage']) => new Map(events.filter((e) => e.stage === stage).map((e) => [e.index, e]));
  const encodes = of('encode');
  const writes = of('write');
  t.equal(encodes.size, COUNT, 'every chunk was encoded once');
  t.equal(writes.size, COUNT, 'every chunk was stored (appended to a pack) once');
  t.ok(packPuts.length >= 3, `the chunks went out in several pack puts (${packPuts.length})`);

  // While the first pack's put holds the store, the next chunks keep being read and compressed: at least a codec
  // worker's share (encodeDepth) of them finishes encoding between the start and the end of the first pack put.
  const { encodeDepth } = pipelineDepths(CHUNK, concurrency);
  const first = packPuts.reduce((a, b) => (b.start < a.start ? b : a));
  // Later chunks: those not appended to a pack before the first pack put started.
  const later = [...encodes.values()].filter((e) => writes.get(e.index)!.end > first.start && e.end <= first.end);
  t.ok(
    later.length >= encodeDepth,
    `${later.length} later chunks compressed while the first pack put ran (want >= ${encodeDepth}); the puts serialise the pipeline again`,
  );

  // Reads and encodes never overlap their own chunk's put: a chunk is stored only after it is encoded.
  for (const [i, w] of writes) t.ok(encodes.get(i)!.end <= w.start, `chunk ${i} encoded before it was stored`);
  t.ok(r.stages.write > 0 && r.stages.compress > 0 && r.stages.hash > 0, `stage counters filled: ${JSON.stringify(r.stages)}`);
  await expectRestore(t, store, 'd', 1, fp, dir);
});
