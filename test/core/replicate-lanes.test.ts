// Issue 13: the rnode CLI defers a replicate's codec worker threads until its plan needs them (src/cli/one-job.ts).
// A worker thread costs a node start of its own; an incremental compared by change hashes sends only its changed
// chunks to the codec lanes, and the main thread's lane takes them. Every other replicate starts the workers.
import t from 'tap';
import path from 'node:path';
import { codecWorkers } from '../../src/pipeline/codec-workers.js';
import {
  changeFiveChunks,
  expectRestore,
  fingerprint,
  fsStore,
  KiB,
  mixedChunkImage,
  snap,
  stopCodecWorkersAtEnd,
  tmpDir,
} from '../helpers/images.js';

// As the CLI makes them, before any job asks for the process's lanes.
const lanes = codecWorkers({ inline: true, deferWorkers: true });
stopCodecWorkersAtEnd(t);

const CHUNK = 64 * KiB;

t.test('an incremental compared by change hashes starts no worker thread; a full point does', async (t) => {
  const dir = tmpDir(t, 'replicate-lanes');
  const img = path.join(dir, 'disk.img');
  const store = fsStore(path.join(dir, 'store'));
  const changeHashDir = path.join(dir, 'cache');
  const size = mixedChunkImage(img, CHUNK);

  // A first point (of another disk) is full: every chunk is encoded, so the workers start with its plan.
  const other = await snap(store, img, 'other', { chunkSize: CHUNK, changeHashDir: path.join(dir, 'other-cache') });
  t.ok(other.full, 'a full point');
  t.equal(lanes.threads, 1, 'its plan started the deferred worker');
  await lanes.close();

  const fresh = codecWorkers({ inline: true, deferWorkers: true });
  t.not(fresh, lanes, 'a new set of lanes for the next process-like run');
  await snap(store, img, 'd', { chunkSize: CHUNK, changeHashDir });
  await fresh.close();
  const again = codecWorkers({ inline: true, deferWorkers: true });
  changeFiveChunks(img, CHUNK, size);
  const p2 = await snap(store, img, 'd', { changeHashDir });
  t.equal(p2.comparedBy, 'change-hashes', 'compared by change hashes');
  t.equal(p2.chunksChanged, 5, 'the five chunks written');
  t.equal(again.threads, 0, 'no worker thread started: the main thread encoded them');
  t.equal(again.inlineOps, 4, 'the four that hold data were encoded on the main thread (one turned to zeros)');
  await expectRestore(t, store, 'd', p2.point, fingerprint(img), dir);
});
