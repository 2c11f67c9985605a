// Repository v2 format modules: names round-trip through classify; envelopes round-trip sealed and unsealed and every
// tamper (edit, move to another place, other kind, strip the seal, truncate) is the named error; packs, index objects,
// table v3 segments and manifests v4 round-trip and reject tampering; the ChunkIndex finds every id by its full 32
// bytes (ids sharing their first 8 bytes stay apart) and a large one loads with the event loop let in; a property
// test round-trips random packs and indexes.
import fc from 'fast-check';
import { randomBytes } from 'node:crypto';
import t from 'tap';
import type { Test } from 'tap';
import { EncryptionKey } from '../../src/crypto/keys.js';
import { ErrorCodes, RnodeError } from '../../src/errors.js';
import { TableFlag, type ChunkEntry } from '../../src/format/table.js';
import { MANIFEST_FORMAT, type PointManifest } from '../../src/format/manifest.js';
import { Domain, PLAIN_ID_KEY, decodeConfig, encodeConfig } from '../../src/repository/domain.js';
import { EnvelopeKind, envelopeContext, openEnvelope, sealEnvelope } from '../../src/repository/envelope.js';
import { ChunkIndex, decodeIndex, encodeIndex, type ChunkLocation } from '../../src/repository/index-file.js';
import { classify, keyOf, layout, r2, vmLayout } from '../../src/repository/names.js';
import { BlobFlag, PackBuilder, decodePack, newObjectId, readPackTrailer } from '../../src/repository/pack.js';
import { blobAad } from '../../src/format/seal.js';
import {
  decodeManifestV4,
  decodeTableV3,
  encodeManifestV4,
  encodeTableV3,
  segmentDigest,
  decodePendingV2,
  encodePendingV2,
} from '../../src/repository/point-format.js';
import { MemoryStore } from '../../src/store/memory/memory-store.js';
import { addressAligned } from '../../src/native/index.js';

const key = EncryptionKey.fromBytes(Buffer.alloc(32, 7));
const other = EncryptionKey.fromBytes(Buffer.alloc(32, 8));
const plain = Domain.of(undefined);
const sealed = Domain.of(key);

function expectCode(t: Test, fn: () => unknown, code: string, what: string): void {
  try {
    fn();
    t.fail(`${what}: expected ${code}`);
  } catch (err) {
    t.ok(err instanceof RnodeError, `${what}: an RnodeError (${(err as Error).message})`);
    t.equal((err as RnodeError).code, code, `${what}: ${code}`);
  }
}

t.test('domains and names', async (t) => {
  t.equal(plain.name, 'plain');
  t.match(sealed.name, /^k[0-9a-f]{16}$/);
  t.not(sealed.name, Domain.of(other).name, 'one domain per key');
  t.equal(plain.dname('disk-1'), 'disk-1');
  t.match(sealed.dname('disk-1'), /^[0-9a-f]{32}$/, 'an encrypted domain names disks by a keyed name');
  t.not(sealed.dname('disk-1'), sealed.dname('disk-2'));
  t.ok(plain.idKey.equals(PLAIN_ID_KEY));
  t.not(sealed.idKey.toString('hex'), PLAIN_ID_KEY.toString('hex'));
  t.equal(sealed.chunkId(Buffer.from('x')).length, 32);
  t.not(sealed.chunkId(Buffer.from('x')).toString('hex'), plain.chunkId(Buffer.from('x')).toString('hex'), 'ids are keyed per domain');
  const id = newObjectId();
  const keys = [
    r2.config('plain'),
    r2.pack('plain', id),
    r2.index(sealed.name, id),
    r2.point('plain', 'd1', 3),
    r2.segment('plain', 'd1', 3, 0, 2),
    r2.pending(sealed.name, sealed.dname('d1'), 9),
    r2.prune('plain', 'marks-1'),
    layout.point('d1', 1),
    layout.segment('d1', 1, 0, 0),
    layout.chunk('d1', 1, 5),
    layout.pending('d1', 2),
    layout.lease('d1'),
    layout.encryptionMarker('d1'),
    vmLayout.point('vm-1', 1),
    vmLayout.partial('vm-1', 1, 123),
    vmLayout.access('vm-1'),
  ];
  for (const k of keys) {
    const h = classify(k);
    t.ok(h, `${k} classifies`);
    t.equal(keyOf(h!), k, `${k} round-trips`);
  }
  t.equal(r2.pack('plain', id), `r2/plain/packs/${id.slice(0, 2)}/${id}`, 'packs fan out by the first two hex digits');
  for (const k of [
    'r2/plain/packs/00/xyz',
    'r2/other/config',
    'r2/plain/packs/ab/' + id,
    'r2/plain/disks/-x/points/0000000001',
    'r2/plain/prune/A',
    'disks/d/points/1.json',
    'r2/plain/config/x',
    'junk',
    'r2/kzz/config',
  ]) {
    t.equal(classify(k), undefined, `${k} is not an object of the format`);
  }
});

t.test('envelopes: round trips and every tamper named', async (t) => {
  const body = Buffer.from('hello metadata');
  const ctx = envelopeContext.manifest('plain', 'd1', 1);
  for (const [name, k] of [
    ['unsealed', undefined],
    ['sealed', key],
  ] as const) {
    const b = sealEnvelope(EnvelopeKind.MANIFEST, ctx, body, k);
    t.same(openEnvelope(b, EnvelopeKind.MANIFEST, ctx, 'x', k), body, `${name} round-trips`);
    const bad = k ? ErrorCodes.METADATA_FORGED : ErrorCodes.MANIFEST_CORRUPT;
    expectCode(
      t,
      () => openEnvelope(b, EnvelopeKind.MANIFEST, envelopeContext.manifest('plain', 'd1', 2), 'x', k),
      bad,
      `${name}: moved to another point`,
    );
    expectCode(t, () => openEnvelope(b, EnvelopeKind.TABLE, ctx, 'x', k), bad, `${name}: read as another kind`);
    const flipped = Buffer.from(b);
    flipped[12] ^= 1;
    expectCode(t, () => openEnvelope(flipped, EnvelopeKind.MANIFEST, ctx, 'x', k), bad, `${name}: a flipped bit`);
    expectCode(t, () => openEnvelope(b.subarray(0, b.length - 1), EnvelopeKind.MANIFEST, ctx, 'x', k), bad, `${name}: truncated`);
    const v = Buffer.from(b);
    v[4] = 9;
    expectCode(t, () => openEnvelope(v, EnvelopeKind.MANIFEST, ctx, 'x', k), ErrorCodes.FORMAT_VERSION, `${name}: unknown version`);
  }
  const s = sealEnvelope(EnvelopeKind.MANIFEST, ctx, body, key);
  expectCode(t, () => openEnvelope(s, EnvelopeKind.MANIFEST, ctx, 'x', other), ErrorCodes.METADATA_FORGED, 'another key');
  expectCode(t, () => openEnvelope(s, EnvelopeKind.MANIFEST, ctx, 'x'), ErrorCodes.KEY_REQUIRED, 'sealed, read without the key');
  const u = sealEnvelope(EnvelopeKind.MANIFEST, ctx, body);
  expectCode(t, () => openEnvelope(u, EnvelopeKind.MANIFEST, ctx, 'x', key), ErrorCodes.METADATA_FORGED, 'an unsealed object in an encrypted domain');
  t.notOk(s.includes(body), 'a sealed body is not readable');
});

t.test('config', async (t) => {
  for (const d of [plain, sealed]) {
    const c = { ...d.config, domain: d.name };
    t.same(decodeConfig(encodeConfig(c, d.key), d.name, d.key), c);
  }
  const store = new MemoryStore();
  const a = await Domain.openOrCreate(store, key, 8 * 1024 * 1024);
  const b = await Domain.openOrCreate(store, key, 32 * 1024 * 1024);
  t.equal(a.config.packSize, 8 * 1024 * 1024);
  t.equal(b.config.packSize, 8 * 1024 * 1024, 'the config is written once');
  t.equal(await Domain.open(store, undefined), undefined, 'the plain domain has no config yet');
});

function blobOf(n: number, seed: number): Buffer {
  return Buffer.alloc(n, seed & 0xff);
}

t.test('packs: round trip, ranged trailer read, tampering', async (t) => {
  for (const d of [plain, sealed]) {
    const pb = new PackBuilder(d.name, 4096, d.key);
    const blobs = [blobOf(100, 1), blobOf(3000, 2), blobOf(50, 3)];
    for (const [i, b] of blobs.entries()) {
      t.equal(pb.wouldOverflow(b.length), false);
      pb.add(b, { id: d.chunkId(Buffer.from([i])), plainLength: 1000 + i, codec: 0 });
    }
    t.equal(pb.wouldOverflow(2000), true, 'the next blob would pass the target');
    const pack = pb.finish();
    const entries = decodePack(pack, d.name, pb.id, d.key);
    t.equal(entries.length, 3);
    entries.forEach((e, i) => {
      t.same(pack.subarray(e.offset, e.offset + e.length), blobs[i], `blob ${i} at its range`);
      t.equal(e.flags, d.key ? BlobFlag.SEALED : 0);
    });
    const store = new MemoryStore();
    await store.put(r2.pack(d.name, pb.id), pack);
    t.same((await readPackTrailer(store, d.name, pb.id, d.key)).entries, entries, 'trailer read by ranges');
    const bad = d.key ? ErrorCodes.METADATA_FORGED : ErrorCodes.MANIFEST_CORRUPT;
    expectCode(t, () => decodePack(pack, d.name, newObjectId(), d.key), bad, `${d.name}: a pack read under another id`);
    expectCode(
      t,
      () => decodePack(pack.subarray(0, pack.length - 10), d.name, pb.id, d.key),
      ErrorCodes.MANIFEST_CORRUPT,
      `${d.name}: truncated pack`,
    );
    const edited = Buffer.from(pack);
    edited[pack.length - 20] ^= 1;
    expectCode(t, () => decodePack(edited, d.name, pb.id, d.key), bad, `${d.name}: edited trailer`);
    await store.put(r2.pack(d.name, pb.id), pack.subarray(0, pack.length - 1));
    await t.rejects(readPackTrailer(store, d.name, pb.id, d.key), { code: ErrorCodes.MANIFEST_CORRUPT }, `${d.name}: truncated pack in the store`);
  }
  t.equal(blobAad(Buffer.alloc(32), 1, 5).length, 13 + 32 + 5);
});

t.test('a pack is built in page-aligned memory, so the fs store writes it with O_DIRECT', async (t) => {
  // From malloc, a pack buffer started 16 bytes past a page: every pack went through the page cache, which was 31% of
  // the CPU samples of a full replicate.
  const pb = new PackBuilder(plain.name, 64 * 1024);
  t.ok(addressAligned(pb.buffer, 4096), 'a new pack buffer');
  pb.add(Buffer.alloc(1000, 1), { id: plain.chunkId(Buffer.from('a')), plainLength: 1000, codec: 0 });
  pb.add(Buffer.alloc(200 * 1024, 2), { id: plain.chunkId(Buffer.from('b')), plainLength: 200 * 1024, codec: 0 });
  t.ok(addressAligned(pb.buffer, 4096), 'grown for a blob larger than the pack');
  const pack = pb.finish();
  t.ok(addressAligned(pack, 4096), 'the finished pack object');
  t.same(
    decodePack(pack, plain.name, pb.id, undefined).map((e) => e.length),
    [1000, 200 * 1024],
    'and it decodes',
  );
});

function loc(d: Domain, i: number, packId = newObjectId()): ChunkLocation {
  return {
    packId,
    entry: {
      id: d.chunkId(Buffer.from(`chunk ${i}`)),
      offset: i * 10,
      length: 10,
      plainLength: 4096,
      codec: 1,
      flags: d.key ? 1 : 0,
      payloadXxh64: BigInt(i),
    },
  };
}

t.test('index objects and the ChunkIndex', async (t) => {
  for (const d of [plain, sealed]) {
    const id = newObjectId();
    const locs = Array.from({ length: 20 }, (_, i) => loc(d, i));
    const b = encodeIndex(d, id, locs);
    const back = decodeIndex(b, d, id);
    t.same(
      back.map((l) => ({ packId: l.packId, entry: l.entry })),
      locs,
      `${d.name}: round trip`,
    );
    const bad = d.key ? ErrorCodes.METADATA_FORGED : ErrorCodes.MANIFEST_CORRUPT;
    expectCode(t, () => decodeIndex(b, d, newObjectId()), bad, `${d.name}: an index moved to another id`);
    // Swapping two entries inside a sealed index is an edit of its ciphertext.
    const swapped = Buffer.from(b);
    const o = 8 + (d.key ? 12 : 0) + 4;
    swapped.copy(swapped, o, o + 80, o + 160);
    expectCode(t, () => decodeIndex(swapped, d, id), bad, `${d.name}: swapped entries`);
    const store = new MemoryStore();
    await store.put(r2.index(d.name, id), b);
    const ix = await ChunkIndex.load(store, d);
    t.equal(ix.size, 20);
    for (const l of locs) {
      const found = ix.lookup(l.entry.id);
      t.equal(found.length, 1);
      t.equal(found[0].packId, l.packId);
      t.equal(found[0].indexId, id);
    }
    t.same(ix.lookup(d.chunkId(Buffer.from('absent'))), []);
  }
  // Identity is the full 32 bytes: ids equal in their first 8 bytes (a forced 64-bit collision) stay apart.
  const a = Buffer.alloc(32, 1);
  const b = Buffer.from(a);
  b[31] = 2;
  const ix = new ChunkIndex([{ packId: newObjectId(), entry: { ...loc(plain, 1).entry, id: a } }]);
  t.equal(ix.lookup(b).length, 0, 'an id sharing 31 bytes is another chunk');
  t.equal(ix.has(b), false);
  ix.add({ packId: newObjectId(), entry: { ...loc(plain, 2).entry, id: b } });
  t.equal(ix.lookup(a).length, 1);
  t.equal(ix.lookup(b).length, 1, 'added during a run');
  t.equal([...ix.locations()].length, 2);
});

t.test('a ChunkIndex of many ids (sorted by the radix passes, not the small-index sort) is in order and finds each', async (t) => {
  // 40,000 ids whose first four bytes take only 1,000 values: the order within a prefix comes from the whole ids.
  const n = 40_000;
  const locs = Array.from({ length: n }, (_, i) => {
    const id = randomBytes(32);
    id.writeUInt32BE(((i % 1000) * 2654435761) >>> 0, 0);
    return { packId: newObjectId(), entry: { ...loc(plain, i).entry, id } };
  });
  const ix = new ChunkIndex(locs);
  const ids = [...ix.ids()];
  t.equal(ids.length, n);
  let ordered = true;
  for (let i = 1; i < ids.length; i++) if (Buffer.compare(ids[i - 1], ids[i]) >= 0) ordered = false;
  t.ok(ordered, 'ids in strictly ascending order');
  let found = 0;
  for (const l of locs) if (ix.lookup(l.entry.id).some((x) => x.packId === l.packId && x.entry.offset === l.entry.offset)) found++;
  t.equal(found, n, 'every location found');
});

t.test('a large ChunkIndex loads in slices: the event loop runs while its entries are sorted', async (t) => {
  // Regression: the sort of a domain's entries held the event loop for the whole of it (0.6 s at 300,000 chunks, over
  // a second at a million): an agent missed its Management Server's heartbeats and its jobs were dispatched again.
  const n = 300_000;
  const perObject = 4096;
  const store = new MemoryStore();
  const locs: ChunkLocation[] = [];
  for (let k = 0; k < n; k += perObject) {
    const packId = newObjectId();
    const part = Array.from({ length: Math.min(perObject, n - k) }, (_, i) => ({
      packId,
      entry: { id: randomBytes(32), offset: i * 10, length: 10, plainLength: 4096, codec: 1, flags: 0, payloadXxh64: BigInt(k + i) },
    }));
    const id = newObjectId();
    await store.put(r2.index(plain.name, id), encodeIndex(plain, id, part));
    locs.push(...part);
  }
  let ticks = 0;
  let ticking = true;
  const tick = () => {
    ticks++;
    if (ticking) setImmediate(tick);
  };
  setImmediate(tick);
  // Ticks counted from the last index object read: those of the sort alone, not of the reads.
  const objects = Math.ceil(n / perObject);
  let reads = 0;
  let ticksAtLastRead = -1;
  const get = store.get.bind(store);
  store.get = async (key, range) => {
    const b = await get(key, range);
    if (++reads === objects) ticksAtLastRead = ticks;
    return b;
  };
  const ix = await ChunkIndex.load(store, plain);
  ticking = false;
  t.ok(ticksAtLastRead >= 0, 'every index object read');
  t.ok(ticks - ticksAtLastRead >= 3, `the event loop ran during the sort (${ticks - ticksAtLastRead} turns)`);
  t.equal(ix.size, n);
  let found = 0;
  for (const l of locs) if (ix.lookup(l.entry.id).some((x) => x.packId === l.packId && x.entry.offset === l.entry.offset)) found++;
  t.equal(found, n, 'every location found');
});

t.test('property: the ChunkIndex sorts ids that share prefixes and finds every location of each', async (t) => {
  // Ids from a two-letter alphabet share long prefixes (the load sorts on the first four bytes, then whole ids),
  // and repeated ids have several locations (a repack, two writers).
  const idOf = (bits: number[]) => Buffer.from(Array.from({ length: 32 }, (_, k) => bits[k % bits.length]));
  fc.assert(
    fc.property(fc.array(fc.tuple(fc.array(fc.constantFrom(0, 255), { minLength: 1, maxLength: 40 }), fc.nat(1000)), { maxLength: 60 }), (specs) => {
      const locs = specs.map(([bits, n]) => ({ packId: newObjectId(), entry: { ...loc(plain, n).entry, id: idOf(bits) } }));
      const ix = new ChunkIndex(locs);
      const ids = [...ix.ids()];
      for (let i = 1; i < ids.length; i++) if (Buffer.compare(ids[i - 1], ids[i]) > 0) return false;
      for (const l of locs) {
        const want = locs
          .filter((x) => x.entry.id.equals(l.entry.id))
          .map((x) => `${x.packId}:${x.entry.offset}`)
          .sort();
        const got = ix
          .lookup(l.entry.id)
          .map((x) => `${x.packId}:${x.entry.offset}`)
          .sort();
        if (JSON.stringify(got) !== JSON.stringify(want)) return false;
      }
      return true;
    }),
    { numRuns: 200 },
  );
  t.pass('ids in order, every location found');
});

t.test('property: random packs and indexes round-trip', async (t) => {
  fc.assert(
    fc.property(fc.array(fc.uint8Array({ minLength: 1, maxLength: 300 }), { minLength: 0, maxLength: 30 }), fc.boolean(), (blobs, enc) => {
      const d = enc ? sealed : plain;
      const pb = new PackBuilder(d.name, 2048, d.key);
      blobs.forEach((b, i) => pb.add(b, { id: d.chunkId(Buffer.from([i, b.length & 0xff])), plainLength: b.length, codec: 0 }));
      const pack = pb.finish();
      const entries = decodePack(pack, d.name, pb.id, d.key);
      if (entries.length !== blobs.length) return false;
      const id = newObjectId();
      const back = decodeIndex(
        encodeIndex(
          d,
          id,
          entries.map((e) => ({ packId: pb.id, entry: e })),
        ),
        d,
        id,
      );
      return entries.every(
        (e, i) => Buffer.from(pack.subarray(e.offset, e.offset + e.length)).equals(Buffer.from(blobs[i])) && back[i].entry.id.equals(e.id),
      );
    }),
    { numRuns: 60 },
  );
  t.pass('round trips hold');
});

t.test('table v3 and manifest v4', async (t) => {
  for (const d of [plain, sealed]) {
    const place = { disk: 'd1', point: 3, parent: 2, generation: 0, segment: 0 };
    const entries: ChunkEntry[] = [
      {
        index: 0,
        xxh64: 0n,
        strong: Buffer.alloc(16),
        writer: 3,
        plainLength: 4096,
        storedLength: 0,
        flags: 0,
        codec: 0,
        id: d.chunkId(Buffer.from('a')),
      },
      { index: 5, xxh64: 0n, strong: Buffer.alloc(16), writer: 0, plainLength: 4096, storedLength: 0, flags: TableFlag.ZERO, codec: 0 },
    ];
    const seg = encodeTableV3(d, place, entries);
    const back = decodeTableV3(seg, d, place, 'seg', segmentDigest(seg));
    t.same(
      back.map((e) => [e.index, e.id?.toString('hex'), e.flags]),
      entries.map((e) => [e.index, e.id?.toString('hex'), e.flags]),
      `${d.name}: table round trip`,
    );
    const bad = d.key ? ErrorCodes.METADATA_FORGED : ErrorCodes.MANIFEST_CORRUPT;
    expectCode(t, () => decodeTableV3(seg, d, { ...place, segment: 1 }, 'seg'), bad, `${d.name}: segment moved`);
    expectCode(t, () => decodeTableV3(seg, d, { ...place, parent: 1 }, 'seg'), bad, `${d.name}: segment of another parent`);
    const older = encodeTableV3(d, place, entries.slice(0, 1));
    expectCode(t, () => decodeTableV3(older, d, place, 'seg', segmentDigest(seg)), bad, `${d.name}: a replayed segment of the same place`);

    const m: PointManifest = {
      format: MANIFEST_FORMAT,
      version: 4,
      disk: 'd1',
      point: 3,
      parent: 2,
      full: false,
      createdAt: new Date().toISOString(),
      diskSize: 1 << 20,
      chunkSize: 4096,
      source: { kind: 'raw', location: '/x' },
      table: { generation: 0, records: 2, segments: [{ key: 'ignored', records: 2, first: 0, last: 5, digest: segmentDigest(seg) }] },
      ...(d.key ? { encryption: { alg: 'aes-256-gcm' as const, keyId: d.key.keyId } } : {}),
      stats: {
        chunksTotal: 256,
        chunksChanged: 2,
        chunksZero: 1,
        bytesRead: 0,
        bytesWritten: 0,
        seconds: 0,
        bytesDeduplicated: 0,
        chunksDeduplicated: 0,
        packsWritten: 1,
      },
    };
    const mb = encodeManifestV4(d, m);
    const mm = decodeManifestV4(mb, d, 'd1', 3);
    t.equal(mm.table.segments[0].key, r2.segment(d.name, d.dname('d1'), 3, 0, 0), 'segment keys come from names');
    t.same(mm.r2, { domain: d.name, dname: d.dname('d1') });
    t.equal(mm.stats.packsWritten, 1);
    expectCode(t, () => decodeManifestV4(mb, d, 'd1', 4), bad, `${d.name}: a manifest swapped into another point`);
    expectCode(t, () => decodeManifestV4(mb, d, 'd2', 3), bad, `${d.name}: a manifest swapped into another disk`);
    if (d.key) t.notOk(mb.includes(Buffer.from('d1')), 'the disk id is not readable in a sealed manifest');
    const ck = { point: 3, nextIndex: 7 };
    t.same(decodePendingV2(encodePendingV2(d, 'd1', 3, ck), d, 'd1', 3), ck);
    expectCode(t, () => decodePendingV2(encodePendingV2(d, 'd1', 3, ck), d, 'd1', 4), bad, `${d.name}: a checkpoint of another point`);
  }
});
