// The frame decoder and the control-message parsers are pure and total: thousands of random and mutated frames
// (bit flips, truncations, extensions, hostile lengths, wrong versions, garbage JSON) give a frame or a clean
// RnodeError with a transport code, never a crash, a hang or an allocation beyond the input.
import t from 'tap';
import { RnodeError } from '../../src/errors.js';
import {
  decodeFragments,
  decodeFrame,
  encodeFrame,
  FrameFlag,
  FrameType,
  FRAME_HEADER_BYTES,
  parseClientMessage,
  parseDataMeta,
  parseNodeMessage,
  parsePutMeta,
  PROTOCOL_VERSION,
  TransportErrorCodes,
} from '../../src/transport/index.js';

/** mulberry32: reproducible randomness. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

const CLEAN = new Set<string>([TransportErrorCodes.PROTOCOL, TransportErrorCodes.VERSION]);

function samples(): Buffer[] {
  return [
    encodeFrame({ type: FrameType.CONTROL, stream: 0, seq: 0, meta: { op: 'hello', token: 'x', client: 'c' } }),
    encodeFrame({ type: FrameType.CONTROL, stream: 3, seq: 9, meta: { op: 'get', key: 'disks/d/points/0000000001.json', offset: 5, length: 10 } }),
    encodeFrame({ type: FrameType.CONTROL, stream: 4, seq: 1, meta: { op: 'listPage', items: [{ key: 'a/b', size: 3, etag: 'e' }], more: true } }),
    encodeFrame({
      type: FrameType.CONTROL,
      stream: 4,
      seq: 1,
      meta: { op: 'error', code: 'RNODE_X', message: 'm', details: { offset: 5 }, credit: 70 },
    }),
    encodeFrame({
      type: FrameType.PUT,
      stream: 7,
      seq: 2,
      flags: FrameFlag.CHUNK | FrameFlag.COMPRESSED,
      diskOffset: 65536,
      plainXxh64: 0x1234n,
      meta: { key: 'disks/d/chunks/0000000001/000000000001' },
      payload: Buffer.alloc(300, 7),
    }),
    encodeFrame({ type: FrameType.DATA, stream: 8, seq: 3, meta: { size: 4 }, payload: Buffer.from('abcd') }),
  ];
}

/** Decodes and, when it parses, runs the typed parsers the receiving side would run. */
function consume(b: Buffer): 'ok' | string {
  try {
    const f = decodeFrame(b, 64 * 1024);
    if (f.type === FrameType.CONTROL) {
      try {
        parseClientMessage(f.meta);
      } catch (err) {
        if (!(err instanceof RnodeError) || !CLEAN.has(err.code)) throw err;
      }
      parseNodeMessage(f.meta);
    } else if (f.type === FrameType.PUT) parsePutMeta(f.meta);
    else parseDataMeta(f.meta);
    return 'ok';
  } catch (err) {
    if (err instanceof RnodeError && CLEAN.has(err.code)) return err.code;
    throw err;
  }
}

t.test('round trip of every frame type', async (t) => {
  for (const b of samples()) {
    const f = decodeFrame(b);
    t.equal(f.version, PROTOCOL_VERSION);
    t.equal(encodeFrame({ ...f }).equals(b), true, `type ${f.type} stream ${f.stream} re-encodes identically`);
  }
  const put = decodeFrame(samples()[4]);
  t.equal(put.diskOffset, 65536);
  t.equal(put.plainXxh64, 0x1234n);
  t.equal(put.payload.length, 300);
  t.equal(decodeFrame(samples()[0]).diskOffset, null, 'no offset on a control frame');
});

t.test('an unknown protocol version is refused with a clear error', async (t) => {
  const b = Buffer.from(samples()[0]);
  b[4] = PROTOCOL_VERSION + 1;
  t.throws(() => decodeFrame(b), { code: TransportErrorCodes.VERSION, message: /version 2.*version 1/ });
});

t.test('hostile lengths are refused before anything is allocated', async (t) => {
  const b = Buffer.from(samples()[5]);
  b.writeUInt32LE(0xffff_ffff, 28);
  t.throws(() => decodeFrame(b), { code: TransportErrorCodes.PROTOCOL, message: /payload length/ });
  const c = Buffer.from(samples()[5]);
  c.writeUInt32LE(c.readUInt32LE(28) + 1, 28);
  t.throws(() => decodeFrame(c), { code: TransportErrorCodes.PROTOCOL, message: /header says/ });
  t.throws(() => decodeFrame(Buffer.alloc(100 * 1024), 64 * 1024), { code: TransportErrorCodes.PROTOCOL, message: /exceeds the limit/ });
  t.throws(() => decodeFrame(Buffer.alloc(FRAME_HEADER_BYTES - 1)), { code: TransportErrorCodes.PROTOCOL });
  t.throws(() => parseClientMessage({ op: 'get', key: 'x'.repeat(5000) }), { code: TransportErrorCodes.PROTOCOL });
  t.throws(() => parseClientMessage({ op: 'get', key: 'k', offset: -1 }), { code: TransportErrorCodes.PROTOCOL });
  t.throws(() => parseNodeMessage({ op: 'listPage', items: new Array(20_000).fill({ key: 'a', size: 1 }), more: false }), {
    code: TransportErrorCodes.PROTOCOL,
  });
  // A resume's welcome: the acks it replays are checked like any object info.
  const welcome = { op: 'welcome', session: 's', window: 65536, maxFrame: 65536, maxInflight: 8, node: 'n' };
  t.same(parseNodeMessage({ ...welcome, stored: [{ stream: 3, key: 'p/a', size: 9, etag: 'e' }] }), {
    ...welcome,
    stored: [{ stream: 3, key: 'p/a', size: 9, etag: 'e' }],
  });
  for (const stored of [
    'x',
    [{ key: 'k', size: 1 }],
    [{ stream: -1, key: 'k', size: 1 }],
    [{ stream: 1, size: 1 }],
    new Array(70_000).fill({ stream: 1, key: 'k', size: 1 }),
  ]) {
    t.throws(() => parseNodeMessage({ ...welcome, stored }), { code: TransportErrorCodes.PROTOCOL });
  }
});

t.test('fuzz: random and mutated frames give a frame or a clean error', async (t) => {
  const rnd = prng(20261126);
  const base = samples();
  const outcomes: Record<string, number> = {};
  const count = (k: string) => {
    outcomes[k] = (outcomes[k] ?? 0) + 1;
  };
  const started = performance.now();
  // Pure random bytes of random lengths.
  for (let i = 0; i < 3000; i++) {
    const b = Buffer.alloc(Math.floor(rnd() * 200));
    for (let j = 0; j < b.length; j++) b[j] = Math.floor(rnd() * 256);
    count(consume(b));
  }
  // Random bytes behind a valid magic and version (reaches the deeper checks).
  for (let i = 0; i < 3000; i++) {
    const b = Buffer.alloc(FRAME_HEADER_BYTES + Math.floor(rnd() * 120));
    for (let j = 0; j < b.length; j++) b[j] = Math.floor(rnd() * 256);
    b.writeUInt32LE(0x46574e52, 0);
    b[4] = PROTOCOL_VERSION;
    b[5] = 1 + Math.floor(rnd() * 3);
    if (rnd() < 0.7) {
      b.writeUInt32LE(b.length - FRAME_HEADER_BYTES, 24);
      b.writeUInt32LE(0, 28);
    }
    count(consume(b));
  }
  // Mutations of valid frames: flips, truncations, extensions, splices of JSON.
  for (let i = 0; i < 6000; i++) {
    const src = base[Math.floor(rnd() * base.length)];
    let b = Buffer.from(src);
    const kind = Math.floor(rnd() * 5);
    if (kind === 0) for (let k = 0; k < 1 + rnd() * 4; k++) b[Math.floor(rnd() * b.length)] ^= 1 << Math.floor(rnd() * 8);
    else if (kind === 1) b = b.subarray(0, Math.floor(rnd() * b.length));
    else if (kind === 2) b = Buffer.concat([b, Buffer.alloc(1 + Math.floor(rnd() * 20), Math.floor(rnd() * 256))]);
    else if (kind === 3) {
      const at = FRAME_HEADER_BYTES + Math.floor(rnd() * (b.length - FRAME_HEADER_BYTES));
      b[at] = Math.floor(rnd() * 256);
    } else {
      const at = Math.floor(rnd() * FRAME_HEADER_BYTES);
      b.writeUInt32LE(Math.floor(rnd() * 2 ** 32), Math.min(at, FRAME_HEADER_BYTES - 4));
    }
    count(consume(b));
  }
  t.comment(`12000 inputs in ${Math.round(performance.now() - started)} ms: ${JSON.stringify(outcomes)}`);
  t.ok((outcomes[TransportErrorCodes.PROTOCOL] ?? 0) > 1000, 'most inputs are refused as protocol errors');
  t.ok((outcomes.ok ?? 0) > 0, 'some mutations still parse (e.g. a flipped payload byte)');
  t.equal(
    Object.keys(outcomes).every((k) => k === 'ok' || CLEAN.has(k)),
    true,
    'no other outcome',
  );
});

/** A message cut into fragments at random places (a peer may split it anywhere, empty fragments included). */
function splitRandomly(b: Buffer, rnd: () => number): Buffer[] {
  const cuts = Array.from({ length: Math.floor(rnd() * 5) }, () => Math.floor(rnd() * (b.length + 1))).sort((x, y) => x - y);
  const out: Buffer[] = [];
  let at = 0;
  for (const c of [...cuts, b.length]) {
    out.push(b.subarray(at, c));
    at = c;
  }
  return out;
}

/** decodeFrame's outcome: the frame re-encoded, or the error code. */
function outcome(decode: () => { frame: Record<string, unknown>; payload: Buffer }): string {
  try {
    const { frame, payload } = decode();
    return `ok ${JSON.stringify({ ...frame, plainXxh64: String(frame.plainXxh64) })} ${payload.toString('hex')}`;
  } catch (err) {
    if (err instanceof RnodeError && CLEAN.has(err.code)) return err.code;
    throw err;
  }
}

// The node reads PUTs as the fragments ws received (binaryType 'fragments'), so it copies a payload once.
t.test('a frame read from its fragments is the frame read whole, however the message was split', async (t) => {
  const rnd = prng(20261201);
  const base = samples();
  const big = encodeFrame({ type: FrameType.PUT, stream: 9, seq: 4, meta: { key: 'repo/plain/packs/ab/abcd' }, payload: Buffer.alloc(50_000, 3) });
  let same = 0;
  for (let i = 0; i < 4000; i++) {
    let b = Buffer.from(i % 7 === 0 ? big : base[Math.floor(rnd() * base.length)]);
    if (rnd() < 0.5) b[Math.floor(rnd() * b.length)] ^= 1 << Math.floor(rnd() * 8);
    if (rnd() < 0.2) b = b.subarray(0, Math.floor(rnd() * b.length));
    const parts = splitRandomly(b, rnd);
    const whole = outcome(() => {
      const { payload, ...frame } = decodeFrame(b, 64 * 1024);
      return { frame, payload };
    });
    const pieces = outcome(() => {
      const r = decodeFragments(parts, 64 * 1024);
      const payload = Buffer.concat(r.payload);
      if (r.size !== b.length || payload.length !== r.payloadLength || r.payload.some((p) => p.length === 0)) throw new Error('sizes do not add up');
      return { frame: r.frame, payload };
    });
    if (whole === pieces) same++;
    else t.fail(`split ${parts.map((p) => p.length).join('+')}: ${pieces.slice(0, 120)} instead of ${whole.slice(0, 120)}`);
  }
  t.equal(same, 4000, 'every split gives the same frame or the same error');
  const r = decodeFragments([
    big.subarray(0, big.length - 50_000),
    big.subarray(big.length - 50_000, big.length - 20_000),
    big.subarray(big.length - 20_000),
  ]);
  t.equal(r.payload.length, 2, 'a payload that came as its own fragments stays in them (no copy)');
  t.equal(r.payload[0].buffer, big.buffer, 'views of the received bytes');
  t.throws(() => decodeFragments([], 64 * 1024), { code: TransportErrorCodes.PROTOCOL }, 'an empty message');
  t.throws(
    () => decodeFragments([big, big], 64 * 1024),
    { code: TransportErrorCodes.PROTOCOL, message: /exceeds the limit/ },
    'the limit counts every fragment',
  );
});
