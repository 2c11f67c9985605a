// Dedup over the peer link (issue 14): the sender loads the receiving node's index objects through the link (list +
// get) when a replicate starts and sends only chunks the node's repository does not hold, in packs, with no request
// per chunk. Ten clones of one image with 10% changed each cost less than 2.2x one clone in bytes on the wire, and
// store less than 2.2x one clone on the node; the last clone restores byte-exact over the link.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { KiB, MiB, expectRestore, fingerprint, listFiles, randomData, snap, stopCodecWorkersAtEnd, tmpDir } from '../helpers/images.js';
import { remote, startNode } from './helpers.js';

stopCodecWorkersAtEnd(t);

const CHUNK = 64 * KiB;
const SIZE = 16 * MiB;
const CHUNKS = SIZE / CHUNK;

function storedBytes(dir: string): number {
  return listFiles(dir).reduce((n, f) => n + fs.statSync(path.join(dir, f)).size, 0);
}

/** Clone i of the base image: a tenth of its chunks replaced with its own random data, spread over the image. */
function clone(base: Buffer, i: number): Buffer {
  const c = Buffer.from(base);
  for (let k = 0; k < CHUNKS / 10; k++) randomData(CHUNK, 1000 + i * 100 + k).copy(c, ((k * 10 + i) % CHUNKS) * CHUNK);
  return c;
}

t.test('ten clones over ws:// cost < 2.2x one clone on the wire and on the node', async (t) => {
  const dir = tmpDir(t, 'ws-dedup');
  // Random data: nothing compresses, so every stored or sent byte is a chunk that was not deduplicated.
  const base = randomData(SIZE, 7);
  const img = path.join(dir, 'clone.img');

  // One clone alone, to an empty node: the baseline.
  fs.writeFileSync(img, clone(base, 0));
  const one = await startNode(t, path.join(dir, 'one'));
  const rsOne = remote(t, one.url);
  await snap(rsOne, img, 'clone-0', { chunkSize: CHUNK });
  const wireOne = rsOne.counters.bytesSent;
  const storedOne = storedBytes(one.storeDir);
  t.ok(wireOne >= SIZE, `one clone sends its whole image (${wireOne} bytes)`);

  // Ten clones, one after another, to another empty node.
  const ten = await startNode(t, path.join(dir, 'ten'));
  const rs = remote(t, ten.url);
  for (let i = 0; i < 10; i++) {
    fs.writeFileSync(img, clone(base, i));
    const frames = rs.counters.framesSent;
    const r = await snap(rs, img, `clone-${i}`, { chunkSize: CHUNK });
    // Clone 1 also sends the base chunks clone 0 replaced; later clones only their own tenth.
    if (i > 0)
      t.ok(
        r.chunksDeduplicated >= CHUNKS * (i === 1 ? 0.75 : 0.85),
        `clone ${i}: ${r.chunksDeduplicated} of ${CHUNKS} chunks were already on the node`,
      );
    const sent = rs.counters.framesSent - frames;
    t.ok(sent < CHUNKS / 2, `clone ${i}: ${sent} frames for ${CHUNKS} chunks (no request per chunk)`);
  }
  const wireTen = rs.counters.bytesSent;
  const storedTen = storedBytes(ten.storeDir);
  t.comment(
    `wire: one clone ${wireOne} bytes, ten clones ${wireTen} (${(wireTen / wireOne).toFixed(2)}x); ` +
      `node store: ${storedOne} vs ${storedTen} (${(storedTen / storedOne).toFixed(2)}x)`,
  );
  t.ok(wireTen < 2.2 * wireOne, `ten clones sent ${(wireTen / wireOne).toFixed(2)}x the bytes of one clone (< 2.2x)`);
  t.ok(storedTen < 2.2 * storedOne, `ten clones stored ${(storedTen / storedOne).toFixed(2)}x one clone on the node (< 2.2x)`);
  t.equal(ten.server.stats.chunkPuts, 0, 'no legacy chunk objects crossed the link');
  t.ok(
    ten.server.stats.packPuts > 0 && ten.server.stats.packPuts < 40,
    `${ten.server.stats.packPuts} packs carried the ~${Math.round((2 * SIZE) / CHUNK)} chunks sent`,
  );
  t.equal(ten.server.stats.rejected, 0);
  t.ok(ten.server.stats.peakSessionBytes <= ten.server.windowBytes, 'the node never held more than the window');
  await expectRestore(t, rs, 'clone-9', 'latest', fingerprint(img), dir, 'the last clone over the link');
});
