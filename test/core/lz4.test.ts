// The two LZ4 implementations behind the codec kernel: the system's liblz4 through the addon (the fast path) and
// lz4-napi (the fallback where liblz4 is missing). They must write the same format: each decodes the other's
// output byte-exact, for every codec and awkward size, and liblz4's decoder refuses bad blocks without a crash.
import t from 'tap';
import * as lz4napi from 'lz4-napi';
import { makeKernel, type CodecKernel } from '../../src/format/codec-kernel.js';
import { Codec, CODEC_NAMES, payloadOverhead } from '../../src/format/codecs.js';
import { loadAddon, lz4Block, lz4Implementation, sharedAligned } from '../../src/native/index.js';
import { KiB, randomData, textData } from '../helpers/images.js';

const block = lz4Block!;
const viaLiblz4: CodecKernel = makeKernel({ ...lz4napi, block });
const viaNapi: CodecKernel = makeKernel(lz4napi);

t.ok(lz4Block, `liblz4 loads here (${lz4Implementation}); .ci/run installs it with the lz4 package`);

function samples(): Array<[string, Buffer]> {
  const mixed = (n: number, seed: number) => {
    const b = Buffer.alloc(n);
    randomData(Math.floor(n / 3), seed).copy(b, 0);
    textData(Math.floor(n / 3), seed).copy(b, Math.floor(n / 3));
    return b;
  };
  return [
    ['1 byte', Buffer.from([42])],
    ['4095 bytes of text', textData(4095, 1)],
    ['64 KiB of zeros', Buffer.alloc(64 * KiB)],
    ['64 KiB + 1 mixed', mixed(64 * KiB + 1, 2)],
    ['1 MiB mixed', mixed(1024 * KiB, 3)],
    ['1 MiB random', randomData(1024 * KiB, 4)],
    ['300001 bytes of text', textData(300_001, 5)],
  ];
}

t.test("each implementation decodes the other's output byte-exact, for every codec", async (t) => {
  for (const [name, plain] of samples()) {
    for (const codec of [Codec.LZ4, Codec.LZ4_BLOCKS]) {
      for (const [from, to, label] of [
        [viaLiblz4, viaNapi, 'liblz4 -> lz4-napi'],
        [viaNapi, viaLiblz4, 'lz4-napi -> liblz4'],
      ] as const) {
        const out = Buffer.alloc(plain.length + payloadOverhead(plain.length));
        const r = from.encodeInto(plain, codec, out, 0);
        const back = Buffer.alloc(plain.length);
        to.decodeInto(r.codec, out.subarray(0, r.length), plain.length, back);
        t.ok(back.equals(plain), `${name}, ${CODEC_NAMES[codec]} (stored as ${CODEC_NAMES[r.codec]}), ${label}`);
      }
    }
  }
});

t.test('liblz4 compresses like lz4-napi: zeros and text shrink, random stays raw', async (t) => {
  const text = textData(1024 * KiB, 6);
  const random = randomData(1024 * KiB, 7);
  const out = Buffer.alloc(2 * 1024 * KiB);
  const a = viaLiblz4.encodeInto(text, Codec.LZ4_BLOCKS, out, 0);
  const b = viaNapi.encodeInto(text, Codec.LZ4_BLOCKS, out, 0);
  t.ok(a.length < text.length * 0.6, `text: ${a.length} bytes from ${text.length}`);
  t.ok(Math.abs(a.length - b.length) < text.length * 0.05, `sizes within 5% of lz4-napi's (${a.length} vs ${b.length})`);
  t.equal(viaLiblz4.encodeInto(random, Codec.LZ4, out, 0).codec, Codec.NONE, 'random data is stored raw');
  t.equal(viaNapi.encodeInto(random, Codec.LZ4, out, 0).codec, Codec.NONE, 'random data is stored raw by lz4-napi too (sampled first)');
  // Why whole-chunk LZ4 is the default: a match may reach back past a sub-block's start.
  const whole = viaLiblz4.encodeInto(text, Codec.LZ4, out, 0);
  t.equal(whole.codec, Codec.LZ4);
  t.ok(whole.length < a.length, `text as one block: ${whole.length} bytes, as 64 KiB sub-blocks ${a.length}`);
  t.equal(viaLiblz4.encodeInto(Buffer.alloc(1024 * KiB), Codec.LZ4_BLOCKS, out, 0).length, 4 + 16 * 4, 'zeros: only the tags');
});

t.test('liblz4 block calls: a block that does not fit reports 0; a bad block reports -1, never a crash', async (t) => {
  const text = textData(64 * KiB, 8);
  t.equal(block.compress(text, Buffer.alloc(16)), 0, 'no room: 0');
  const dst = Buffer.alloc(80 * KiB);
  const n = block.compress(text, dst);
  t.ok(n > 0 && n < text.length, `compressed to ${n}`);
  const packed = dst.subarray(0, n);
  t.equal(block.decompress(packed, Buffer.alloc(text.length - 1)), -1, 'output one byte too small: -1');
  const back = Buffer.alloc(text.length);
  t.equal(block.decompress(packed, back), text.length);
  t.ok(back.equals(text));
  let bad = 0;
  for (let i = 0; i < 2000; i++) {
    const junk = Buffer.from(packed);
    junk[(i * 7919) % junk.length] ^= 1 + (i % 255);
    const at = (i * 31) % junk.length;
    if (i % 3 === 0) junk.fill(i & 0xff, at, Math.min(junk.length, at + 8));
    const r = block.decompress(i % 5 === 0 ? junk.subarray(0, i % junk.length) : junk, back);
    if (r < -1 || r > back.length) bad++;
  }
  t.equal(bad, 0, '2000 damaged blocks: each -1 or a length within the buffer');
  t.throws(() => block.compress('text' as unknown as Uint8Array, dst), TypeError, 'non-bytes are a TypeError');
});

t.test('sharedAligned: page-aligned SharedArrayBuffer views, zero-filled', async (t) => {
  const probe = loadAddon() as { alignOffset(b: Uint8Array, a: number): number };
  for (const size of [0, 1, 48 + 1024 * KiB, 4 * 1024 * KiB + 123]) {
    const b = sharedAligned(size);
    t.equal(b.length, size);
    t.ok(b.buffer instanceof SharedArrayBuffer, 'shared');
    t.equal(probe.alignOffset(b, 4096), 0, `${size} bytes: starts on a page boundary`);
    t.ok(
      b.every((x) => x === 0),
      'zero-filled',
    );
  }
  t.throws(() => sharedAligned(-1), RangeError);
});
