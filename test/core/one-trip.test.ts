// Issue 13 after repository v2: each new chunk went to a codec worker twice (its id, then its blob), and the run's pack
// buffers were outside its memory budget. A chunk now takes one trip (id and blob together, the blob skipped when the
// id is the parent's or probably stored already, by a filter the workers share), and packPlan sizes the pack buffers
// from the budget.
import t from 'tap';
import crypto from 'node:crypto';
import { IdFilter } from '../../src/pipeline/id-filter.js';
import { codecWorkers, maxObjectBytes } from '../../src/pipeline/codec-workers.js';
import { takeShared } from '../../src/pipeline/shared-slots.js';
import { packPlan } from '../../src/jobs/replicate/budget.js';
import { Domain, MIN_PACK_SIZE } from '../../src/repository/domain.js';
import { packBufferBytes } from '../../src/repository/pack.js';
import { Codec } from '../../src/format/codecs.js';
import { KiB, MiB, stopCodecWorkersAtEnd, textData } from '../helpers/images.js';

stopCodecWorkersAtEnd(t);

t.test('the id filter has no false negatives and few false positives', async (t) => {
  const filter = new IdFilter(10_000);
  const added = Array.from({ length: 10_000 }, () => crypto.randomBytes(32));
  for (const id of added) filter.add(id);
  t.ok(
    added.every((id) => filter.has(id)),
    'every id added is found',
  );
  let falsePositives = 0;
  for (let i = 0; i < 10_000; i++) if (filter.has(crypto.randomBytes(32))) falsePositives++;
  t.ok(falsePositives < 500, `${falsePositives} of 10000 other ids look known (under 5%)`);
});

t.test('one trip: the worker returns the id and the blob, or skips the blob of a known or unchanged chunk', async (t) => {
  const workers = codecWorkers();
  const domain = Domain.of(undefined);
  const chunk = 64 * KiB;
  const plain = takeShared(chunk);
  textData(chunk, 3).copy(plain);
  const out = takeShared(maxObjectBytes(chunk));
  const id = domain.chunkId(plain);
  const filter = new IdFilter(16);

  const fresh = await workers.idEncodeBlob(plain, out, Codec.LZ4, { idName: domain.name, known: filter.words });
  t.ok(fresh.id.equals(id), "the id is the domain's chunk id of the plaintext");
  t.notOk(fresh.skipped, 'a new chunk is encoded in the same trip');
  if (fresh.skipped) return;
  t.ok(fresh.payloadLength > 0 && fresh.payloadLength < chunk, `text compresses (${fresh.payloadLength} bytes)`);
  const back = takeShared(chunk);
  const check = await workers.decodeBlob(out.subarray(0, fresh.payloadLength), back, {
    codec: fresh.codec,
    plainLength: chunk,
    chunkId: id,
    idName: domain.name,
    payloadXxh64: fresh.payloadXxh64,
  });
  t.ok(check.id.equals(id) && back.equals(plain), 'the blob decodes to the chunk');

  filter.add(id);
  out.fill(0);
  const known = await workers.idEncodeBlob(plain, out, Codec.LZ4, { idName: domain.name, known: filter.words });
  t.equal(known.skipped, true, 'a chunk the filter knows is not encoded');
  t.ok(known.id.equals(id));
  t.ok(
    out.every((b) => b === 0),
    'nothing was written to the object buffer',
  );
  const unchanged = await workers.idEncodeBlob(plain, out, Codec.LZ4, { idName: domain.name, parentId: id });
  t.equal(unchanged.skipped, true, "a chunk with the parent's id is not encoded");
  const changed = await workers.idEncodeBlob(plain, out, Codec.LZ4, { idName: domain.name, parentId: crypto.randomBytes(32) });
  t.notOk(changed.skipped, 'another parent id does not skip it');
});

t.test("pack buffers are sized from the run's budget", async (t) => {
  const within = (p: { packSize: number; buffers: number }, budget: number) => p.buffers * packBufferBytes(p.packSize) <= budget;
  const byDefault = packPlan(16 * MiB, false);
  t.same(byDefault, { packSize: 16 * MiB, buffers: 3 }, 'the default 64 MiB: three 16 MiB packs (one filling, two in puts)');
  t.ok(within(byDefault, 64 * MiB));
  const agentRun = packPlan(16 * MiB, false, 8 * MiB);
  t.equal(agentRun.buffers, 2);
  t.ok(agentRun.packSize < 4 * MiB && agentRun.packSize % (64 * KiB) === 0, `a small budget makes smaller packs (${agentRun.packSize})`);
  t.ok(within(agentRun, 8 * MiB), 'two of them fit the budget');
  t.equal(packPlan(16 * MiB, false, 1).packSize, MIN_PACK_SIZE, 'never below the smallest pack');
  t.same(packPlan(16 * MiB, true, 8 * MiB), { packSize: 16 * MiB, buffers: 2 }, 'a pack size the caller gave is kept');
  t.equal(packPlan(MIN_PACK_SIZE, true).buffers, 3, 'small packs: still at most three buffers');
});
