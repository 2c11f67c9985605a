// A hostile NBD client against the export: bad magic (handshake and requests), bad flags, oversized options and
// requests, out-of-range offsets, writes to a read-only export, malformed option payloads, a request flood that
// never reads its replies, half-open and stalled connections, too many connections. Each gets an error reply or a
// close; the server keeps serving the disk correctly with bounded memory.
import path from 'node:path';
import t from 'tap';
import { codecWorkers } from '../../src/pipeline/codec-workers.js';
import { Cmd, encodeGo, encodeMetaContextQuery, encodeOption, encodeRequest, Opt, Rep, RepErr } from '../../src/source/nbd/protocol.js';
import { fsStore, snap, tmpDir } from '../helpers/images.js';
import { CHUNK, compare, haveTools, makeDisk, MiB, Raw, serveExport, SIZE, storedDisk, unixUrl } from './helpers.js';

t.setTimeout(180_000);
t.teardown(() => codecWorkers().close());

t.test('hostile clients get an error or a close; the server stays up and correct', { skip: !haveTools && 'tools missing' }, async (t) => {
  const dir = tmpDir(t, 'export-hostile');
  const store = fsStore(path.join(dir, 'store'));
  const image = path.join(dir, 'disk.img');
  makeDisk(image);
  await snap(store, image, 'vm', { chunkSize: CHUNK, lease: false });
  const exp = await serveExport(t, dir, { store, disk: 'vm', handshakeTimeoutMs: 800, maxConnections: 12 });
  const sock = exp.socket;
  const clients: Raw[] = [];
  const client = () => {
    const c = new Raw(sock);
    clients.push(c);
    return c;
  };
  t.teardown(() => clients.forEach((c) => c.close()));

  await t.test('handshake', async (t) => {
    let c = client();
    await c.read(18);
    c.send(Buffer.from([0xff, 0xff, 0xff, 0xff]));
    t.ok(await c.closedWithin(2000), 'unknown client flags: closed');

    c = client();
    await c.greet();
    c.send(Buffer.from('NOTIHAVEOPT_____', 'latin1'));
    t.ok(await c.closedWithin(2000), 'bad option magic: closed');

    c = client();
    await c.greet();
    const huge = encodeOption(Opt.GO).subarray(0, 16);
    huge.writeUInt32BE(1 << 30, 12);
    c.send(huge);
    t.ok(await c.closedWithin(2000), 'a 1 GiB option: closed without reading it');

    c = client();
    await c.greet();
    c.send(encodeOption(99, Buffer.from('x')));
    t.equal((await c.optionReply()).type, RepErr.UNSUP, 'unknown option: NBD_REP_ERR_UNSUP');
    const badGo = encodeGo('vm', [3]);
    badGo.writeUInt16BE(500, badGo.length - 4);
    c.send(encodeOption(Opt.GO, badGo));
    t.equal((await c.optionReply()).type, RepErr.INVALID, 'GO whose info count does not match its length: NBD_REP_ERR_INVALID');
    c.send(encodeOption(Opt.GO, encodeGo('nope', [])));
    t.equal((await c.optionReply()).type, RepErr.UNKNOWN, 'unknown export: NBD_REP_ERR_UNKNOWN');
    c.send(encodeOption(Opt.SET_META_CONTEXT, encodeMetaContextQuery('vm', ['base:allocation'])));
    t.equal((await c.optionReply()).type, RepErr.INVALID, 'meta context before structured replies: NBD_REP_ERR_INVALID');
    c.send(encodeOption(Opt.STRUCTURED_REPLY));
    t.equal((await c.optionReply()).type, Rep.ACK);
    const q = encodeMetaContextQuery('vm', ['base:allocation']);
    q.writeUInt32BE(0x7fffffff, 4 + 2); // query count far beyond the payload
    c.send(encodeOption(Opt.SET_META_CONTEXT, q));
    t.equal((await c.optionReply()).type, RepErr.INVALID, 'a query count the payload cannot hold: NBD_REP_ERR_INVALID');
    c.send(encodeOption(Opt.STARTTLS));
    t.equal((await c.optionReply()).type, RepErr.POLICY, 'STARTTLS without TLS configured: NBD_REP_ERR_POLICY');
    c.send(encodeOption(Opt.ABORT));
    t.equal((await c.optionReply()).type, Rep.ACK, 'ABORT acknowledged');
    t.ok(await c.closedWithin(2000), 'then closed');

    c = client();
    t.ok(await c.closedWithin(3000), 'connected and silent (half-open): closed after the handshake deadline');
    c = client();
    await c.read(18);
    c.send(Buffer.from([0, 0]));
    t.ok(await c.closedWithin(3000), 'half a client-flags field, then silence: closed after the deadline');
  });

  await t.test('transmission', async (t) => {
    const c = client();
    await c.open('vm');
    c.send(encodeRequest(Cmd.READ, 0, 1n, 0, 64 * MiB));
    t.equal(await c.simpleReply(), 22, 'a 64 MiB read: EINVAL');
    c.send(encodeRequest(Cmd.READ, 0, 2n, SIZE - 512, 1024));
    t.equal(await c.simpleReply(), 22, 'a read past the end: EINVAL');
    const far = encodeRequest(Cmd.READ, 0, 3n, 0, 512);
    far.writeBigUInt64BE(0xffffffffffffff00n, 16);
    c.send(far);
    t.equal(await c.simpleReply(), 22, 'an offset near 2^64 (no overflow): EINVAL');
    c.send(Buffer.concat([encodeRequest(Cmd.WRITE, 0, 4n, 0, 4096), Buffer.alloc(4096, 1)]));
    t.equal(await c.simpleReply(), 1, 'a write to the read-only export: EPERM (payload consumed)');
    c.send(Buffer.concat([encodeRequest(Cmd.WRITE, 0, 40n, SIZE, 4096), Buffer.alloc(4096, 1)]));
    t.equal(await c.simpleReply(), 1, 'a write past the end of the read-only export: EPERM too, not ENOSPC (qemu pauses on it)');
    c.send(encodeRequest(Cmd.BLOCK_STATUS, 0, 5n, 0, 4096));
    t.equal(await c.simpleReply(), 22, 'block status without a meta context: EINVAL');
    c.send(encodeRequest(Cmd.READ, 0x8000, 6n, 0, 512));
    t.equal(await c.simpleReply(), 22, 'unknown command flags: EINVAL');
    c.send(encodeRequest(Cmd.READ, 0, 7n, 0, 4096));
    t.equal(await c.simpleReply(4096), 0, 'and the connection still serves a good read');
    const bad = encodeRequest(Cmd.READ, 0, 8n, 0, 512);
    bad.writeUInt32BE(0xdeadbeef, 0);
    c.send(bad);
    t.ok(await c.closedWithin(2000), 'bad request magic: closed');

    const w = client();
    await w.open('vm');
    w.send(encodeRequest(Cmd.WRITE, 0, 1n, 0, 64 * MiB));
    t.ok(await w.closedWithin(2000), 'a 64 MiB write: closed (its payload is not read)');
  });

  await t.test('a request flood that never reads its replies, and too many connections', async (t) => {
    const before = process.memoryUsage().rss;
    const flood = client();
    await flood.open('vm');
    // 4000 reads of 1 MiB (4 GiB of replies) sent at once; the client never reads a byte back.
    const reqs: Buffer[] = [];
    for (let i = 0; i < 4000; i++) reqs.push(encodeRequest(Cmd.READ, 0, BigInt(i), (i % 8) * MiB, MiB));
    flood.socket.pause();
    flood.send(Buffer.concat(reqs));
    await new Promise((r) => setTimeout(r, 1500));
    const grown = process.memoryUsage().rss - before;
    t.ok(grown < 256 * MiB, `server memory stays bounded under the flood (rss +${Math.round(grown / MiB)} MiB)`);
    const r = await compare(image, unixUrl(sock, 'vm'));
    t.equal(r.code, 0, `meanwhile another client reads the whole disk correctly ${r.stderr}`);

    const many: Raw[] = [];
    for (let i = 0; i < 20; i++) many.push(client());
    // Waited for, not slept on: the closes come from this process's export, which a busy machine may stall.
    for (let waited = 0; waited < 5000 && many.filter((c) => c.closed).length < 8; waited += 50) await new Promise((r) => setTimeout(r, 50));
    const refused = many.filter((c) => c.closed).length;
    t.ok(refused >= 8, `connections beyond the limit are closed (${refused} of 20)`);
    for (const c of many) c.close();
    flood.close();
  });

  t.ok(exp.stats().protocolErrors > 0, `protocol errors counted (${exp.stats().protocolErrors})`);
  const r = await compare(image, unixUrl(sock, 'vm'));
  t.equal(r.code, 0, 'after all of it, the export still serves the disk byte-exact');
});

// A client that goes away with reads in flight (an nbdcopy killed mid-copy) is the normal end of a session. Bug: each
// reply that could no longer be sent was logged as a failed request, RNODE_INTERNAL (a finder's 200 such clients made
// 1065 warnings).
t.test(
  'a client gone with reads in flight: no failed request is logged, and the export serves on',
  { skip: !haveTools && 'tools missing' },
  async (t) => {
    const { dir, store, image } = await storedDisk(t, 'export-vanish');
    const events: Array<{ event: string; fields: Record<string, unknown> }> = [];
    const exp = await serveExport(t, dir, { store, disk: 'vm', log: (event, fields) => events.push({ event, fields }) });
    for (let i = 0; i < 5; i++) {
      const c = new Raw(exp.socket);
      await c.open();
      for (let h = 0; h < 8; h++) c.send(encodeRequest(Cmd.READ, 0, BigInt(h + 1), (h * MiB) % (SIZE - MiB), MiB));
      await new Promise((r) => setTimeout(r, 5 * i)); // gone before, during or after the first replies
      c.close();
    }
    await new Promise((r) => setTimeout(r, 1000));
    t.same(
      events.filter((e) => e.event === 'request-failed'),
      [],
      'no request-failed lines',
    );
    t.equal(exp.stats().protocolErrors, 0, 'not counted as protocol errors either');
    const r = await compare(image, unixUrl(exp.socket, 'vm'));
    t.equal(r.code, 0, `the export still serves the disk byte-exact ${r.stderr}`);
  },
);
