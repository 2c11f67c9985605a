// Repository v2 objects through a receiving node: a plain domain's config, packs (one large enough to travel in
// parts), index, table segment and manifest are accepted and stored byte-exact; a blob that does not hash to its id,
// a damaged blob, a truncated pack, an index naming a pack the node lacks, a manifest over a missing or replayed
// segment, unconditional commits and sealed/unsealed objects in the wrong domain are each rejected and not stored.
// An encrypted domain's sealed objects are checked for structure only (the node holds no key).
import t from 'tap';
import type { Test } from 'tap';
import { compress } from 'lz4-napi';
import { EncryptionKey } from '../../src/crypto/keys.js';
import { Codec } from '../../src/format/codecs.js';
import { MANIFEST_FORMAT, type PointManifest } from '../../src/format/manifest.js';
import type { ChunkEntry } from '../../src/format/table.js';
import { Domain, encodeConfig, type RepoConfig } from '../../src/repository/domain.js';
import { encodeIndex } from '../../src/repository/index-file.js';
import { r2 } from '../../src/repository/names.js';
import { PackBuilder } from '../../src/repository/pack.js';
import { encodeManifestV4, encodePendingV2, encodeTableV3, segmentDigest } from '../../src/repository/point-format.js';
import { MemoryStore } from '../../src/store/memory/memory-store.js';
import { RemoteStore, TransportErrorCodes } from '../../src/transport/index.js';
import { MiB, KiB, randomData, textData, tmpDir } from '../helpers/images.js';
import { remote, startNode } from './helpers.js';

const plain = Domain.of(undefined);
const key = EncryptionKey.fromBytes(Buffer.alloc(32, 3));
const sealed = Domain.of(key);

function config(d: Domain): Buffer {
  const c: RepoConfig = {
    format: 'rnode-repository',
    version: 2,
    domain: d.name,
    packSize: 16 * MiB,
    createdAt: new Date(0).toISOString(),
    ...(d.key ? { encryption: { alg: 'aes-256-gcm' as const, keyId: d.key.keyId } } : {}),
  };
  return encodeConfig(c, d.key);
}

/** A plain pack of the given plaintexts (odd ones LZ4-compressed); `id` may lie about a blob's identity. */
async function plainPack(chunks: Buffer[], lie?: { at: number; id: Buffer }): Promise<{ pack: Buffer; builder: PackBuilder }> {
  const b = new PackBuilder('plain', 64 * MiB);
  for (const [i, c] of chunks.entries()) {
    const id = lie?.at === i ? lie.id : plain.chunkId(c);
    if (i % 2 === 1) b.add(await compress(c), { id, plainLength: c.length, codec: Codec.LZ4 });
    else b.add(c, { id, plainLength: c.length, codec: Codec.NONE });
  }
  return { pack: b.finish(), builder: b };
}

function manifest(d: Domain, disk: string, point: number, seg: Buffer, records: number): PointManifest {
  return {
    format: MANIFEST_FORMAT,
    version: 4,
    disk,
    point,
    parent: null,
    full: true,
    createdAt: new Date().toISOString(),
    diskSize: records * 64 * KiB,
    chunkSize: 64 * KiB,
    source: { kind: 'raw', location: '/x' },
    table: { generation: 0, records, segments: [{ key: 'from-names', records, first: 0, last: records - 1, digest: segmentDigest(seg) }] },
    ...(d.key ? { encryption: { alg: 'aes-256-gcm' as const, keyId: d.key.keyId } } : {}),
    stats: {
      chunksTotal: records,
      chunksChanged: records,
      chunksZero: 0,
      bytesRead: 0,
      bytesWritten: 0,
      seconds: 0,
      bytesDeduplicated: 0,
      chunksDeduplicated: 0,
      packsWritten: 1,
    },
  };
}

async function rejects(
  t: Test,
  rs: RemoteStore,
  store: MemoryStore,
  k: string,
  data: Buffer,
  why: RegExp,
  what: string,
  ifNoneMatch = true,
): Promise<void> {
  await t.rejects(rs.put(k, data, { ifNoneMatch }), { code: TransportErrorCodes.REJECTED, message: why }, what);
  t.equal(
    await store.head(k).then(
      () => true,
      () => false,
    ),
    false,
    `${what}: not stored`,
  );
}

t.test('plain domain: every object kind accepted whole; forgeries and damage rejected', async (t) => {
  const store = new MemoryStore();
  const { url, server } = await startNode(t, tmpDir(t, 'ws-r2'), { store });
  const rs = remote(t, url);

  await rejects(t, rs, store, r2.config('plain'), config(plain), /if-none-match/, 'a config without if-none-match', false);
  await rs.put(r2.config('plain'), config(plain), { ifNoneMatch: true });

  const chunks = [randomData(64 * KiB, 1), textData(64 * KiB, 2), randomData(64 * KiB, 3), textData(64 * KiB, 4)];
  const { pack, builder } = await plainPack(chunks);
  const packKey = r2.pack('plain', builder.id);
  await rs.put(packKey, pack);
  t.ok((await store.get(packKey)).equals(pack), 'the pack is stored byte-exact');

  // A large pack travels in parts and is checked whole.
  const big = await plainPack(Array.from({ length: 20 }, (_, i) => (i % 2 ? textData(MiB, 10 + i) : randomData(MiB, 10 + i))));
  await rs.put(r2.pack('plain', big.builder.id), big.pack);
  t.ok(big.pack.length > 8 * MiB, `a ${big.pack.length}-byte pack went in parts`);
  t.equal(server.stats.packPuts, 2);

  const liar = await plainPack(chunks, { at: 1, id: plain.chunkId(Buffer.from('something else')) });
  await rejects(t, rs, store, r2.pack('plain', liar.builder.id), liar.pack, /does not hash to its chunk id/, "a blob under another chunk's id");
  // The node checks a pack's blobs in one trip per codec worker, each a contiguous share: a lie in the last share,
  // and a blob that does not decode in the middle of one, are found as surely as one in the first.
  const lastLies = await plainPack(
    Array.from({ length: 12 }, (_, i) => textData(256 * KiB, 40 + i)),
    { at: 11, id: plain.chunkId(Buffer.from('not this')) },
  );
  await rejects(
    t,
    rs,
    store,
    r2.pack('plain', lastLies.builder.id),
    lastLies.pack,
    /blob 11 .*does not hash to its chunk id/,
    'a lie in the last blob of a pack',
  );
  const undecodable = new PackBuilder('plain', 64 * MiB);
  for (let i = 0; i < 6; i++) {
    const c = textData(64 * KiB, 60 + i);
    if (i === 3) undecodable.add(randomData(4 * KiB, 66), { id: plain.chunkId(c), plainLength: c.length, codec: Codec.LZ4 });
    else undecodable.add(c, { id: plain.chunkId(c), plainLength: c.length, codec: Codec.NONE });
  }
  await rejects(t, rs, store, r2.pack('plain', undecodable.id), undecodable.finish(), /blob 3 .*does not decode/, 'a blob that is not LZ4');
  const victim = await plainPack(chunks.slice(0, 2));
  const damaged = Buffer.from(victim.pack);
  damaged[10] ^= 0x20; // inside blob 0 (stored as is)
  await rejects(t, rs, store, r2.pack('plain', victim.builder.id), damaged, /xxh64 mismatch|does not hash/, 'a flipped byte in a blob');
  await rejects(t, rs, store, r2.pack('plain', liar.builder.id), pack.subarray(0, pack.length - 3), /magic|corrupt/, 'a truncated pack');
  await rejects(t, rs, store, r2.pack('plain', liar.builder.id), pack, /checksum mismatch/, "a pack stored under another pack's id");

  const locations = builder.entries.map((entry) => ({ packId: builder.id, entry }));
  const indexId = '0123456789abcdef0123456789abcdef';
  await rejects(
    t,
    rs,
    store,
    r2.index('plain', indexId),
    encodeIndex(plain, indexId, [...locations, { packId: 'f'.repeat(32), entry: builder.entries[0] }]),
    /not on this node/,
    'an index naming a missing pack',
  );
  await rs.put(r2.index('plain', indexId), encodeIndex(plain, indexId, locations));

  const entries: ChunkEntry[] = chunks.map((c, index) => ({
    index,
    xxh64: 0n,
    strong: Buffer.alloc(16),
    writer: 1,
    plainLength: c.length,
    storedLength: 0,
    flags: 0,
    codec: 0,
    id: plain.chunkId(c),
  }));
  const place = { disk: 'd1', point: 1, parent: null, generation: 0, segment: 0 };
  const seg = encodeTableV3(plain, place, entries);
  const m = manifest(plain, 'd1', 1, seg, entries.length);
  await rejects(t, rs, store, r2.point('plain', 'd1', 1), encodeManifestV4(plain, m), /is not on this node/, 'a manifest before its segment');
  await rejects(t, rs, store, r2.segment('plain', 'd1', 1, 0, 0), seg.subarray(0, seg.length - 48), /record|body/, 'a truncated segment');
  const older = encodeTableV3(plain, place, entries.slice(0, 2));
  await rs.put(r2.segment('plain', 'd1', 1, 0, 0), older);
  await rejects(
    t,
    rs,
    store,
    r2.point('plain', 'd1', 1),
    encodeManifestV4(plain, m),
    /not the segment its manifest names/,
    'a manifest over another segment',
  );
  await rs.put(r2.segment('plain', 'd1', 1, 0, 0), seg);
  await rs.put(r2.pending('plain', 'd1', 1), encodePendingV2(plain, 'd1', 1, { point: 1, nextIndex: 4 }));
  await rejects(t, rs, store, r2.point('plain', 'd1', 1), encodeManifestV4(plain, m), /if-none-match/, 'a commit without if-none-match', false);
  await rejects(t, rs, store, r2.point('plain', 'd1', 2), encodeManifestV4(plain, m), /corrupt/, 'a manifest moved to another point');
  await rs.put(r2.point('plain', 'd1', 1), encodeManifestV4(plain, m), { ifNoneMatch: true });
  t.ok(await store.head(r2.point('plain', 'd1', 1)), 'the point is committed');
  await rs.delete(r2.pending('plain', 'd1', 1));
  await t.rejects(rs.delete(packKey), { code: TransportErrorCodes.REJECTED, message: /prune/ }, 'packs are not deleted over the link');
  await rejects(t, rs, store, r2.config(sealed.name), config(plain), /corrupt|not sealed|checksum/, 'an unsealed config in an encrypted domain');
  await rejects(
    t,
    rs,
    store,
    r2.pending('plain', 'd2', 1),
    encodePendingV2(sealed, 'd2', 1, {}),
    /is encrypted/,
    'a sealed object in the plain domain',
  );
  t.same(await rs.get(packKey).then((b) => b.equals(pack)), true, 'packs read back over the link');
});

t.test('encrypted domain: sealed objects are checked for structure only', async (t) => {
  const store = new MemoryStore();
  const { url } = await startNode(t, tmpDir(t, 'ws-r2-sealed'), { store });
  const rs = remote(t, url);
  const d = sealed.name;
  await rs.put(r2.config(d), config(sealed), { ifNoneMatch: true });
  // The node cannot open blobs: any bytes of a plausible size pass, as long as the sealed trailer is whole.
  const b = new PackBuilder(d, 16 * MiB, key);
  for (let i = 0; i < 3; i++)
    b.add(randomData(4 * KiB + 28, 30 + i), { id: sealed.chunkId(Buffer.from([i])), plainLength: 4 * KiB, codec: Codec.NONE });
  const pack = b.finish();
  await rs.put(r2.pack(d, b.id), pack);
  const badLength = Buffer.from(pack);
  badLength.writeUInt32LE(badLength.readUInt32LE(pack.length - 8) + 1, pack.length - 8);
  await rejects(t, rs, store, r2.pack(d, 'a'.repeat(32)), badLength, /not a metadata envelope/, 'a sealed pack whose trailer length is off');
  await rejects(t, rs, store, r2.pack(d, 'b'.repeat(32)), pack.subarray(0, pack.length - 1), /magic|corrupt/, 'a truncated sealed pack');
  const unsealed = await plainPack([randomData(4 * KiB, 9)]);
  await rejects(t, rs, store, r2.pack(d, 'c'.repeat(32)), unsealed.pack, /not sealed/, 'an unsealed pack in an encrypted domain');
  const indexId = 'fedcba9876543210fedcba9876543210';
  await rs.put(
    r2.index(d, indexId),
    encodeIndex(
      sealed,
      indexId,
      b.entries.map((entry) => ({ packId: b.id, entry })),
    ),
  );
  const dname = sealed.dname('d1');
  const entries: ChunkEntry[] = [
    {
      index: 0,
      xxh64: 0n,
      strong: Buffer.alloc(16),
      writer: 1,
      plainLength: 4 * KiB,
      storedLength: 0,
      flags: 0,
      codec: 0,
      id: sealed.chunkId(Buffer.from([0])),
    },
  ];
  const seg = encodeTableV3(sealed, { disk: 'd1', point: 1, parent: null, generation: 0, segment: 0 }, entries);
  const m = encodeManifestV4(sealed, manifest(sealed, 'd1', 1, seg, 1));
  await rejects(t, rs, store, r2.point(d, dname, 1), m, /no table segment/, 'a sealed manifest with no segment on the node');
  await rejects(t, rs, store, r2.segment(d, dname, 1, 0, 0), seg.subarray(0, seg.length - 7), /records/, 'a sealed segment of an impossible size');
  await rs.put(r2.segment(d, dname, 1, 0, 0), seg);
  await rs.put(r2.point(d, dname, 1), m, { ifNoneMatch: true });
  t.ok(await store.head(r2.point(d, dname, 1)), 'the sealed point is committed');
});
