// The inputs the fuzz targets get: arbitrary bytes, and mutations of the seed corpus (byte-level edits, JSON value
// swaps for JSON seeds, checksums fixed up so mutations reach past the checksum). Shared by the test and the runner.
import fc from 'fast-check';
import { xxh64 } from '../../src/format/checksum.js';
import { encodeManifest } from '../../src/format/manifest.js';
import { blake3 } from '@napi-rs/blake-hash';
import { FUZZ_CONTEXTS, seeds, type FuzzTarget } from './targets.js';

const INTERESTING_U32 = [0, 1, 2, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xffffffff, 48, 64, 4096, 1 << 20, 1 << 24];
const INTERESTING_JSON: unknown[] = [
  null,
  -1,
  0,
  1.5,
  2 ** 53,
  -(2 ** 63),
  1e308,
  '',
  'x'.repeat(5000),
  '../../etc',
  [],
  {},
  [[[[[]]]]],
  true,
  '\u0000',
  JSON.parse('{"__proto__": 1}'),
  'aes-256-gcm',
];

type Edit = { kind: number; pos: number; value: number; len: number };

/** Applies byte-level edits (flip, set, u32 write, insert, delete, duplicate, truncate) at positions mod length. */
function applyEdits(seed: Buffer, edits: Edit[]): Buffer {
  let b = Buffer.from(seed);
  for (const e of edits) {
    const at = b.length ? e.pos % b.length : 0;
    switch (e.kind % 7) {
      case 0:
        if (b.length) b[at] ^= 1 << (e.value % 8);
        break;
      case 1:
        if (b.length) b[at] = [0, 0xff, 0x7f, 0x80, e.value & 0xff][e.value % 5];
        break;
      case 2:
        if (b.length >= 4) b.writeUInt32LE(INTERESTING_U32[e.value % INTERESTING_U32.length] >>> 0, Math.min(at, b.length - 4));
        break;
      case 3:
        b = Buffer.concat([b.subarray(0, at), Buffer.alloc(e.len % 64, e.value & 0xff), b.subarray(at)]);
        break;
      case 4:
        b = Buffer.concat([b.subarray(0, at), b.subarray(at + (e.len % 64) + 1)]);
        break;
      case 5:
        b = Buffer.concat([b.subarray(0, at), b.subarray(at, at + (e.len % 256)), b.subarray(at)]);
        break;
      case 6:
        b = b.subarray(0, at);
        break;
    }
  }
  return b;
}

/** Replaces values at random places of a JSON document with awkward ones. */
function jsonEdits(seed: Buffer, picks: number[]): Buffer | undefined {
  let doc: any;
  try {
    doc = JSON.parse(seed.toString('utf8'));
  } catch {
    return undefined;
  }
  if (doc === null || typeof doc !== 'object') return undefined;
  for (let i = 0; i + 1 < picks.length; i += 2) {
    let node = doc;
    let p = picks[i];
    for (let depth = 0; depth < 6; depth++) {
      const keys = Object.keys(node);
      if (!keys.length) break;
      const k = keys[p % keys.length];
      p = Math.floor(p / 7) + 3;
      const v = node[k];
      if (v !== null && typeof v === 'object' && p % 3 !== 0) {
        node = v;
        continue;
      }
      const r = picks[i + 1];
      node[k] =
        r % 4 === 0 && typeof v === 'number'
          ? v + (r % 2 ? 1 : -1)
          : r % 4 === 1
            ? undefined
            : structuredClone(INTERESTING_JSON[r % INTERESTING_JSON.length]);
      break;
    }
  }
  return Buffer.from(JSON.stringify(doc));
}

/** An unsealed v2 envelope with its BLAKE3 checksum recomputed for context (header | context | body). */
function fixEnvelope(b: Buffer, context: string): Buffer {
  if (b.length < 8 + 32) return b;
  const out = Buffer.from(b);
  const body = out.subarray(8, out.length - 32);
  blake3(Buffer.concat([out.subarray(0, 8), Buffer.from(context), body])).copy(out, out.length - 32);
  return out;
}

/** Makes a mutated object pass its checksum, so the checks behind the checksum get exercised. */
const fixups: Partial<Record<string, (b: Buffer) => Buffer>> = {
  envelope: (b) => fixEnvelope(b, FUZZ_CONTEXTS.envelope),
  index: (b) => fixEnvelope(b, FUZZ_CONTEXTS.index),
  'table-v3': (b) => fixEnvelope(b, FUZZ_CONTEXTS['table-v3']),
  pack: (b) => {
    // The trailer sits before the 8-byte tail; fix its checksum where the tail says it is.
    if (b.length < 8) return b;
    const length = b.readUInt32LE(b.length - 8);
    const start = b.length - 8 - length;
    if (length > b.length - 8 || start < 0) return b;
    return Buffer.concat([b.subarray(0, start), fixEnvelope(b.subarray(start, start + length), FUZZ_CONTEXTS.pack), b.subarray(b.length - 8)]);
  },
  table: (b) => {
    if (b.length < 8) return b;
    const out = Buffer.from(b);
    out.writeBigUInt64LE(xxh64(out.subarray(0, out.length - 8)), out.length - 8);
    return out;
  },
  manifest: (b) => {
    try {
      const { checksum: _c, ...rest } = JSON.parse(b.toString('utf8'));
      return encodeManifest(rest);
    } catch {
      return b;
    }
  },
};

/** Inputs for a target: random bytes, random text, or a mutated seed. */
export function inputs(target: FuzzTarget): fc.Arbitrary<Buffer> {
  const corpus = seeds(target.name);
  const random = fc.uint8Array({ maxLength: 2048 }).map((a) => Buffer.from(a));
  const text = fc.string({ maxLength: 512, unit: 'binary' }).map((s) => Buffer.from(s));
  if (!corpus.length) return fc.oneof(random, text);
  const fix: ((b: Buffer) => Buffer) | undefined = fixups[target.name];
  const edit = fc.record({ kind: fc.nat(), pos: fc.nat(), value: fc.nat(), len: fc.nat() });
  const mutated = fc.tuple(fc.nat(corpus.length - 1), fc.array(edit, { minLength: 1, maxLength: 6 }), fc.boolean()).map(([i, edits, fixIt]) => {
    const b = applyEdits(corpus[i], edits);
    return fix && fixIt ? fix(b) : b;
  });
  const jsonMutated = fc
    .tuple(fc.nat(corpus.length - 1), fc.array(fc.nat(), { minLength: 2, maxLength: 8 }), fc.boolean())
    .map(([i, picks, fixIt]) => {
      const b = jsonEdits(corpus[i], picks) ?? corpus[i];
      return fix && fixIt ? fix(b) : b;
    });
  const asIs = fc.nat(corpus.length - 1).map((i) => corpus[i]);
  return fc.oneof(
    { arbitrary: mutated, weight: 5 },
    { arbitrary: jsonMutated, weight: 2 },
    { arbitrary: random, weight: 2 },
    { arbitrary: text, weight: 1 },
    { arbitrary: asIs, weight: 1 },
  );
}

/** The property: the target's contract holds for every input. */
export function property(target: FuzzTarget): fc.IAsyncProperty<[Buffer]> {
  return fc.asyncProperty(inputs(target), async (input) => {
    await target.run(input);
  });
}
