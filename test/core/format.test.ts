// Format tests: checksums match their reference values; every codec round-trips (zeros shrink when compressed, random
// data does not grow: it falls back to codec none; no codec decodes another's output); stored chunks carry
// version, codec, lengths, digests, index and writer, and an unknown codec id or version is RNODE_FORMAT_CODEC /
// RNODE_FORMAT_VERSION on both decode paths (main thread and codec workers); the chunk header rejects truncated
// and garbled input with a clear error; table segments round-trip and reject checksum mismatches; manifests
// reject tampering.
import t from 'tap';
import type { Test } from 'tap';
import { ErrorCodes, RnodeError } from '../../src/errors.js';
import { strongDigest, xxh64, xxh64Hex } from '../../src/format/checksum.js';
import { CHUNK_HEADER_BYTES, CHUNK_VERSION, MAX_CHUNK_BYTES, decodeChunkHeader } from '../../src/format/chunk.js';
import { Codec, CODEC_NAMES, codecByName, type CodecId } from '../../src/format/codecs.js';
import { decodeManifest, encodeManifest, MANIFEST_FORMAT, MANIFEST_VERSION, type PointManifest } from '../../src/format/manifest.js';
import { decodeSegment, encodeSegment, TableFlag, type ChunkEntry } from '../../src/format/table.js';
import { decodeChunkInto, encodeChunkInto, newReadSlot } from '../../src/pipeline/chunk-codec.js';
import { sharedAligned } from '../../src/native/index.js';
import { maxObjectBytes } from '../../src/pipeline/codec-workers.js';
import { decodeChunk, decodeStoredChunk, digestChunk, encodeChunk, encodeStoredChunk } from '../helpers/chunks.js';
import { KiB, randomData, textData, stopCodecWorkersAtEnd } from '../helpers/images.js';

stopCodecWorkersAtEnd(t);

const CODECS = Object.values(Codec) as CodecId[];
const SAMPLES: Record<string, Buffer> = {
  zeros: Buffer.alloc(64 * KiB),
  random: randomData(64 * KiB, 1),
  text: textData(64 * KiB, 1),
  'one byte': Buffer.from([0x5a]),
  'odd-sized text': textData(1000 * 3 + 7, 2),
  'max chunk of text': textData(MAX_CHUNK_BYTES, 3),
};

/** Runs fn and returns the RnodeError it threw (or fails the test). */
async function rnodeErr(t: Test, fn: () => unknown, code: string, what: string): Promise<RnodeError | undefined> {
  try {
    await fn();
  } catch (err) {
    t.ok(err instanceof RnodeError, `${what}: an RnodeError (got ${(err as Error)?.name}: ${(err as Error)?.message})`);
    t.equal((err as RnodeError).code, code, `${what}: code ${code}`);
    t.ok((err as Error).message.length > 20, `${what}: a sentence, not just a code`);
    return err as RnodeError;
  }
  t.fail(`${what}: did not throw`);
  return undefined;
}

t.test('checksums match reference values (xxhsum -H1, BLAKE3)', async (t) => {
  t.equal(xxh64(Buffer.alloc(0)), 0xef46db3751d8e999n);
  t.equal(xxh64Hex(Buffer.from('abc')), '44bc2cf5ad770999');
  // BLAKE3("") = af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262
  t.equal(strongDigest(Buffer.alloc(0)).toString('hex'), 'af1349b9f5f9a1a6a0404dea36dcc949');
  t.equal(strongDigest(Buffer.alloc(0)).length, 16);
});

t.test('codec ids and names are one table', async (t) => {
  t.equal(new Set(CODECS).size, CODECS.length, 'ids are unique');
  t.same(
    CODECS.map((id) => CODEC_NAMES[id]).filter((n) => typeof n !== 'string'),
    [],
    'every id has a name',
  );
  t.equal(new Set(CODECS.map((id) => CODEC_NAMES[id])).size, CODECS.length, 'names are unique');
  t.equal(Codec.NONE, 0, 'none is 0 (written to disk: never renumbered)');
  t.equal(Codec.LZ4, 1, 'lz4 is 1 (written to disk: never renumbered)');
  for (const id of CODECS) t.equal(codecByName(CODEC_NAMES[id]), id);
  await rnodeErr(t, () => codecByName('zstd'), ErrorCodes.USAGE, 'unknown codec name');
});

for (const id of CODECS) {
  t.test(`codec ${CODEC_NAMES[id]}: round-trips; zeros and text shrink, random data does not grow`, async (t) => {
    for (const [name, plain] of Object.entries(SAMPLES)) {
      const enc = await encodeChunk(id, plain);
      const back = await decodeChunk(enc.codec, enc.payload, plain.length);
      t.ok(back.equals(plain), `${name}: round-trips`);
      t.ok(enc.payload.length <= plain.length, `${name}: the payload (${enc.payload.length}) is not larger than the plaintext (${plain.length})`);
      if (id === Codec.NONE) t.equal(enc.codec, Codec.NONE, `${name}: none stays none`);
    }
    const zeros = await encodeChunk(id, SAMPLES.zeros);
    const random = await encodeChunk(id, SAMPLES.random);
    if (id !== Codec.NONE) {
      t.equal(zeros.codec, id, 'zeros are stored with the compressing codec');
      t.ok(zeros.payload.length < SAMPLES.zeros.length / 100, `zeros shrink (${zeros.payload.length} bytes)`);
      const text = await encodeChunk(id, SAMPLES.text);
      t.ok(text.payload.length < SAMPLES.text.length / 2, `text shrinks (${text.payload.length} bytes)`);
      t.equal(random.codec, Codec.NONE, 'random data falls back to codec none');
    }
    t.equal(random.payload.length, SAMPLES.random.length, 'random data does not grow');
  });
}

/** Ids no codec has (so they must be rejected as unknown). */
const UNKNOWN_CODECS = [Math.max(...CODECS) + 1, 9, 200, 255].filter((id) => !CODECS.includes(id as CodecId));

t.test("no codec decodes another codec's output; unknown codec ids are FORMAT_CODEC", async (t) => {
  for (const [name, plain] of Object.entries({ text: SAMPLES.text, zeros: SAMPLES.zeros, random: SAMPLES.random })) {
    for (const a of CODECS) {
      const enc = await encodeChunk(a, plain);
      if (enc.codec !== a) continue; // fell back to another codec: nothing of a's to misread
      for (const b of CODECS) {
        if (b === a) continue;
        let misread = false;
        try {
          misread = (await decodeChunk(b, enc.payload, plain.length)).equals(plain);
        } catch (e) {
          t.ok(
            e instanceof RnodeError && e.code === ErrorCodes.CHUNK_CORRUPT,
            `${name}: ${CODEC_NAMES[a]} read as ${CODEC_NAMES[b]} is CHUNK_CORRUPT`,
          );
          continue;
        }
        t.notOk(misread, `${name}: ${CODEC_NAMES[a]} output read as ${CODEC_NAMES[b]} does not give the plaintext`);
      }
    }
  }
  const lz4 = await encodeChunk(Codec.LZ4, SAMPLES.text);
  await rnodeErr(t, () => decodeChunk(Codec.LZ4, lz4.payload, SAMPLES.text.length - 1), ErrorCodes.CHUNK_CORRUPT, 'lz4 with the wrong length');
  for (const bad of UNKNOWN_CODECS) {
    await rnodeErr(t, () => decodeChunk(bad, lz4.payload, SAMPLES.text.length), ErrorCodes.FORMAT_CODEC, `unknown codec id ${bad}`);
  }
});

t.test('decoders survive damaged payloads: an RnodeError or wrong bytes, never a crash or a hang', async (t) => {
  const plain = Buffer.concat([textData(70 * KiB, 8), Buffer.alloc(70 * KiB), randomData(10 * KiB, 8)]);
  for (const id of CODECS) {
    const enc = await encodeChunk(id, plain);
    if (enc.codec !== id) continue;
    let odd = 0;
    const step = Math.max(1, Math.floor(enc.payload.length / 400));
    for (let i = 0; i < enc.payload.length; i += step) {
      for (const mask of [0x01, 0xff]) {
        const bad = Buffer.from(enc.payload);
        bad[i] ^= mask;
        try {
          const out = await decodeChunk(id, bad, plain.length);
          if (out.length !== plain.length) odd++;
        } catch (e) {
          if (!(e instanceof RnodeError) || e.code !== ErrorCodes.CHUNK_CORRUPT) odd++;
        }
      }
    }
    for (let i = 0; i < 300; i++) {
      const junk = randomData(1 + ((i * 37) % 5000), 5000 + i);
      if (i % 2 === 0 && junk.length >= 8) {
        junk.writeUInt32LE(64 * KiB, 0);
        junk.writeUInt32LE(plain.length, 0);
      }
      try {
        const out = await decodeChunk(id, junk, plain.length);
        if (out.length !== plain.length) odd++;
      } catch (e) {
        if (!(e instanceof RnodeError) || e.code !== ErrorCodes.CHUNK_CORRUPT) odd++;
      }
    }
    t.equal(odd, 0, `${CODEC_NAMES[id]}: every damaged payload is CHUNK_CORRUPT or decodes to ${plain.length} bytes`);
  }
});

/** A stored chunk object (header + payload) for plain. */
async function stored(plain: Buffer, codec: CodecId = Codec.LZ4, index = 7, writer = 3) {
  return encodeStoredChunk(plain, digestChunk(plain), index, writer, codec);
}

/** Decodes through the worker path (what restore and verify use). */
async function viaWorkers(object: Buffer, entry: ChunkEntry, chunkSize = 64 * KiB): Promise<Buffer> {
  const slot = newReadSlot(chunkSize);
  if (object.length > slot.object.length) throw new Error('object larger than a slot');
  object.copy(slot.object, 0);
  return Buffer.from(await decodeChunkInto(slot, object.length, entry, 'under test'));
}

t.test('stored chunks carry version, codec, lengths, digests, index and writer, and round-trip on both paths', async (t) => {
  for (const codec of CODECS) {
    for (const name of ['zeros', 'random', 'text', 'one byte', 'odd-sized text']) {
      const plain = SAMPLES[name];
      const { object, entry } = await stored(plain, codec, 42, 9);
      const h = decodeChunkHeader(object);
      t.equal(h.version, CHUNK_VERSION, `${name}/${CODEC_NAMES[codec]}: version`);
      t.equal(h.plainLength, plain.length);
      t.equal(h.plainXxh64, xxh64(plain), 'plaintext xxh64 in the header');
      t.equal(h.payloadXxh64, xxh64(object.subarray(CHUNK_HEADER_BYTES)), 'payload xxh64 in the header');
      t.equal(h.index, 42);
      t.equal(h.writer, 9);
      t.equal(h.codec, entry.codec);
      t.equal(object.length, CHUNK_HEADER_BYTES + h.payloadLength);
      t.ok((await decodeStoredChunk(object, entry, 'x')).equals(plain), `${name}/${CODEC_NAMES[codec]}: main-thread decode`);
      t.ok((await viaWorkers(object, entry)).equals(plain), `${name}/${CODEC_NAMES[codec]}: worker decode`);
      // The worker encoder makes objects the main-thread decoder accepts, and the other way round.
      const plainShared = sharedAligned(plain.length);
      plain.copy(plainShared);
      const w = (await encodeChunkInto(plainShared, sharedAligned(maxObjectBytes(64 * KiB)), 42, 9, codec))!;
      t.same(
        { ...w.entry, strong: w.entry.strong.toString('hex') },
        { ...entry, strong: entry.strong.toString('hex') },
        'both encoders agree on the entry',
      );
      t.ok((await decodeStoredChunk(Buffer.from(w.object), w.entry, 'x')).equals(plain), 'worker-encoded object decodes');
    }
  }
});

t.test('a stored chunk with an unknown codec id or version is a clear error on both decode paths', async (t) => {
  const { object, entry } = await stored(SAMPLES.text);
  for (const codec of UNKNOWN_CODECS) {
    const bad = Buffer.from(object);
    bad[5] = codec;
    await rnodeErr(t, () => decodeStoredChunk(bad, entry, 'x'), ErrorCodes.FORMAT_CODEC, `codec ${codec} (main thread)`);
    await rnodeErr(t, () => viaWorkers(bad, entry), ErrorCodes.FORMAT_CODEC, `codec ${codec} (workers)`);
  }
  for (const version of [0, 3, 255]) {
    // 2 is an encrypted chunk (test/crypto)
    const bad = Buffer.from(object);
    bad[4] = version;
    const e = await rnodeErr(t, () => decodeStoredChunk(bad, entry, 'x'), ErrorCodes.FORMAT_VERSION, `version ${version} (main thread)`);
    t.match(e?.message, /upgrade/, 'the message says what to do');
    await rnodeErr(t, () => viaWorkers(bad, entry), ErrorCodes.FORMAT_VERSION, `version ${version} (workers)`);
  }
});

t.test('the chunk header rejects truncated and garbled input with a clear error', async (t) => {
  const { object, entry } = await stored(SAMPLES['odd-sized text']);
  const header = object.subarray(0, CHUNK_HEADER_BYTES);
  for (const n of [0, 1, 4, 47]) {
    const e = await rnodeErr(t, () => decodeChunkHeader(header.subarray(0, n)), ErrorCodes.CHUNK_CORRUPT, `a ${n}-byte header`);
    t.match(e?.message, /shorter/, 'says it is too short');
  }
  const garble = (off: number, write: (b: Buffer) => void) => {
    const b = Buffer.from(header);
    write(b);
    return b;
  };
  const cases: Array<[string, Buffer, string]> = [
    ['bad magic', garble(0, (b) => b.write('XXXX', 0)), ErrorCodes.CHUNK_CORRUPT],
    [
      'header length 40',
      garble(7, (b) => {
        b[7] = 40;
      }),
      ErrorCodes.CHUNK_CORRUPT,
    ],
    ['plaintext length 0', garble(8, (b) => b.writeUInt32LE(0, 8)), ErrorCodes.CHUNK_CORRUPT],
    ['plaintext length above the largest chunk', garble(8, (b) => b.writeUInt32LE(MAX_CHUNK_BYTES + 1, 8)), ErrorCodes.CHUNK_CORRUPT],
    ['payload length 4 GiB', garble(12, (b) => b.writeUInt32LE(0xffffffff, 12)), ErrorCodes.CHUNK_CORRUPT],
    ['index beyond 2^53', garble(32, (b) => b.writeBigUInt64LE(1n << 60n, 32)), ErrorCodes.CHUNK_CORRUPT],
  ];
  for (const [what, b, code] of cases) await rnodeErr(t, () => decodeChunkHeader(b), code, what);

  // Every truncation of a stored object is rejected, on both paths.
  let rejectedMain = 0;
  let rejectedWorkers = 0;
  for (let n = 0; n < object.length; n++) {
    const cut = object.subarray(0, n);
    await decodeStoredChunk(Buffer.from(cut), entry, 'x').then(
      () => undefined,
      (e) => {
        if (e?.code === ErrorCodes.CHUNK_CORRUPT) rejectedMain++;
      },
    );
    if (n % 97 === 0 || n > object.length - 64) {
      await viaWorkers(Buffer.from(cut), entry).then(
        () => undefined,
        (e) => {
          if (e?.code === ErrorCodes.CHUNK_CORRUPT) rejectedWorkers++;
        },
      );
    } else rejectedWorkers++;
  }
  t.equal(rejectedMain, object.length, 'every prefix of the object is rejected as CHUNK_CORRUPT (main thread)');
  t.equal(rejectedWorkers, object.length, 'every sampled prefix is rejected as CHUNK_CORRUPT (workers)');

  // Random garbage never crashes the parser: it is an RnodeError of a known code, or (rarely) a header.
  let weird = 0;
  for (let i = 0; i < 3000; i++) {
    const b = randomData(i % 97, 1000 + i);
    if (i % 3 === 0 && b.length >= 8) {
      b.writeUInt32LE(0x4b434e52, 0);
      b[4] = 1;
      b[7] = 48;
    }
    try {
      decodeChunkHeader(b);
    } catch (e) {
      if (!(e instanceof RnodeError) || ![ErrorCodes.CHUNK_CORRUPT, ErrorCodes.FORMAT_VERSION].includes(e.code as never)) weird++;
    }
  }
  t.equal(weird, 0, 'garbage only ever gives CHUNK_CORRUPT or FORMAT_VERSION');
});

t.test('every single-bit flip of a stored chunk is rejected or decodes to the same plaintext', async (t) => {
  for (const codec of CODECS) {
    const plain = textData(3000, 5);
    const { object, entry } = await stored(plain, codec);
    let accepted = 0;
    let wrong = 0;
    for (let bit = 0; bit < object.length * 8; bit++) {
      const b = Buffer.from(object);
      b[bit >> 3] ^= 1 << (bit & 7);
      try {
        const out = await decodeStoredChunk(b, entry, 'x');
        accepted++;
        if (!out.equals(plain)) wrong++;
      } catch (e) {
        if (!(e instanceof RnodeError)) wrong++;
      }
    }
    t.equal(wrong, 0, `${CODEC_NAMES[codec]}: no flip yields other bytes or a non-RnodeError`);
    t.ok(accepted <= 5 * 8, `${CODEC_NAMES[codec]}: only flips of the flags and reserved header bytes may pass (${accepted})`);
  }
});

function entries(n: number, seed = 1): ChunkEntry[] {
  const out: ChunkEntry[] = [];
  for (let i = 0; i < n; i++) {
    const zero = i % 5 === 4;
    const data = randomData(64, seed * 1000 + i);
    out.push({
      index: i * 3 + (i === n - 1 ? 2 ** 40 : 0),
      xxh64: zero ? 0n : xxh64(data),
      strong: zero ? Buffer.alloc(16) : strongDigest(data),
      writer: zero ? 0 : 1 + (i % 4),
      plainLength: 64 * KiB,
      storedLength: zero ? 0 : 1000 + i,
      flags: zero ? TableFlag.ZERO : 0,
      codec: zero ? 0 : i % 2,
    });
  }
  return out;
}

const plainEntries = (es: ChunkEntry[]) => es.map((e) => ({ ...e, strong: e.strong.toString('hex') }));

t.test('table segments round-trip', async (t) => {
  for (const n of [0, 1, 3, 100]) {
    const es = entries(n);
    const b = encodeSegment(es);
    t.same(plainEntries(decodeSegment(b, 'seg')), plainEntries(es), `${n} records round-trip`);
  }
});

t.test('table segments reject checksum mismatches, truncation, disorder and unknown versions', async (t) => {
  const es = entries(6);
  const b = encodeSegment(es);
  let rejected = 0;
  for (let i = 0; i < b.length; i++) {
    const x = Buffer.from(b);
    x[i] ^= 0x01;
    try {
      decodeSegment(x, 'seg');
    } catch (e) {
      if (e instanceof RnodeError && (e.code === ErrorCodes.MANIFEST_CORRUPT || (i === 4 && e.code === ErrorCodes.FORMAT_VERSION))) rejected++;
    }
  }
  t.equal(rejected, b.length, 'every byte flip is rejected (MANIFEST_CORRUPT; the version byte: FORMAT_VERSION)');
  const e = await rnodeErr(t, () => decodeSegment(b.subarray(0, b.length - 1), 'seg'), ErrorCodes.MANIFEST_CORRUPT, 'truncated by one byte');
  t.match(e?.message, /seg/, 'the message names the segment');
  await rnodeErr(t, () => decodeSegment(b.subarray(0, 10), 'seg'), ErrorCodes.MANIFEST_CORRUPT, 'cut inside the header');
  await rnodeErr(t, () => decodeSegment(Buffer.concat([b, Buffer.alloc(64)]), 'seg'), ErrorCodes.MANIFEST_CORRUPT, 'trailing bytes');
  const ver = Buffer.from(b);
  ver[4] = 3;
  await rnodeErr(t, () => decodeSegment(ver, 'seg'), ErrorCodes.FORMAT_VERSION, 'version 3');
  const swapped = [...es];
  [swapped[1], swapped[2]] = [swapped[2], swapped[1]];
  await rnodeErr(t, () => decodeSegment(encodeSegment(swapped), 'seg'), ErrorCodes.MANIFEST_CORRUPT, 'records out of order (valid checksum)');
  const dup = [es[0], es[0]];
  await rnodeErr(t, () => decodeSegment(encodeSegment(dup), 'seg'), ErrorCodes.MANIFEST_CORRUPT, 'a repeated index (valid checksum)');
});

function manifest(): PointManifest {
  return {
    format: MANIFEST_FORMAT,
    version: MANIFEST_VERSION,
    disk: 'vm-1',
    point: 3,
    parent: 2,
    full: false,
    createdAt: '2026-01-01T00:00:00.000Z',
    diskSize: 3 * 1024 * 1024 + 1234,
    chunkSize: 64 * KiB,
    source: { kind: 'raw', location: '/dev/x' },
    table: { generation: 0, records: 2, segments: [{ key: 'disks/vm-1/tables/0000000003/g0000-00000000', records: 2, first: 0, last: 5 }] },
    stats: { chunksTotal: 49, chunksChanged: 2, chunksZero: 1, bytesRead: 100, bytesWritten: 50, seconds: 0.5 },
  };
}

t.test('manifests round-trip and reject tampering', async (t) => {
  const m = manifest();
  const b = encodeManifest(m);
  t.same(decodeManifest(b, 'm'), m, 'round-trips');

  const raw = JSON.parse(b.toString('utf8'));
  const edits: Array<[string, (o: any) => void]> = [
    [
      'diskSize + 1',
      (o) => {
        o.diskSize += 1;
      },
    ],
    [
      'point',
      (o) => {
        o.point = 4;
      },
    ],
    [
      'parent',
      (o) => {
        o.parent = null;
      },
    ],
    [
      'chunkSize',
      (o) => {
        o.chunkSize = 1024 * KiB;
      },
    ],
    [
      'segment key',
      (o) => {
        o.table.segments[0].key = 'disks/vm-1/tables/0000000002/g0000-00000000';
      },
    ],
    [
      'records',
      (o) => {
        o.table.records = 3;
      },
    ],
    [
      'an added field',
      (o) => {
        o.extra = 1;
      },
    ],
    [
      'checksum',
      (o) => {
        o.checksum = '0000000000000000';
      },
    ],
    [
      'no checksum',
      (o) => {
        delete o.checksum;
      },
    ],
  ];
  for (const [what, edit] of edits) {
    const o = structuredClone(raw);
    edit(o);
    const e = await rnodeErr(
      t,
      () => decodeManifest(Buffer.from(JSON.stringify(o, null, 1)), 'points/3.json'),
      ErrorCodes.MANIFEST_CORRUPT,
      `tampered ${what}`,
    );
    t.match(e?.message, /points\/3\.json/, 'the message names the manifest');
  }
  await rnodeErr(t, () => decodeManifest(Buffer.from('{"format":'), 'm'), ErrorCodes.MANIFEST_CORRUPT, 'not JSON');
  await rnodeErr(t, () => decodeManifest(b.subarray(0, b.length - 3), 'm'), ErrorCodes.MANIFEST_CORRUPT, 'truncated');
  await rnodeErr(t, () => decodeManifest(Buffer.from('null'), 'm'), ErrorCodes.MANIFEST_CORRUPT, 'null');
  await rnodeErr(t, () => decodeManifest(encodeManifest({ ...m, format: 'other' as never }), 'm'), ErrorCodes.MANIFEST_CORRUPT, 'another format');
  await rnodeErr(t, () => decodeManifest(encodeManifest({ ...m, version: 4 }), 'm'), ErrorCodes.FORMAT_VERSION, 'version 4');
  // Version 3 (authenticated, test/security/forgery) needs its MACs.
  await rnodeErr(
    t,
    () => decodeManifest(encodeManifest({ ...m, version: 3, encryption: { alg: 'aes-256-gcm', keyId: '0'.repeat(32) } }), 'm'),
    ErrorCodes.MANIFEST_CORRUPT,
    'version 3 without MACs',
  );
  // Version 2 is an encrypted point (test/crypto): it needs its encryption field, and version 1 must not have one.
  await rnodeErr(t, () => decodeManifest(encodeManifest({ ...m, version: 2 }), 'm'), ErrorCodes.MANIFEST_CORRUPT, 'version 2 without encryption');
  await rnodeErr(
    t,
    () => decodeManifest(encodeManifest({ ...m, encryption: { alg: 'aes-256-gcm', keyId: '0'.repeat(32) } }), 'm'),
    ErrorCodes.MANIFEST_CORRUPT,
    'version 1 with encryption',
  );
  // Sealed (valid checksum) but impossible values.
  for (const [what, bad] of [
    ['negative point', { ...m, point: -1 }],
    ['fractional disk size', { ...m, diskSize: 1.5 }],
    ['string chunk size', { ...m, chunkSize: '64' as never }],
    ['no segments', { ...m, table: { generation: 0, records: 0 } as never }],
    ['disk not a string', { ...m, disk: 7 as never }],
  ] as const) {
    await rnodeErr(t, () => decodeManifest(encodeManifest(bad as PointManifest), 'm'), ErrorCodes.MANIFEST_CORRUPT, what);
  }
  // Every single-bit flip of the stored text is rejected or changes nothing.
  let wrong = 0;
  for (let bit = 0; bit < b.length * 8; bit++) {
    const x = Buffer.from(b);
    x[bit >> 3] ^= 1 << (bit & 7);
    try {
      const got = decodeManifest(x, 'm');
      if (JSON.stringify(got) !== JSON.stringify(m)) wrong++;
    } catch (e) {
      if (!(e instanceof RnodeError)) wrong++;
    }
  }
  t.equal(wrong, 0, 'no bit flip yields another manifest');
});
