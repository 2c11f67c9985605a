// Encrypted chunk objects (chunk format version 2) against their documented layout: every codec round-trips
// through the codec workers; the payload is nonce || AES-256-GCM || tag over the codec payload with the AAD of
// chunk.ts, decryptable by hand from the documentation alone; the digests stored are keyed BLAKE3, never the
// plain xxh64/BLAKE3; a flipped ciphertext or tag byte, a changed header field, another disk, another key, or an
// unencrypted object in an encrypted point are each a CHUNK_CORRUPT that names the chunk; without the key the
// stored bytes can still be checked, and a peer node (which holds no key) accepts valid encrypted chunks, including
// incompressible full-size ones, and rejects damaged ones.
import t from 'tap';
import type { Test } from 'tap';
import crypto from 'node:crypto';
import { Blake3Hasher } from '@napi-rs/blake-hash';
import { EncryptionKey } from '../../src/crypto/keys.js';
import { ErrorCodes, RnodeError } from '../../src/errors.js';
import { strongDigest, xxh64 } from '../../src/format/checksum.js';
import { CHUNK_HEADER_BYTES, CHUNK_VERSION_ENCRYPTED, ChunkFlag, decodeChunkHeader } from '../../src/format/chunk.js';
import { Codec, CODEC_NAMES, type CodecId } from '../../src/format/codecs.js';
import { layout } from '../../src/repository/names.js';
import type { ChunkEntry } from '../../src/format/table.js';
import {
  checkStoredChunkInto,
  decodeChunkInto,
  encodeChunkInto,
  newReadSlot,
  withWorkerKey,
  type ChunkSeal,
} from '../../src/pipeline/chunk-codec.js';
import { sharedAligned } from '../../src/native/index.js';
import { maxObjectBytes } from '../../src/pipeline/codec-workers.js';
import { MemoryStore } from '../../src/store/memory/memory-store.js';
import { FrameFlag } from '../../src/transport/frame.js';
import { ObjectValidator } from '../../src/serve/index.js';
import { decodeChunk } from '../helpers/chunks.js';
import { KiB, randomData, stopCodecWorkersAtEnd, textData } from '../helpers/images.js';

stopCodecWorkersAtEnd(t);

const CHUNK = 64 * KiB;
const KEY = EncryptionKey.fromBytes(crypto.createHash('sha256').update('chunks-test-key').digest());
const OTHER = EncryptionKey.fromBytes(crypto.createHash('sha256').update('another-key').digest());
const SEAL: ChunkSeal = { key: KEY, disk: 'vm-7' };
const SAMPLES: Record<string, Buffer> = {
  random: randomData(CHUNK, 1),
  text: textData(CHUNK, 1),
  'zeros and text': Buffer.concat([Buffer.alloc(CHUNK / 2), textData(CHUNK / 2, 2)]),
  'one byte': Buffer.from([0x5a]),
  'odd-sized text': textData(3007, 3),
};

async function encrypt(plain: Buffer, codec: CodecId = Codec.LZ4_BLOCKS, seal = SEAL, index = 42, writer = 9) {
  const shared = sharedAligned(plain.length);
  plain.copy(shared);
  const r = (await encodeChunkInto(shared, sharedAligned(maxObjectBytes(CHUNK)), index, writer, codec, undefined, seal))!;
  return { object: Buffer.from(r.object), entry: r.entry };
}

/** Decodes on the workers as a point sealed with seal would (null: as an unencrypted point). */
async function decrypt(object: Buffer, entry: ChunkEntry, seal: ChunkSeal | null = SEAL): Promise<Buffer> {
  const slot = newReadSlot(CHUNK);
  object.copy(slot.object, 0);
  return Buffer.from(await decodeChunkInto(slot, object.length, entry, 'under test', seal ?? undefined));
}

/** The AAD exactly as chunk.ts documents it, built independently of src/format/seal.ts. */
function documentedAad(disk: string, h: { codec: number; plainLength: number; plainXxh64: bigint; index: number; writer: number }): Buffer {
  const d = Buffer.from(disk);
  const b = Buffer.alloc(8 + 1 + 1 + 4 + 8 + 8 + 4 + 1 + d.length);
  b.write('RNCK-AAD', 0, 'latin1');
  b[8] = CHUNK_VERSION_ENCRYPTED;
  b[9] = h.codec;
  b.writeUInt32LE(h.plainLength, 10);
  b.writeBigUInt64LE(h.plainXxh64, 14);
  b.writeBigUInt64LE(BigInt(h.index), 22);
  b.writeUInt32LE(h.writer, 30);
  b[34] = d.length;
  d.copy(b, 35);
  return b;
}

async function corrupt(t: Test, fn: () => Promise<unknown>, why: RegExp, what: string): Promise<void> {
  try {
    await fn();
    t.fail(`${what}: decoded`);
  } catch (err) {
    t.ok(err instanceof RnodeError && err.code === ErrorCodes.CHUNK_CORRUPT, `${what}: CHUNK_CORRUPT (${(err as Error).message})`);
    t.match((err as Error).message, why, `${what}: says why`);
    t.match((err as RnodeError).details, { index: 42, writer: 9 }, `${what}: names the chunk`);
  }
}

/** A copy of object with its header's payload xxh64 recomputed: damage the stored-bytes check cannot see. */
function resealed(object: Buffer): Buffer {
  const o = Buffer.from(object);
  o.writeBigUInt64LE(xxh64(o.subarray(CHUNK_HEADER_BYTES)), 24);
  return o;
}

t.test('every codec round-trips encrypted, in the documented layout, with keyed digests only', async (t) => {
  await withWorkerKey(KEY, async () => {
    const { cipherKey, digestKey } = KEY.subkeys();
    for (const codec of Object.values(Codec) as CodecId[]) {
      for (const [name, plain] of Object.entries(SAMPLES)) {
        const what = `${name}/${CODEC_NAMES[codec]}`;
        const { object, entry } = await encrypt(plain, codec);
        const h = decodeChunkHeader(object);
        t.match(
          h,
          { version: CHUNK_VERSION_ENCRYPTED, flags: ChunkFlag.ENCRYPTED, plainLength: plain.length, index: 42, writer: 9 },
          `${what}: header`,
        );
        const payload = object.subarray(CHUNK_HEADER_BYTES);
        t.equal(h.payloadXxh64, xxh64(payload), `${what}: payload xxh64 is over the stored (encrypted) bytes`);

        // Decrypt by hand from the documentation: nonce || ciphertext || tag, AAD as documented.
        const d = crypto.createDecipheriv('aes-256-gcm', cipherKey, payload.subarray(0, 12));
        d.setAAD(documentedAad('vm-7', h));
        d.setAuthTag(payload.subarray(payload.length - 16));
        const packed = Buffer.concat([d.update(payload.subarray(12, payload.length - 16)), d.final()]);
        t.ok((await decodeChunk(h.codec, packed, h.plainLength)).equals(plain), `${what}: the documented layout decrypts and decodes`);

        const keyed = Blake3Hasher.newKeyed(digestKey).update(plain).digestBuffer();
        t.equal(h.plainXxh64, keyed.readBigUInt64LE(16), `${what}: header digest is keyed BLAKE3 bytes 16-23`);
        t.equal(entry.xxh64, h.plainXxh64);
        t.ok(entry.strong.equals(keyed.subarray(0, 16)), `${what}: table strong digest is keyed BLAKE3 bytes 0-15`);
        t.not(entry.xxh64, xxh64(plain), `${what}: no plain xxh64`);
        t.notOk(entry.strong.equals(strongDigest(plain)), `${what}: no plain BLAKE3`);
        t.ok((await decrypt(object, entry)).equals(plain), `${what}: decodes on the workers`);
      }
    }
    const a = await encrypt(SAMPLES.text);
    const b = await encrypt(SAMPLES.text);
    t.notOk(
      a.object.subarray(CHUNK_HEADER_BYTES, CHUNK_HEADER_BYTES + 12).equals(b.object.subarray(CHUNK_HEADER_BYTES, CHUNK_HEADER_BYTES + 12)),
      'a fresh nonce per chunk',
    );
    t.equal(a.entry.xxh64, b.entry.xxh64, 'same content, same keyed digest (incrementals still find unchanged chunks)');
    const shared = sharedAligned(CHUNK);
    SAMPLES.text.copy(shared);
    t.equal(
      await encodeChunkInto(shared, sharedAligned(maxObjectBytes(CHUNK)), 42, 10, Codec.LZ4_BLOCKS, a.entry, SEAL),
      undefined,
      'an unchanged chunk is recognised by its keyed digests and not stored',
    );
    const other = await encrypt(SAMPLES.text, Codec.LZ4_BLOCKS, { key: OTHER, disk: 'vm-7' }).catch((e) => e);
    t.match(other, { message: /was not given to this worker/ }, 'a key the workers were not given is refused, not guessed');
  });
});

t.test('tampering, swaps, another disk or key: CHUNK_CORRUPT naming the chunk', async (t) => {
  await withWorkerKey(KEY, () =>
    withWorkerKey(OTHER, async () => {
      const { object, entry } = await encrypt(SAMPLES.text);
      const mid = CHUNK_HEADER_BYTES + 12 + 100;
      const flip = (o: Buffer, at: number) => {
        const x = Buffer.from(o);
        x[at] ^= 0x01;
        return x;
      };
      await corrupt(t, () => decrypt(flip(object, mid), entry), /payload checksum mismatch/, 'a flipped ciphertext byte');
      await corrupt(
        t,
        () => decrypt(resealed(flip(object, mid)), entry),
        /does not authenticate/,
        'a flipped ciphertext byte, payload xxh64 fixed up',
      );
      await corrupt(t, () => decrypt(resealed(flip(object, object.length - 1)), entry), /does not authenticate/, 'a flipped tag byte');
      await corrupt(t, () => decrypt(resealed(flip(object, CHUNK_HEADER_BYTES)), entry), /does not authenticate/, 'a flipped nonce byte');
      const codecSwapped = Buffer.from(object);
      codecSwapped[5] = codecSwapped[5] === Codec.LZ4 ? Codec.LZ4_BLOCKS : Codec.LZ4;
      await corrupt(t, () => decrypt(codecSwapped, entry), /does not authenticate/, 'the codec byte changed (AAD)');
      // A header digest and table entry changed together (as a swapped table record would): the AAD still binds it.
      const digestSwapped = Buffer.from(object);
      digestSwapped.writeBigUInt64LE(entry.xxh64 ^ 1n, 16);
      await corrupt(
        t,
        () => decrypt(digestSwapped, { ...entry, xxh64: entry.xxh64 ^ 1n }),
        /does not authenticate/,
        'header digest and table record changed together',
      );
      await corrupt(t, () => decrypt(object, entry, { key: KEY, disk: 'vm-8' }), /does not authenticate/, 'the object of another disk');
      await corrupt(t, () => decrypt(object, entry, { key: OTHER, disk: 'vm-7' }), /does not authenticate/, 'another key');
      await corrupt(t, () => decrypt(object, entry, null), /encrypted but its point is not/, 'read as an unencrypted point');
      const swapped = await encrypt(SAMPLES.random, Codec.LZ4_BLOCKS, SEAL, 43, 9);
      await corrupt(t, () => decrypt(swapped.object, entry), /holds chunk 43 of point 9/, "another chunk's object under this key");
      await corrupt(t, () => decrypt(swapped.object, { ...swapped.entry, index: 42 }), /holds chunk 43/, "another chunk's object and record");
      const truncated = object.subarray(0, object.length - 20);
      await corrupt(t, () => decrypt(truncated, entry), /object is \d+ bytes/, 'a truncated object');

      // Checked without the key: the stored bytes, not the contents.
      const slot = newReadSlot(CHUNK);
      const stored = async (o: Buffer) => {
        o.copy(slot.object, 0);
        await checkStoredChunkInto(slot, o.length, entry, 'under test');
      };
      await stored(object);
      t.pass('stored-bytes check passes for the intact object');
      await corrupt(t, () => stored(flip(object, mid)), /payload checksum mismatch/, 'stored-bytes check: a flipped byte');
      await stored(resealed(flip(object, mid)));
      t.pass('consistent tampering passes the stored-bytes check (only the key can catch it, and does above)');
    }),
  );
});

t.test('an unencrypted (version 1) object in an encrypted point is never trusted', async (t) => {
  const plain = SAMPLES.text;
  const shared = sharedAligned(plain.length);
  plain.copy(shared);
  const v1 = (await encodeChunkInto(shared, sharedAligned(maxObjectBytes(CHUNK)), 42, 9, Codec.LZ4))!;
  await withWorkerKey(KEY, () => corrupt(t, () => decrypt(Buffer.from(v1.object), v1.entry), /not encrypted but its point is/, 'a v1 object'));
});

t.test('a peer node validates encrypted chunks by their stored bytes, without a key', async (t) => {
  const validator = new ObjectValidator(new MemoryStore());
  await withWorkerKey(KEY, async () => {
    for (const [name, plain] of [
      ['incompressible full chunk', randomData(CHUNK, 5)],
      ['text', SAMPLES.text],
    ] as const) {
      const { object } = await encrypt(plain);
      const h = decodeChunkHeader(object);
      const put = (data: Buffer) =>
        validator.checkPut({
          key: layout.chunk('vm-7', 9, 42),
          data,
          diskOffset: 42 * CHUNK,
          plainXxh64: h.plainXxh64,
          flags: FrameFlag.CHUNK | FrameFlag.ENCRYPTED | (h.codec !== Codec.NONE ? FrameFlag.COMPRESSED : 0),
        });
      t.match(await put(object), { kind: 'chunk', index: 42 }, `${name}: accepted (codec ${CODEC_NAMES[h.codec]}, payload ${h.payloadLength} bytes)`);
      const bad = Buffer.from(object);
      bad[bad.length - 5] ^= 0x80;
      await t.rejects(put(bad), { code: 'RNODE_TRANSPORT_REJECTED', message: /payload checksum mismatch/ }, `${name}: a damaged payload is rejected`);
    }
  });
});

t.test('a codec worker that dies is replaced with the keys of the jobs still running', async (t) => {
  await withWorkerKey(KEY, async () => {
    const before = await encrypt(SAMPLES.text);
    // Reaching into the pool: the only way to kill a worker the way a crash in native code would.
    const pool = (await import('../../src/pipeline/codec-workers.js')).codecWorkers() as unknown as { workers: { terminate(): Promise<number> }[] };
    const dead = [...pool.workers];
    await Promise.all(dead.map((w) => w.terminate()));
    await new Promise((r) => setTimeout(r, 50));
    t.ok(
      pool.workers.every((w) => !dead.includes(w)),
      'every worker was replaced',
    );
    for (let i = 0; i < 4; i++) {
      const { object, entry } = await encrypt(SAMPLES['odd-sized text']);
      t.ok((await decrypt(object, entry)).equals(SAMPLES['odd-sized text']), `chunk ${i}: the replacements hold the key`);
    }
    t.ok((await decrypt(before.object, before.entry)).equals(SAMPLES.text), 'and read what the dead ones wrote');
  });
});
