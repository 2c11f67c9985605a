// A hostile or broken NBD server must never crash or hang the node: every fault below (garbage, oversize
// lengths, replies outside the request, unknown handles, stalls, hang-ups) ends in an RnodeError with a code
// and advice, quickly. Also: well-behaved variations (simple replies only, out-of-order chunks, errors that
// leave the connection usable) and the bound on requests in flight.
import t from 'tap';
import type { Test } from 'tap';
import { ErrorCodes, RnodeError } from '../../src/errors.js';
import { NbdSource, nbdProtocol as P, type NbdSourceOptions } from '../../src/source/nbd/index.js';
import { fakeServer, type Peer } from './fixtures/fake-server.js';
import { sharedAligned } from '../../src/native/index.js';
import { collect, randomData, tmpDir } from './fixtures/qemu.js';

// Deadlines short enough for stall tests, long enough that a busy CI machine does not turn an instant
// protocol error into a timeout.
const FAST: NbdSourceOptions = { connectTimeoutMs: 5000, requestTimeoutMs: 1500 };
const STALL: NbdSourceOptions = { connectTimeoutMs: 400 };

/** Awaits a rejection, checks it is an RnodeError with the code (and message), and that it came quickly. */
async function fails(t: Test, p: Promise<unknown>, code: string, message: RegExp, what: string, maxMs = 3000): Promise<RnodeError | undefined> {
  const started = Date.now();
  const err = await p.then(
    () => undefined,
    (e) => e,
  );
  const ms = Date.now() - started;
  t.ok(err instanceof RnodeError, `${what}: rejects with an RnodeError${err instanceof RnodeError ? '' : ` (got ${err})`}`);
  t.equal(err?.code, code, `${what}: code ${code}`);
  t.match(err?.message, message, `${what}: message`);
  t.ok(ms < maxMs, `${what}: within ${maxMs} ms (${ms} ms)`);
  return err;
}

t.test('handshake faults', async (t) => {
  const dir = tmpDir(t, 'nbd-hostile');
  const open = (url: string) => NbdSource.open(url, FAST);

  const http = await fakeServer(t, dir, (p) => p.write(Buffer.from('HTTP/1.1 400 Bad Request\r\n\r\n')));
  await fails(
    t,
    open(http.url()),
    ErrorCodes.SOURCE_IO,
    /broke the protocol during the handshake \(the peer did not greet with NBDMAGIC/,
    'an HTTP server',
  );

  const silent = await fakeServer(t, dir, () => undefined);
  await fails(
    t,
    NbdSource.open(silent.url(), STALL),
    ErrorCodes.SOURCE_IO,
    /did not complete the handshake within 0.4 s/,
    'a server that never greets',
  );

  const slowAfterGreeting = await fakeServer(t, dir, async (p) => {
    p.greet();
    await p.read(4);
  });
  await fails(
    t,
    NbdSource.open(slowAfterGreeting.url(), STALL),
    ErrorCodes.SOURCE_IO,
    /did not complete the handshake/,
    'a server that stalls on the first option',
  );

  const hangup = await fakeServer(t, dir, async (p) => {
    p.greet();
    await p.read(4);
    p.sock.destroy();
  });
  await fails(
    t,
    open(hangup.url()),
    ErrorCodes.SOURCE_IO,
    /handshake .*failed: the server closed the connection|closed the connection/,
    'a server that hangs up',
  );

  const oversize = await fakeServer(t, dir, async (p) => {
    p.greet();
    await p.read(4);
    const o = await p.option();
    p.optionReply(o.option, P.Rep.ACK, Buffer.alloc(0), 0xffffffff); // claims 4 GiB of reply data
  });
  await fails(t, open(oversize.url()), ErrorCodes.SOURCE_IO, /option reply of 4294967295 bytes/, 'an option reply claiming 4 GiB');

  const wrongOption = await fakeServer(t, dir, async (p) => {
    p.greet();
    await p.read(4);
    await p.option();
    p.optionReply(P.Opt.GO, P.Rep.ACK);
  });
  await fails(t, open(wrongOption.url()), ErrorCodes.SOURCE_IO, /reply for option 7 while waiting for option 8/, 'a reply to the wrong option');

  const endless = await fakeServer(t, dir, async (p) => {
    p.greet();
    await p.read(4);
    for (;;) {
      const o = await p.option();
      if (o.option !== P.Opt.GO) {
        p.optionReply(o.option, P.Rep.ACK);
        continue;
      }
      const info = Buffer.from([0, 99]); // an info type the client skips
      p.sock.cork(); // one burst, so the reply cap (not the deadline) is what stops it even on a busy machine
      for (let i = 0; i < 5000 && !p.sock.destroyed; i++) p.optionReply(o.option, P.Rep.INFO, info);
      p.sock.uncork();
      return;
    }
  });
  await fails(
    t,
    NbdSource.open(endless.url(), { connectTimeoutMs: 5000 }),
    ErrorCodes.SOURCE_IO,
    /broke the protocol .*more than 1024 replies/,
    'an endless stream of option replies',
  );

  const huge = await fakeServer(t, dir, (p) => p.handshake({ size: 2 ** 60 }));
  // Not a protocol fault and not worth a retry: a disk larger than rnode addresses is a bad source (exit 2).
  await fails(
    t,
    open(huge.url()),
    ErrorCodes.BAD_SOURCE,
    /is 1152921504606846976 bytes, larger than rnode can address \(9007199254740991 bytes, 8 PiB\); it cannot be replicated/,
    'an export size beyond 2^53',
  );

  const badBlock = await fakeServer(t, dir, (p) => p.handshake({ blockSize: [3, 4096, 1 << 20] }));
  await fails(t, open(badBlock.url()), ErrorCodes.SOURCE_IO, /minimum block size 3/, 'a minimum block size that is not a power of two');

  const unknown = await fakeServer(t, dir, (p) => p.handshake({ goError: P.RepErr.UNKNOWN }));
  await fails(t, open(unknown.url()), ErrorCodes.SOURCE_NOT_FOUND, /has no export named ""/, 'an unknown export');

  const tls = await fakeServer(t, dir, (p) => p.handshake({ goError: P.RepErr.TLS_REQD }));
  await fails(t, open(tls.url()), ErrorCodes.BAD_SOURCE, /requires TLS/, 'a server that requires TLS');

  const oldstyle = await fakeServer(t, dir, (p) => {
    const b = Buffer.alloc(16);
    b.writeBigUInt64BE(P.NBDMAGIC, 0);
    b.writeBigUInt64BE(P.OLDSTYLE_MAGIC, 8);
    p.write(b);
  });
  await fails(t, open(oldstyle.url()), ErrorCodes.BAD_SOURCE, /oldstyle/, 'an oldstyle server');
});

/** A server with a good handshake whose transmission phase is `serve`. */
async function transmitting(t: Test, dir: string, serve: (p: Peer) => Promise<void>, e: Parameters<Peer['handshake']>[0] = {}) {
  return fakeServer(t, dir, async (p) => {
    await p.handshake({ size: 1 << 20, contexts: ['base:allocation', 'qemu:dirty-bitmap:b0'], ...e });
    await serve(p);
  });
}

t.test('transmission faults: each fails the request (and drops the connection) quickly', async (t) => {
  const dir = tmpDir(t, 'nbd-hostile');
  const buf = sharedAligned(1 << 20);
  const cases: Array<[string, (p: Peer) => Promise<void>, RegExp]> = [
    [
      'a chunk claiming 4 GiB of data',
      async (p) => {
        const r = await p.request();
        p.chunk(r.handle, P.ReplyType.OFFSET_DATA, 1, Buffer.alloc(0), 0xfffffff0);
      },
      /OFFSET_DATA chunk of 4294967280 bytes for a 65536-byte read/,
    ],
    [
      'data outside the request',
      async (p) => {
        const r = await p.request();
        p.data(r.handle, r.offset + r.length - 10, Buffer.alloc(20));
      },
      /OFFSET_DATA \[65526, \+20\) outside the request \[0, \+65536\)/,
    ],
    [
      'overlapping chunks',
      async (p) => {
        const r = await p.request();
        p.data(r.handle, 0, Buffer.alloc(4096), false);
        p.hole(r.handle, 2048, 4096);
      },
      /OFFSET_HOLE at 2048 overlaps/,
    ],
    [
      'a reply for an unknown handle',
      async (p) => {
        const r = await p.request();
        p.data(r.handle + 99n, 0, Buffer.alloc(r.length));
      },
      /reply for handle \d+, which has no request in flight/,
    ],
    [
      'garbage instead of a reply',
      async (p) => {
        await p.request();
        p.write(Buffer.from('\x00\x01garbage garbage garbage'));
      },
      /unexpected reply magic 0x00016761/,
    ],
    [
      'a simple success reply after structured replies were negotiated',
      async (p) => {
        const r = await p.request();
        p.simple(r.handle, 0, Buffer.alloc(r.length));
      },
      /simple success reply to a READ after structured replies/,
    ],
    [
      'an unknown chunk type',
      async (p) => {
        const r = await p.request();
        p.chunk(r.handle, 77, 1, Buffer.alloc(4));
      },
      /unknown structured reply type 77/,
    ],
    [
      'a hang-up in the middle of a chunk',
      async (p) => {
        const r = await p.request();
        p.chunk(r.handle, P.ReplyType.OFFSET_DATA, 1, Buffer.alloc(100), 8 + r.length);
        p.sock.end();
      },
      /lost the connection to NBD server/,
    ],
    [
      'a stall',
      async (p) => {
        await p.request();
      },
      /did not answer a READ of 65536 bytes at offset 0 within 1.5 s/,
    ],
    [
      'a stall in the middle of a chunk',
      async (p) => {
        const r = await p.request();
        p.chunk(r.handle, P.ReplyType.OFFSET_DATA, 1, Buffer.alloc(1000), 8 + r.length);
      },
      /did not answer a READ/,
    ],
  ];
  for (const [what, serve, message] of cases) {
    const srv = await transmitting(t, dir, serve);
    const src = await NbdSource.open(srv.url(), FAST);
    await fails(t, src.read(0, buf, 65536), ErrorCodes.SOURCE_IO, message, what);
    await fails(t, src.read(0, buf, 4096), ErrorCodes.SOURCE_IO, /./, `${what}: the next read`, 200);
    const closing = Date.now();
    await src.close();
    t.ok(Date.now() - closing < 1000, `${what}: close() returns promptly`);
  }
});

t.test('block status faults', async (t) => {
  const dir = tmpDir(t, 'nbd-hostile');
  const cases: Array<[string, (p: Peer) => Promise<void>, RegExp]> = [
    [
      'a zero-length descriptor',
      async (p) => {
        const r = await p.request();
        p.status(r.handle, 1, [
          [4096, 0],
          [0, 0],
        ]);
      },
      /descriptor of length 0/,
    ],
    [
      'an unnegotiated context id',
      async (p) => {
        const r = await p.request();
        p.status(r.handle, 9, [[4096, 0]]);
      },
      /meta context id 9, which was not negotiated/,
    ],
    [
      'a chunk claiming 64 MiB of descriptors',
      async (p) => {
        const r = await p.request();
        p.chunk(r.handle, P.ReplyType.BLOCK_STATUS, 1, Buffer.alloc(0), 4 + 8 * (8 << 20));
      },
      /BLOCK_STATUS chunk of 67108868 bytes/,
    ],
    [
      'block status chunk in reply to the wrong command',
      async (p) => {
        const r = await p.request();
        p.data(r.handle, 0, Buffer.alloc(16));
      },
      /OFFSET_DATA in reply to BLOCK_STATUS/,
    ],
  ];
  for (const [what, serve, message] of cases) {
    const srv = await transmitting(t, dir, serve);
    const src = await NbdSource.open(srv.url(), FAST);
    await fails(t, collect(src.allocatedExtents()), ErrorCodes.SOURCE_IO, message, what);
    await src.close();
  }

  // Only the other context answered: the request fails but the connection stays usable.
  const missing = await transmitting(t, dir, async (p) => {
    let r = await p.request();
    p.status(r.handle, 2, [[1 << 20, 1]]);
    r = await p.request();
    p.status(r.handle, 1, [[1 << 20, 0]], false);
    p.status(r.handle, 2, [[1 << 20, 1]]);
  });
  const src = await NbdSource.open(missing.url('bitmap=b0'), FAST);
  await fails(t, collect(src.allocatedExtents()), ErrorCodes.SOURCE_IO, /without the requested meta context/, 'no chunk for the asked context');
  t.same(await collect(src.allocatedExtents()), [{ offset: 0, length: 1 << 20 }], 'the next request works');
  await src.close();
});

t.test('well-behaved variations and limits', async (t) => {
  const dir = tmpDir(t, 'nbd-hostile');
  const SIZE = 1 << 20;
  const disk = Buffer.alloc(SIZE);
  for (let i = 0; i < SIZE; i++) disk[i] = (i * 7 + (i >> 12)) & 0xff;
  disk.fill(0, 0, 128 * 1024); // served as OFFSET_HOLE chunks
  disk.fill(0, 512 * 1024, 576 * 1024);

  // Out-of-order chunks, holes, a server error that leaves the connection usable, and the in-flight bound.
  let maxOutstanding = 0;
  const srv = await transmitting(
    t,
    dir,
    async (p) => {
      const outstanding: Array<{ handle: bigint; offset: number; length: number; type: number }> = [];
      const nextRequest = () => {
        const n = p.request();
        n.catch(() => undefined);
        return n;
      };
      let next = nextRequest();
      for (;;) {
        // Requests pile up until three are waiting or the client goes quiet, then all are answered newest first.
        const r = await Promise.race([next, new Promise<undefined>((resolve) => setTimeout(resolve, 20))]);
        if (r) {
          next = nextRequest();
          if (r.type === P.Cmd.DISC) return;
          outstanding.push(r);
          maxOutstanding = Math.max(maxOutstanding, outstanding.length);
          if (outstanding.length < 3) continue;
        }
        while (outstanding.length) {
          const q = outstanding.pop()!;
          if (q.type === P.Cmd.BLOCK_STATUS) {
            // Descriptors reach past the asked range; the client must clip.
            p.status(q.handle, 1, [
              [q.length / 2, 0],
              [q.length, 3],
            ]);
          } else if (q.offset === 4096 * 100) {
            p.error(q.handle, 5, 'medium error\u0007 on sector 800');
          } else {
            const half = q.length / 2;
            p.data(q.handle, q.offset + half, disk.subarray(q.offset + half, q.offset + q.length), false);
            if (disk.subarray(q.offset, q.offset + half).every((b) => b === 0)) p.hole(q.handle, q.offset, half, false);
            else p.data(q.handle, q.offset, disk.subarray(q.offset, q.offset + half), false);
            p.chunk(q.handle, P.ReplyType.NONE, P.REPLY_FLAG_DONE, Buffer.alloc(0));
          }
        }
      }
    },
    { size: SIZE, blockSize: [4096, 4096, 64 * 1024] },
  );
  const src = await NbdSource.open(srv.url(), { ...FAST, requestTimeoutMs: 10_000, maxInFlight: 3 });
  t.equal(src.alignment, 4096, 'alignment from NBD_INFO_BLOCK_SIZE minimum');
  t.equal(src.maxReadBytes, 64 * 1024, 'maxReadBytes from NBD_INFO_BLOCK_SIZE maximum');
  const buf = sharedAligned(SIZE);
  t.equal(await src.read(0, buf, SIZE), SIZE, 'a 1 MiB read split into 16 requests');
  t.ok(buf.equals(disk), 'reassembled out-of-order chunks are exact');
  t.ok(maxOutstanding <= 3 && maxOutstanding >= 2, `at most 3 requests in flight (saw ${maxOutstanding})`);
  await fails(
    t,
    src.read(4096 * 100, buf, 4096),
    ErrorCodes.SOURCE_IO,
    /failed a READ of 4096 bytes at offset 409600 \(EIO: medium error on sector 800\)/,
    'a server-side EIO',
  );
  t.same(await collect(src.allocatedExtents()), [{ offset: 0, length: SIZE / 2 }], 'block status clipped to the window');
  await t.rejects(src.read(100, buf, 4096), { code: ErrorCodes.INTERNAL }, 'unaligned reads are refused before anything is sent');
  await src.close();

  // No structured replies: simple replies for reads, no block status (whole disk "allocated"), no change tracking.
  const simple = await fakeServer(t, dir, async (p) => {
    await p.handshake({ size: SIZE, structured: false });
    for (;;) {
      const r = await p.request();
      if (r.type === P.Cmd.DISC) return;
      p.simple(r.handle, 0, disk.subarray(r.offset, r.offset + r.length));
    }
  });
  const old = await NbdSource.open(simple.url('bitmap=b0&checkpoint=b1'), { ...FAST, requestTimeoutMs: 10_000 });
  const b2 = sharedAligned(SIZE);
  t.equal(await old.read(0, b2, SIZE), SIZE);
  t.ok(b2.equals(disk), 'simple replies read exactly');
  t.same(await collect(old.allocatedExtents()), [{ offset: 0, length: SIZE }], 'no base:allocation: the whole disk is read');
  await t.rejects(collect(old.changedExtentsSince('b0')), { code: ErrorCodes.CHANGE_MARKER_INVALID, message: /no structured replies/ });
  await old.close();
});

t.test('replies that arrive a few bytes at a time (chunk heads split across reads) reassemble exactly', async (t) => {
  const dir = tmpDir(t, 'nbd-hostile');
  const SIZE = 64 * 1024;
  const disk = randomData(SIZE, 77);
  const srv = await transmitting(
    t,
    dir,
    async (p) => {
      p.sock.setNoDelay(true);
      // Each reply's first 40 bytes (20-byte chunk header, the 8-byte offset or 4-byte context id, and on) go out
      // 3 bytes per write, a few ms apart, so the client sees every fixed head in pieces; the rest follows at once.
      const write = p.write.bind(p);
      let queue = Promise.resolve();
      p.write = (b: Buffer) => {
        queue = queue.then(async () => {
          for (let i = 0; i < Math.min(40, b.length); i += 3) {
            write(b.subarray(i, Math.min(i + 3, 40, b.length)));
            await new Promise((r) => setTimeout(r, 2));
          }
          if (b.length > 40) write(b.subarray(40));
        });
      };
      for (;;) {
        const r = await p.request();
        if (r.type === P.Cmd.DISC) return;
        if (r.type === P.Cmd.BLOCK_STATUS)
          p.status(r.handle, 1, [
            [r.length / 2, 0],
            [r.length / 2, 3],
          ]);
        else p.data(r.handle, r.offset, disk.subarray(r.offset, r.offset + r.length));
      }
    },
    { size: SIZE },
  );
  const src = await NbdSource.open(srv.url(), { ...FAST, requestTimeoutMs: 10_000 });
  const buf = sharedAligned(SIZE);
  t.equal(await src.read(0, buf, SIZE), SIZE);
  t.ok(buf.equals(disk), 'OFFSET_DATA with its offset split across reads: exact bytes');
  t.same(await collect(src.allocatedExtents()), [{ offset: 0, length: SIZE / 2 }], 'BLOCK_STATUS with its context id split across reads');
  await src.close();
});

t.test('random replies: every read settles quickly with a result or an RnodeError', async (t) => {
  const dir = tmpDir(t, 'nbd-fuzz');
  const types = [0, 1, 2, 5, 0x8001, 0x8002, 0x8003, 3, 0xffff];
  let seed = 0;
  const srv = await transmitting(
    t,
    dir,
    async (p) => {
      const rnd = randomData(64, 5000 + seed++);
      const r = await p.request();
      const handle = rnd[0] % 4 === 0 ? rnd.readBigUInt64BE(8) : r.handle;
      const lengths = [0, 6, 8, 12, 14, 20, r.length + 8, r.length + 9, 0xffffffff, rnd.readUInt32BE(16) % 4096];
      const length = lengths[rnd[1] % lengths.length];
      const payload = randomData(Math.min(length, 2048), 7000 + seed);
      if (length >= 8 && rnd[2] % 2 === 0) payload.writeBigUInt64BE(BigInt(r.offset + (rnd[3] % 3) * 512), 0); // a plausible offset
      p.chunk(handle, types[rnd[4] % types.length], rnd[5] % 2, payload, length);
      if (rnd[6] % 2) p.sock.end();
    },
    { size: 1 << 20 },
  );
  const buf = sharedAligned(65536);
  const outcomes = new Map<string, number>();
  for (let i = 0; i < 60; i++) {
    const src = await NbdSource.open(srv.url(), { connectTimeoutMs: 5000, requestTimeoutMs: 500 });
    const started = Date.now();
    const outcome = await src.read(0, buf, 65536).then(
      () => 'read',
      (e) => (e instanceof RnodeError ? e.code : `not an RnodeError: ${e}`),
    );
    const ms = Date.now() - started;
    if (!t.ok(ms < 3000, `case ${i}: settled in ${ms} ms`)) break;
    if (!t.ok(outcome === 'read' || outcome === ErrorCodes.SOURCE_IO, `case ${i}: ${outcome}`)) break;
    outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
    await src.close();
  }
  t.ok((outcomes.get(ErrorCodes.SOURCE_IO) ?? 0) > 50, `almost all random replies are refused (${JSON.stringify([...outcomes])})`);
});
