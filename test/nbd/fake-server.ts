// A scriptable NBD server for fault tests: a correct fixed-newstyle handshake by default, then whatever the
// test sends, including garbage, oversize lengths, wrong handles, stalls and hang-ups.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { nbdProtocol as P } from '../../src/source/nbd/index.js';

export interface FakeExport {
  size?: number;
  /** Context names the server selects (ids 1, 2, ... in this order), when the client asks for them. */
  contexts?: string[];
  structured?: boolean;
  blockSize?: [number, number, number];
  /** Reply to NBD_OPT_GO with this error instead of the export. */
  goError?: number;
}

export interface Request { flags: number; type: number; handle: bigint; offset: number; length: number }

/** One client connection, seen from the server. */
export class Peer {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private want: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private closed = false;
  readonly contextIds = new Map<string, number>();

  constructor(readonly sock: net.Socket) {
    sock.on('data', (d) => { this.chunks.push(d); this.buffered += d.length; this.pump(); });
    sock.on('close', () => { this.closed = true; this.pump(); });
    sock.on('error', () => undefined);
  }

  read(n: number): Promise<Buffer> {
    return new Promise((resolve, reject) => { this.want = { n, resolve, reject }; this.pump(); });
  }

  write(b: Buffer): void {
    if (!this.sock.destroyed) this.sock.write(b);
  }

  private pump(): void {
    const w = this.want;
    if (!w) return;
    if (this.buffered >= w.n) {
      const all = Buffer.concat(this.chunks);
      this.chunks = [all.subarray(w.n)];
      this.buffered -= w.n;
      this.want = undefined;
      w.resolve(all.subarray(0, w.n));
    } else if (this.closed) {
      this.want = undefined;
      w.reject(new Error('client closed'));
    }
  }

  greet(flags = P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES): void {
    const b = Buffer.alloc(18);
    b.writeBigUInt64BE(P.NBDMAGIC, 0);
    b.writeBigUInt64BE(P.IHAVEOPT, 8);
    b.writeUInt16BE(flags, 16);
    this.write(b);
  }

  optionReply(option: number, type: number, data: Buffer = Buffer.alloc(0), lengthOverride?: number): void {
    const b = Buffer.alloc(20);
    b.writeBigUInt64BE(P.OPTION_REPLY_MAGIC, 0);
    b.writeUInt32BE(option, 8);
    b.writeUInt32BE(type >>> 0, 12);
    b.writeUInt32BE(lengthOverride ?? data.length, 16);
    this.write(Buffer.concat([b, data]));
  }

  async option(): Promise<{ option: number; data: Buffer }> {
    const h = await this.read(16);
    const len = h.readUInt32BE(12);
    return { option: h.readUInt32BE(8), data: len ? await this.read(len) : Buffer.alloc(0) };
  }

  /** A correct handshake up to and including NBD_OPT_GO. */
  async handshake(e: FakeExport = {}): Promise<void> {
    this.greet();
    await this.read(4);
    for (;;) {
      const { option, data } = await this.option();
      if (option === P.Opt.STRUCTURED_REPLY) {
        this.optionReply(option, e.structured === false ? P.RepErr.UNSUP : P.Rep.ACK);
      } else if (option === P.Opt.SET_META_CONTEXT) {
        const names = metaQueries(data);
        (e.contexts ?? []).forEach((name, i) => {
          if (!names.includes(name)) return;
          this.contextIds.set(name, i + 1);
          const d = Buffer.alloc(4 + Buffer.byteLength(name));
          d.writeUInt32BE(i + 1, 0);
          d.write(name, 4);
          this.optionReply(option, P.Rep.META_CONTEXT, d);
        });
        this.optionReply(option, P.Rep.ACK);
      } else if (option === P.Opt.GO) {
        if (e.goError !== undefined) { this.optionReply(option, e.goError, Buffer.from('no such export')); continue; }
        const info = Buffer.alloc(12);
        info.writeUInt16BE(P.Info.EXPORT, 0);
        info.writeBigUInt64BE(BigInt(e.size ?? 1024 * 1024), 2);
        info.writeUInt16BE(P.TFLAG_HAS_FLAGS | P.TFLAG_READ_ONLY, 10);
        this.optionReply(option, P.Rep.INFO, info);
        if (e.blockSize) {
          const bs = Buffer.alloc(14);
          bs.writeUInt16BE(P.Info.BLOCK_SIZE, 0);
          e.blockSize.forEach((v, i) => bs.writeUInt32BE(v >>> 0, 2 + 4 * i));
          this.optionReply(option, P.Rep.INFO, bs);
        }
        this.optionReply(option, P.Rep.ACK);
        return;
      } else {
        this.optionReply(option, P.Rep.ACK);
      }
    }
  }

  async request(): Promise<Request> {
    const b = await this.read(28);
    if (b.readUInt32BE(0) !== P.REQUEST_MAGIC) throw new Error('bad request magic');
    return { flags: b.readUInt16BE(4), type: b.readUInt16BE(6), handle: b.readBigUInt64BE(8), offset: Number(b.readBigUInt64BE(16)), length: b.readUInt32BE(24) };
  }

  chunk(handle: bigint, type: number, flags: number, payload: Buffer, lengthOverride?: number): void {
    const h = Buffer.alloc(20);
    h.writeUInt32BE(P.STRUCTURED_REPLY_MAGIC, 0);
    h.writeUInt16BE(flags, 4);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(handle, 8);
    h.writeUInt32BE(lengthOverride ?? payload.length, 16);
    this.write(Buffer.concat([h, payload]));
  }

  data(handle: bigint, offset: number, data: Buffer, done = true): void {
    const p = Buffer.alloc(8 + data.length);
    p.writeBigUInt64BE(BigInt(offset), 0);
    data.copy(p, 8);
    this.chunk(handle, P.ReplyType.OFFSET_DATA, done ? P.REPLY_FLAG_DONE : 0, p);
  }

  hole(handle: bigint, offset: number, length: number, done = true): void {
    const p = Buffer.alloc(12);
    p.writeBigUInt64BE(BigInt(offset), 0);
    p.writeUInt32BE(length, 8);
    this.chunk(handle, P.ReplyType.OFFSET_HOLE, done ? P.REPLY_FLAG_DONE : 0, p);
  }

  status(handle: bigint, contextId: number, descriptors: Array<[number, number]>, done = true): void {
    const p = Buffer.alloc(4 + 8 * descriptors.length);
    p.writeUInt32BE(contextId, 0);
    descriptors.forEach(([len, flags], i) => { p.writeUInt32BE(len, 4 + 8 * i); p.writeUInt32BE(flags, 8 + 8 * i); });
    this.chunk(handle, P.ReplyType.BLOCK_STATUS, done ? P.REPLY_FLAG_DONE : 0, p);
  }

  error(handle: bigint, errno: number, message: string, done = true): void {
    const m = Buffer.from(message);
    const p = Buffer.alloc(6 + m.length);
    p.writeUInt32BE(errno, 0);
    p.writeUInt16BE(m.length, 4);
    m.copy(p, 6);
    this.chunk(handle, P.ReplyType.ERROR, done ? P.REPLY_FLAG_DONE : 0, p);
  }

  simple(handle: bigint, error: number, data: Buffer = Buffer.alloc(0)): void {
    const h = Buffer.alloc(16);
    h.writeUInt32BE(P.SIMPLE_REPLY_MAGIC, 0);
    h.writeUInt32BE(error, 4);
    h.writeBigUInt64BE(handle, 8);
    this.write(Buffer.concat([h, data]));
  }
}

function metaQueries(data: Buffer): string[] {
  let at = 4 + data.readUInt32BE(0);
  const n = data.readUInt32BE(at);
  at += 4;
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const len = data.readUInt32BE(at);
    out.push(data.subarray(at + 4, at + 4 + len).toString());
    at += 4 + len;
  }
  return out;
}

interface Teardown { teardown(fn: () => void | Promise<void>): void }

/** Listens on a unix socket in dir; each connection is handed to `serve` (errors there only end that connection). */
export async function fakeServer(t: Teardown, dir: string, serve: (peer: Peer) => Promise<void> | void): Promise<{ socket: string; url: (q?: string) => string; peers: Peer[] }> {
  const socket = path.join(dir, `fake-${Math.random().toString(36).slice(2, 8)}.sock`);
  const peers: Peer[] = [];
  const server = net.createServer((sock) => {
    const peer = new Peer(sock);
    peers.push(peer);
    Promise.resolve().then(() => serve(peer)).catch(() => sock.destroy());
  });
  await new Promise<void>((resolve) => server.listen(socket, resolve));
  t.teardown(async () => {
    for (const p of peers) p.sock.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    fs.rmSync(socket, { force: true });
  });
  return { socket, peers, url: (q) => `nbd+unix:///?socket=${socket}${q ? `&${q}` : ''}` };
}
