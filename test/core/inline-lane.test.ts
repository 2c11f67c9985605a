// Issue 13: a one-job process (the rnode CLI) runs one codec lane on its main thread and one worker thread fewer
// (src/pipeline/inline-lane.ts). The main thread's lane must answer exactly as a worker does, keep working after an op
// fails, and share the work with the workers without taking all of it.
import t from 'tap';
import { CodecWorkers, maxObjectBytes } from '../../src/pipeline/codec-workers.js';
import { sharedAligned } from '../../src/native/index.js';
import { Domain } from '../../src/repository/domain.js';
import { Codec } from '../../src/format/codecs.js';
import { KiB, randomData, textData } from '../helpers/images.js';

const CHUNK = 256 * KiB;
const domain = Domain.of(undefined);

/** A mixed chunk (random, text and zero thirds) in shared memory. */
function chunk(seed: number): Buffer {
  const b = sharedAligned(CHUNK);
  randomData(CHUNK / 4, seed).copy(b, 0);
  textData(CHUNK / 2, seed).copy(b, CHUNK / 4);
  return b;
}

/** id-encodes then decodes each chunk on lanes; what each step answered, comparable across lanes. */
async function roundTrips(lanes: CodecWorkers, chunks: Buffer[]) {
  return Promise.all(
    chunks.map(async (plain) => {
      const out = sharedAligned(maxObjectBytes(CHUNK));
      const r = await lanes.idEncodeBlob(plain, out, Codec.LZ4, { idName: domain.name });
      if (r.skipped) throw new Error('nothing was known: no chunk may be skipped');
      const back = sharedAligned(CHUNK);
      const d = await lanes.decodeBlob(out.subarray(0, r.payloadLength), back, {
        codec: r.codec,
        plainLength: CHUNK,
        chunkId: r.id,
        idName: domain.name,
        payloadXxh64: r.payloadXxh64,
      });
      return {
        id: r.id.toString('hex'),
        codec: r.codec,
        blob: out.subarray(0, r.payloadLength).toString('base64'),
        payloadXxh64: r.payloadXxh64,
        decodedId: d.id.toString('hex'),
        exact: back.equals(plain),
      };
    }),
  );
}

t.test("the main thread's lane answers as a worker thread does", async (t) => {
  const inline = new CodecWorkers(1, { inline: true });
  const worker = new CodecWorkers(1);
  t.teardown(() => Promise.all([inline.close(), worker.close()]));
  const chunks = [1, 2, 3, 4].map(chunk);
  const [a, b] = await Promise.all([roundTrips(inline, chunks), roundTrips(worker, chunks)]);
  t.same(a, b, 'the same ids, codecs, blobs and payload digests');
  t.ok(
    a.every((r) => r.exact && r.decodedId === r.id && r.id === domain.chunkId(chunks[a.indexOf(r)]).toString('hex')),
    'each blob decodes to its chunk, whose id is the domain id of the plaintext',
  );
  t.equal(inline.inlineOps, 8, 'the single lane was this thread: 4 encodes and 4 decodes');
  t.equal(worker.inlineOps, 0, 'workers only without the option');
});

t.test('a failed op fails only its own call; the lane goes on', async (t) => {
  const inline = new CodecWorkers(1, { inline: true });
  t.teardown(() => inline.close());
  const plain = chunk(5);
  const out = sharedAligned(maxObjectBytes(CHUNK));
  const r = await inline.idEncodeBlob(plain, out, Codec.LZ4, { idName: domain.name });
  if (r.skipped) throw new Error('unexpected skip');
  out[r.payloadLength >> 1] ^= 0xff;
  const bad = await inline
    .decodeBlob(out.subarray(0, r.payloadLength), sharedAligned(CHUNK), {
      codec: r.codec,
      plainLength: CHUNK,
      chunkId: r.id,
      idName: domain.name,
      payloadXxh64: r.payloadXxh64,
    })
    .then(
      () => undefined,
      (err: Error) => err,
    );
  t.ok(bad instanceof Error, `a damaged blob is refused (${bad?.message})`);
  const again = await roundTrips(inline, [chunk(6)]);
  t.ok(again[0].exact, 'the next op on the lane succeeds');
});

t.test('with a worker beside it, the main thread takes a share of the work, not all of it', async (t) => {
  const lanes = new CodecWorkers(2, { inline: true });
  t.teardown(() => lanes.close());
  await lanes.ready();
  const chunks = Array.from({ length: 24 }, (_, i) => chunk(10 + i));
  const results = await roundTrips(lanes, chunks);
  t.ok(
    results.every((r) => r.exact),
    'every chunk round-trips',
  );
  const ops = lanes.inlineOps;
  t.ok(ops > 0 && ops < 48, `${ops} of 48 ops ran on the main thread`);
});

t.test('deferred worker threads start when asked, or once the main thread falls behind; never started, none is waited for', async (t) => {
  const idle = new CodecWorkers(2, { inline: true, deferWorkers: true });
  for (const c of [chunk(40), chunk(41)]) t.ok((await roundTrips(idle, [c]))[0].exact, 'one op at a time: the main thread keeps up');
  t.equal(idle.threads, 0, 'no worker thread started');
  t.equal(idle.inlineOps, 4, 'the main thread ran every op');
  let timer: NodeJS.Timeout | undefined;
  const closed = await Promise.race([
    idle.close().then(() => 'closed'),
    new Promise((r) => {
      timer = setTimeout(() => r('waiting'), 5000);
    }),
  ]);
  clearTimeout(timer);
  t.equal(closed, 'closed', 'close() does not wait for workers that never started');

  const busy = new CodecWorkers(2, { inline: true, deferWorkers: true });
  t.teardown(() => busy.close());
  const results = await roundTrips(
    busy,
    Array.from({ length: 12 }, (_, i) => chunk(50 + i)),
  );
  t.ok(
    results.every((r) => r.exact),
    'every chunk round-trips',
  );
  t.equal(busy.threads, 1, 'twelve ops at once: the deferred worker started');
  await busy.ready();

  const asked = new CodecWorkers(3, { inline: true, deferWorkers: true });
  t.teardown(() => asked.close());
  let ready = false;
  const readiness = asked.ready().then(() => (ready = true));
  await new Promise((r) => setTimeout(r, 50));
  t.notOk(ready, 'ready() waits for workers not yet started');
  asked.start();
  asked.start();
  t.equal(asked.threads, 2, 'start() starts the other lanes, once');
  await readiness;
  t.ok(ready, 'ready() once they have loaded');
});

t.test('close() lets the ops in flight finish before it stops the workers', async (t) => {
  const lanes = new CodecWorkers(2);
  await lanes.ready();
  const results = roundTrips(
    lanes,
    Array.from({ length: 8 }, (_, i) => chunk(70 + i)),
  );
  await lanes.close();
  const r = await results.then(
    (all) => all,
    (err: Error) => err,
  );
  t.ok(Array.isArray(r) && r.every((x) => x.exact), `every op sent before close() completed (${r instanceof Error ? r.message : 'exact'})`);
});

t.test("close() also waits for an op that a settled op's continuation sends (an encode's decode)", async (t) => {
  const lanes = new CodecWorkers(2);
  await lanes.ready();
  // One chunk: its encode is the only op in flight when close() is called; its decode is sent as the encode settles.
  const result = roundTrips(lanes, [chunk(90)]);
  await lanes.close();
  const r = await result.then(
    (all) => all,
    (err: Error) => err,
  );
  t.ok(Array.isArray(r) && r[0].exact, `the decode sent after close() completed (${r instanceof Error ? r.message : 'exact'})`);
});
