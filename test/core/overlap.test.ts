// Regression for issue 13's stall: each chunk held its plaintext and object buffers from read to the end of its
// durable put, so slow puts held every buffer and the codec workers sat idle while the disk worked. A store whose
// chunk puts take a fixed delay must not serialise the reads and compressions of later chunks behind earlier puts:
// checked by the order of timestamps the pipeline reports, never by wall-clock thresholds.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { pipelineDepths } from '../../src/recovery/replicate.js';
import type { StageEvent } from '../../src/pipeline/stages.js';
import { FaultyStore } from '../../src/store/index.js';
import { KiB, expectRestore, fingerprint, fsStore, snap, stopCodecWorkersAtEnd, textData, tmpDir } from '../helpers/images.js';

stopCodecWorkersAtEnd(t);

const CHUNK = 64 * KiB;
const COUNT = 24;

t.test('slow puts do not serialise the compression of later chunks', async (t) => {
  const dir = tmpDir(t, 'overlap');
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, textData(COUNT * CHUNK, 7)); // compressible: every chunk goes through LZ4
  const fp = fingerprint(img);
  const store = fsStore(path.join(dir, 'store'));
  const concurrency = 2;
  const slow = new FaultyStore(store).addFault('put', { match: (k) => k.includes('/chunks/'), delayMs: 150, times: Infinity });
  const events: StageEvent[] = [];
  const r = await snap(slow, img, 'd', { chunkSize: CHUNK, concurrency, onStage: (e) => events.push(e) });
  t.equal(r.chunksChanged, COUNT);

  const of = (stage: StageEvent['stage']) => new Map(events.filter((e) => e.stage === stage).map((e) => [e.index, e]));
  const encodes = of('encode');
  const writes = of('write');
  t.equal(encodes.size, COUNT, 'every chunk was encoded once');
  t.equal(writes.size, COUNT, 'every chunk was stored once');

  // While the first `concurrency` puts hold every put turn, the next chunks keep being read and compressed: at
  // least a codec worker's share (encodeDepth) of them finishes encoding before the first put ends.
  const { encodeDepth } = pipelineDepths(CHUNK, concurrency);
  const firstPutEnd = Math.min(...[...writes.values()].map((w) => w.end));
  const later = [...encodes.values()].filter((e) => e.index >= concurrency && e.end <= firstPutEnd);
  t.ok(later.length >= encodeDepth,
    `${later.length} later chunks compressed before the first put ended (want >= ${encodeDepth}); the puts serialise the pipeline again`);

  // Reads and encodes never overlap their own chunk's put: a chunk is stored only after it is encoded.
  for (const [i, w] of writes) t.ok(encodes.get(i)!.end <= w.start, `chunk ${i} encoded before it was stored`);
  t.ok(r.stages.write > 0 && r.stages.compress > 0 && r.stages.hash > 0, `stage counters filled: ${JSON.stringify(r.stages)}`);
  await expectRestore(t, store, 'd', 1, fp, dir);
});
