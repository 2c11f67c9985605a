// Regressions found by the fuzz targets (test/fuzz/targets.ts), one test per bug, each with the input it found.
import t from 'tap';
import { ErrorCodes } from '../../src/errors.js';
import { xxh64 } from '../../src/format/checksum.js';
import { decodeChunkHeader } from '../../src/format/chunk.js';
import { decodeSegment, encodeSegment } from '../../src/format/table.js';
import { targets } from './targets.js';

const reseal = (b: Buffer) => {
  b.writeBigUInt64LE(xxh64(b.subarray(0, b.length - 8)), b.length - 8);
  return b;
};
const entry = { index: 3, xxh64: 1n, strong: Buffer.alloc(16, 3), writer: 1, plainLength: 65536, storedLength: 4000, flags: 0, codec: 2 };

t.test('bug: a table record index above 2^53 was rounded to a Number, so it could alias another chunk', async (t) => {
  // Found by the "table" target: index 0x007fffff_ff000009 decoded as 36028792723996680.
  const b = encodeSegment([entry]);
  b.writeBigUInt64LE(0x007fffffff000009n, 12);
  t.throws(() => decodeSegment(reseal(b), 'x'), { code: ErrorCodes.MANIFEST_CORRUPT, message: /index out of range/ });
  const ok = encodeSegment([{ ...entry, index: Number.MAX_SAFE_INTEGER }]);
  t.equal(decodeSegment(ok, 'x')[0].index, Number.MAX_SAFE_INTEGER, 'the largest safe index still decodes');
});

t.test('bug: reserved bytes of a table segment were ignored (a resealed edit decoded as the original)', async (t) => {
  // Found by the "table" target: header byte 5 set, and record bytes 46-63 set, both accepted.
  const head = encodeSegment([entry]);
  head[5] = 1;
  t.throws(() => decodeSegment(reseal(head), 'x'), { code: ErrorCodes.MANIFEST_CORRUPT, message: /reserved header bytes/ });
  const rec = encodeSegment([entry]);
  rec[12 + 50] = 0xff;
  t.throws(() => decodeSegment(reseal(rec), 'x'), { code: ErrorCodes.MANIFEST_CORRUPT, message: /reserved bytes set/ });
});

t.test('bug: reserved bytes 44-47 of a chunk header were ignored', async (t) => {
  // Found by the "chunk-header" target.
  const b = Buffer.from('Uk5DSwEBADAAAAEALAEAAO/Nq5B4VjQSIUNlhwm63P4FAAAAAAAAAAIAAAABAAAA', 'base64');
  t.throws(() => decodeChunkHeader(b), { code: ErrorCodes.CHUNK_CORRUPT, message: /reserved/ });
  b.writeUInt32LE(0, 44);
  t.equal(decodeChunkHeader(b).index, 5, 'the same header with zero reserved bytes decodes');
});

t.test('the targets reject the found inputs cleanly now', async (t) => {
  const byName = new Map(targets.map((x) => [x.name, x]));
  await byName.get('table')!.run(Buffer.from('Uk5UQgEBAAAAAAAAePvlvcsM62k=', 'base64'));
  await byName.get('chunk-header')!.run(Buffer.from('Uk5DSwEBADAAAAEALAEAAO/Nq5B4VjQSIUNlhwm63P4FAAAAAAAAAAIAAAABAAAA', 'base64'));
  t.pass('no finding');
});
