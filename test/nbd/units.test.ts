// The pure parts of the NBD client: the reply parser (split anywhere, fed garbage), the coverage set that
// catches overlapping read chunks, the windowed extent merger and the URL parser.
import t from 'tap';
import { ErrorCodes } from '../../src/errors.js';
import { CoveredRanges, nbdProtocol as P, parseNbdUrl, ReplyParser, statusRuns, type ReplySink } from '../../src/source/nbd/index.js';
import { collect, randomData } from './fixtures/qemu.js';

/** Records what the parser reports; simple replies for even handles carry `simplePayload` bytes. */
function recorder(simplePayload = 0) {
  const events: string[] = [];
  let payload: Buffer[] = [];
  const sink: ReplySink = {
    simpleReply: (handle, error) => {
      events.push(`simple ${handle} ${error}`);
      return handle % 2n === 0n ? simplePayload : 0;
    },
    chunkHeader: (h) => {
      events.push(`chunk ${h.handle} ${h.type} ${h.flags} ${h.length}`);
    },
    payload: (p) => {
      payload.push(Buffer.from(p));
    },
    end: () => {
      events.push(`end ${Buffer.concat(payload).toString('hex')}`);
      payload = [];
    },
  };
  return { sink, events };
}

function simple(handle: bigint, error: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(16);
  h.writeUInt32BE(P.SIMPLE_REPLY_MAGIC, 0);
  h.writeUInt32BE(error, 4);
  h.writeBigUInt64BE(handle, 8);
  return Buffer.concat([h, data]);
}

function chunk(handle: bigint, type: number, flags: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(20);
  h.writeUInt32BE(P.STRUCTURED_REPLY_MAGIC, 0);
  h.writeUInt16BE(flags, 4);
  h.writeUInt16BE(type, 6);
  h.writeBigUInt64BE(handle, 8);
  h.writeUInt32BE(payload.length, 16);
  return Buffer.concat([h, payload]);
}

t.test('reply parser: the same messages whatever the split', async (t) => {
  const stream = Buffer.concat([
    simple(2n, 0, randomData(100, 1)),
    simple(3n, 5),
    chunk(7n, P.ReplyType.OFFSET_DATA, 0, randomData(300, 2)),
    chunk(7n, P.ReplyType.NONE, P.REPLY_FLAG_DONE, Buffer.alloc(0)),
    chunk(9n, P.ReplyType.BLOCK_STATUS, 1, randomData(20, 3)),
  ]);
  const whole = recorder(100);
  new ReplyParser(whole.sink).push(stream);
  t.equal(whole.events.length, 10, 'five messages, each with a header and an end');
  for (let seed = 0; seed < 200; seed++) {
    const r = recorder(100);
    const parser = new ReplyParser(r.sink);
    const cuts = randomData(8, seed + 10);
    let at = 0;
    for (let i = 0; at < stream.length; i++) {
      const n = seed < 20 ? 1 : 1 + (cuts[i % 8] % 64);
      parser.push(stream.subarray(at, at + n));
      at += n;
    }
    if (!t.same(r.events, whole.events, `split #${seed}`)) break;
    t.ok(parser.idle);
  }
});

t.test('reply parser: garbage only ever raises NbdProtocolError, and stays dead', async (t) => {
  let rejected = 0;
  for (let seed = 0; seed < 300; seed++) {
    const r = recorder(64);
    const parser = new ReplyParser(r.sink);
    const junk = randomData(512, 1000 + seed);
    // Some with a valid magic first, so headers with random lengths and types get through to the sink.
    if (seed % 2) junk.writeUInt32BE(seed % 4 === 1 ? P.STRUCTURED_REPLY_MAGIC : P.SIMPLE_REPLY_MAGIC, 0);
    try {
      parser.push(junk);
    } catch (err) {
      if (!t.type(err, P.NbdProtocolError, `seed ${seed}: a protocol error`)) break;
      if (seed % 2 === 0) rejected++;
      t.throws(() => parser.push(Buffer.from([1, 2, 3])), P.NbdProtocolError, 'a dead parser refuses more input');
    }
  }
  t.equal(rejected, 150, 'garbage without a reply magic is always rejected');
});

t.test('CoveredRanges: in any order, no overlaps', async (t) => {
  const c = new CoveredRanges();
  t.ok(c.add(100, 200));
  t.ok(c.add(300, 400));
  t.notOk(c.add(150, 160), 'inside');
  t.notOk(c.add(50, 101), 'overlaps the left edge');
  t.notOk(c.add(200, 301), 'touches one and overlaps the next');
  t.notOk(c.add(0, 1000), 'covers everything');
  t.notOk(c.add(5, 5), 'empty');
  t.ok(c.add(200, 300), 'fills the gap exactly');
  t.ok(c.add(0, 100));
  t.ok(c.add(400, 401));
  t.equal(c.bytes, 401);
  t.notOk(c.add(399, 400));
  // Random disjoint pieces in random order always sum up.
  const d = new CoveredRanges();
  const order = [...Array(64).keys()].sort((a, b) => randomData(1, a)[0] - randomData(1, b)[0]);
  for (const i of order) t.ok(d.add(i * 10, i * 10 + 10), `piece ${i}`);
  t.equal(d.bytes, 640);
  t.notOk(d.add(315, 316));
});

t.test('statusRuns: windows, clipping, merging across windows', async (t) => {
  const calls: Array<[number, number]> = [];
  // A disk of 100 units: data at [10, 35) and [60, 100); the server answers at most 2 descriptors per query
  // and rounds its last descriptor up past the window when it answers the whole window.
  const runs = [
    [0, 10, 3],
    [10, 25, 0],
    [35, 25, 3],
    [60, 40, 0],
  ];
  const query = async (offset: number, length: number) => {
    calls.push([offset, length]);
    const out: Array<[number, number]> = [];
    for (const [o, l, f] of runs) {
      const s = Math.max(o, offset);
      const e = Math.min(o + l, offset + length);
      if (e > s) out.push([e - s, f]);
    }
    const answered = out.slice(0, 2); // stops short when the window holds more
    if (answered.length === out.length) answered[answered.length - 1][0] += 7; // rounds the last one up past the window
    const b = Buffer.alloc(answered.length * 8);
    answered.forEach(([l, f], i) => {
      b.writeUInt32BE(l, i * 8);
      b.writeUInt32BE(f, i * 8 + 4);
    });
    return b;
  };
  const got = await collect(statusRuns(query, 100, (f) => (f & 2) === 0, 30));
  t.same(
    got,
    [
      { offset: 10, length: 25 },
      { offset: 60, length: 40 },
    ],
    'runs merged across windows, clipped',
  );
  t.same(calls[0], [0, 30]);
  t.ok(
    calls.every(([o, l]) => l <= 30 && o + l <= 100),
    'every query within the window and the disk',
  );
  t.same(await collect(statusRuns(query, 0, () => true)), [], 'empty disk: no query, no extents');
  await t.rejects(
    collect(
      statusRuns(
        async () => Buffer.alloc(0),
        100,
        () => true,
      ),
    ),
    { code: ErrorCodes.SOURCE_IO },
    'no progress is an error, not a loop',
  );
});

t.test('parseNbdUrl', async (t) => {
  const u = parseNbdUrl('nbd+unix:///disk%201?socket=/run/q%20s.sock&bitmap=c1&checkpoint=c2');
  t.same(u.target, { path: '/run/q s.sock' });
  t.equal(u.exportName, 'disk 1');
  t.equal(u.bitmap, 'c1');
  t.equal(u.checkpoint, 'c2');
  t.equal(u.location, 'nbd+unix:///disk%201?socket=/run/q%20s.sock&bitmap=c1&checkpoint=c2');
  const tcp = parseNbdUrl('nbd://10.0.0.5/vda?bitmap=b');
  t.same(tcp.target, { host: '10.0.0.5', port: 10809 });
  t.equal(tcp.location, 'nbd://10.0.0.5:10809/vda?bitmap=b');
  t.same(parseNbdUrl('nbd://[::1]:7000/').target, { host: '::1', port: 7000 });
  t.equal(parseNbdUrl('nbd+unix:///?socket=/s').exportName, '', 'default export');
  for (const bad of [
    'nbd+unix:///x',
    'nbd+unix://host/x?socket=/s',
    'nbd:///x',
    'nbd://h/x?socket=/s',
    'nbd://h/x?tls=1',
    'nbd://u:p@h/x',
    'nbd://h/x?bitmap=',
    'nbds://h/x',
    'nbd://h/x?checkpoint=a%0Ab',
  ]) {
    t.throws(() => parseNbdUrl(bad), { code: ErrorCodes.BAD_SOURCE }, bad);
  }
  // The first of two would win silently (a bitmap other than the one meant); a port past 65535 is not "not a URL".
  t.throws(() => parseNbdUrl('nbd+unix:///?socket=/s&bitmap=c5&bitmap=zzz'), { message: /parameter "bitmap" is given more than once/ });
  t.throws(() => parseNbdUrl('nbd+unix:///?socket=/a&socket=/b'), { message: /parameter "socket" is given more than once/ });
  t.throws(() => parseNbdUrl('nbd://127.0.0.1:99999/x'), { code: ErrorCodes.BAD_SOURCE, message: /port 99999 is out of range \(1 to 65535\)/ });
  t.throws(() => parseNbdUrl('nbd://127.0.0.1:0/x'), { code: ErrorCodes.BAD_SOURCE, message: /port 0 is out of range/ });
  t.throws(() => parseNbdUrl('nbd+unix:///?socket=/s&bitmap=%ZZ'), { code: ErrorCodes.BAD_SOURCE, message: /not valid percent-encoding/ });
  // A URI's query, as qemu and libnbd read it: '+' is a plus (form encoding made it a space: socket "p q.sock").
  const plus = parseNbdUrl('nbd+unix:///?socket=/run/p+q.sock&bitmap=c+1&checkpoint=c%2B2');
  t.same(plus.target, { path: '/run/p+q.sock' });
  t.equal(plus.bitmap, 'c+1');
  t.equal(plus.checkpoint, 'c+2');
  t.equal(parseNbdUrl(plus.location).bitmap, 'c+1', 'the location kept in points reads back the same');
});

// `--source 'nbd://u:S3CRET@127.0.0.1:9/exp'` (or ?password=S3CRET) was refused with the whole URL in the message,
// the secret included; store URLs, --out and vddk:// leave it out.
t.test('parseNbdUrl: a refused URL is shown without its credentials', async (t) => {
  for (const url of [
    'nbd://u:S3CRET@127.0.0.1:9/exp',
    'nbd://:S3CRET@127.0.0.1:9/exp',
    'nbd://u:S3CRET@127.0.0.1:99999/exp',
    'nbd://u:S3/CRET@h/exp',
    'nbd://127.0.0.1:9/exp?password=S3CRET',
    'nbd+unix:///exp?socket=/s&bitmap=b&password=S3CRET',
  ]) {
    const err = (() => {
      try {
        parseNbdUrl(url);
      } catch (e) {
        return e as Error & { code?: string };
      }
    })();
    t.equal(err?.code, ErrorCodes.BAD_SOURCE, `${url.replace(/S3\/?CRET/, '...')}: ${err?.message}`);
    t.notMatch(err?.message, /S3\/?CRET/, 'the secret is not in the message');
    t.match(err?.message, /^NBD source "nbd(\+unix)?:\/\/.* is not valid: /, 'the rest of the URL is');
  }
});
