// One NBD client connection on node:net: handshake under a deadline, then READ and BLOCK_STATUS requests with
// several in flight (bounded), each with its own deadline. Every reply is checked against the request it
// answers; a server that breaks the protocol, stalls or hangs up fails the requests with an RnodeError and the
// connection is dropped, never trusted again.
import net from 'node:net';
import { ErrorCodes, RnodeError } from '../../errors.js';
import { Semaphore } from '../../semaphore.js';
import { negotiate, type HandshakeIo, type HandshakeRequest, type Negotiated } from './handshake.js';
import {
  cleanMessage,
  Cmd,
  decodeErrorPayload,
  encodeRequest,
  errnoName,
  isReplyError,
  MAX_STRING,
  NbdExportTooLarge,
  NbdProtocolError,
  REPLY_FLAG_DONE,
  ReplyType,
  type ChunkHeader,
} from './protocol.js';
import { CoveredRanges } from './ranges.js';
import { ReplyParser, type ReplySink } from './reply-parser.js';
import { timerDelay } from '../../timer-delay.js';

export type NbdTarget = { path: string } | { host: string; port: number };

export interface ConnectionOptions {
  /** Connect plus handshake, in ms. */
  connectTimeoutMs?: number;
  /** Each request, from sending it to its last reply chunk, in ms. */
  requestTimeoutMs?: number;
  /** Requests in flight at once; further ones wait for a slot. */
  maxInFlight?: number;
}

export const DEFAULT_CONNECT_TIMEOUT_MS = 30_000;
export const DEFAULT_REQUEST_TIMEOUT_MS = 120_000;
/** qemu-nbd serves 16 requests per client at once; more would only queue in its socket buffer. */
export const DEFAULT_MAX_IN_FLIGHT = 16;
/** Largest block status reply chunk accepted: 2 Mi descriptors (a 1 GiB window at 512-byte granularity). */
export const MAX_STATUS_DESCRIPTORS = 2 * 1024 * 1024;
const MAX_ERROR_CHUNK = 6 + MAX_STRING + 8;
/** How long close() waits for in-flight requests before dropping the connection. */
const CLOSE_GRACE_MS = 5000;
/** Bytes buffered from the server during the handshake before the socket is paused. */
const HANDSHAKE_HIGH_WATER = 256 * 1024;

interface PendingBase {
  handle: bigint;
  offset: number;
  length: number;
  timer: NodeJS.Timeout;
  resolve: (v: Buffer | undefined) => void;
  reject: (err: RnodeError) => void;
  error?: RnodeError;
}
interface PendingRead extends PendingBase {
  kind: 'read';
  dest: Buffer;
  covered: CoveredRanges;
}
interface PendingStatus extends PendingBase {
  kind: 'status';
  contextId: number;
  descriptors?: Buffer;
}
type Pending = PendingRead | PendingStatus;

/** What the payload bytes of the message being parsed are for. */
type Payload =
  | { kind: 'simple-read'; req: PendingRead; at: number }
  | { kind: 'data'; req: PendingRead; head: Buffer; headFill: number; at: number; dataLength: number; done: boolean }
  | { kind: 'buffer'; req: Pending; type: number; buf: Buffer; fill: number; done: boolean }
  | {
      kind: 'status';
      req: PendingStatus;
      head: Buffer;
      headFill: number;
      bodyLength: number;
      body?: Buffer;
      fill: number;
      skip: boolean;
      done: boolean;
    }
  | { kind: 'none'; req: Pending; done: boolean };

export class NbdConnection implements ReplySink {
  private readonly pending = new Map<bigint, Pending>();
  private readonly idleWaiters: Array<() => void> = [];
  private readonly parser = new ReplyParser(this);
  private nextHandle = 1n;
  private failure: RnodeError | undefined;
  private closing = false;
  private current: Payload | undefined;
  private readonly requestTimeoutMs: number;
  private readonly slots: Semaphore;

  private constructor(
    private readonly socket: net.Socket,
    readonly info: Negotiated,
    readonly where: string,
    opts: ConnectionOptions,
  ) {
    this.requestTimeoutMs = timerDelay(opts.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS);
    this.slots = new Semaphore(Math.max(1, opts.maxInFlight ?? DEFAULT_MAX_IN_FLIGHT));
    socket.on('data', (d: Buffer) => this.receive(d));
    socket.on('error', (err) => this.fail(this.connectionLost(err)));
    socket.on('close', () => this.fail(this.connectionLost()));
  }

  /** Connects and negotiates; rejects with an RnodeError (never hangs past connectTimeoutMs). */
  static async connect(target: NbdTarget, req: HandshakeRequest, where: string, opts: ConnectionOptions = {}): Promise<NbdConnection> {
    const timeoutMs = timerDelay(opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS);
    const socket = 'path' in target ? net.createConnection({ path: target.path }) : net.createConnection({ host: target.host, port: target.port });
    socket.setNoDelay(true);
    const reader = new HandshakeReader(socket);
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new RnodeError(
              ErrorCodes.SOURCE_IO,
              `NBD server ${where} did not complete the handshake within ${timeoutMs / 1000} s; check that it is an NBD server with a free client slot (qemu-nbd serves one client at a time unless started with -e N), then run again`,
              { retryable: true },
            ),
          ),
        timeoutMs,
      );
    });
    try {
      const info = await Promise.race([negotiate(reader, req, where), deadline]);
      const leftover = reader.detach();
      const conn = new NbdConnection(socket, info, where, opts);
      if (leftover.length) conn.receive(leftover); // a server may not talk first; the parser will say so
      return conn;
    } catch (err) {
      reader.detach();
      socket.on('error', () => undefined); // late errors of a socket being torn down have no one to tell
      socket.destroy();
      throw connectError(err, target, where);
    } finally {
      clearTimeout(timer);
    }
  }

  private receive(d: Buffer): void {
    try {
      this.parser.push(d);
    } catch (err) {
      this.fail(this.brokenProtocol(err));
    }
  }

  /** Reads [offset, offset+length) into dest[0..length). length must fit the server's maximum block size. */
  async read(offset: number, dest: Buffer, length: number): Promise<void> {
    await this.submit(Cmd.READ, 0, offset, length, (base) => ({ ...base, kind: 'read', dest, covered: new CoveredRanges() }));
  }

  /** Block status of [offset, offset+length) for one selected meta context: its raw descriptors (8 bytes each). */
  async blockStatus(offset: number, length: number, contextId: number): Promise<Buffer> {
    const d = await this.submit(Cmd.BLOCK_STATUS, 0, offset, length, (base) => ({ ...base, kind: 'status', contextId }));
    return d!;
  }

  /** Soft disconnect (NBD_CMD_DISC) once in-flight requests are answered; safe to call twice. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    // Let in-flight requests finish (a caller that gave up on a read may still have some), but not for long.
    if (!this.failure && this.pending.size > 0) {
      let timer: NodeJS.Timeout | undefined;
      await new Promise<void>((resolve) => {
        this.idleWaiters.push(resolve);
        timer = setTimeout(resolve, Math.min(this.requestTimeoutMs, CLOSE_GRACE_MS));
      });
      clearTimeout(timer);
    }
    const closed = new RnodeError(ErrorCodes.SOURCE_IO, `the NBD connection to ${this.where} is closed`);
    if (this.pending.size > 0) this.fail(closed); // still busy: hard disconnect rather than DISC with requests in flight
    this.failure ??= closed;
    this.rejectAll(this.failure);
    if (this.socket.destroyed) return;
    this.socket.end(encodeRequest(Cmd.DISC, 0, this.nextHandle++, 0, 0));
    await new Promise<void>((resolve) => {
      const t = setTimeout(() => {
        this.socket.destroy();
        resolve();
      }, 2000);
      this.socket.once('close', () => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  private async submit(
    cmd: number,
    flags: number,
    offset: number,
    length: number,
    make: (base: PendingBase) => Pending,
  ): Promise<Buffer | undefined> {
    await this.slot();
    const handle = this.nextHandle++;
    return new Promise<Buffer | undefined>((resolve, reject) => {
      const what = `${cmd === Cmd.READ ? 'READ' : 'BLOCK_STATUS'} of ${length} bytes at offset ${offset}`;
      const timer = setTimeout(
        () =>
          this.fail(
            new RnodeError(
              ErrorCodes.SOURCE_IO,
              `NBD server ${this.where} did not answer a ${what} within ${this.requestTimeoutMs / 1000} s; check that the server is alive and not overloaded, then run again`,
              { retryable: true },
            ),
          ),
        this.requestTimeoutMs,
      );
      const req = make({
        handle,
        offset,
        length,
        timer,
        resolve: (v) => {
          this.settle(handle);
          resolve(v);
        },
        reject: (e) => {
          this.settle(handle);
          reject(e);
        },
      });
      this.pending.set(handle, req);
      this.socket.write(encodeRequest(cmd, flags, handle, offset, length));
    });
  }

  /** Takes one of maxInFlight slots; a failed connection rejects the callers still waiting (rejectAll). */
  private async slot(): Promise<void> {
    if (this.failure) throw this.failure;
    await this.slots.acquire();
    if (this.failure) throw this.failure;
  }

  private settle(handle: bigint): void {
    const req = this.pending.get(handle);
    if (!req) return;
    clearTimeout(req.timer);
    this.pending.delete(handle);
    this.slots.release();
    if (this.pending.size === 0) for (const w of this.idleWaiters.splice(0)) w();
  }

  private fail(err: RnodeError): void {
    if (!this.failure) this.failure = err;
    this.socket.destroy();
    this.rejectAll(this.failure);
  }

  private rejectAll(err: RnodeError): void {
    this.slots.failWaiters(err);
    for (const req of [...this.pending.values()]) req.reject(err);
    for (const w of this.idleWaiters.splice(0)) w();
  }

  private connectionLost(cause?: Error): RnodeError {
    if (this.closing) return new RnodeError(ErrorCodes.SOURCE_IO, `the NBD connection to ${this.where} is closed`);
    return new RnodeError(
      ErrorCodes.SOURCE_IO,
      `lost the connection to NBD server ${this.where}${cause ? ` (${cause.message})` : ''}; check that the server is still running, then run again`,
      { cause, retryable: true },
    );
  }

  private brokenProtocol(err: unknown): RnodeError {
    if (err instanceof RnodeError) return err;
    return new RnodeError(
      ErrorCodes.SOURCE_IO,
      `NBD server ${this.where} broke the protocol (${(err as Error).message}); the connection was dropped: check the server, then run again`,
      { cause: err },
    );
  }

  private request(handle: bigint): Pending {
    const req = this.pending.get(handle);
    if (!req) throw new NbdProtocolError(`reply for handle ${handle}, which has no request in flight`);
    return req;
  }

  // ---- ReplySink: called by the parser, synchronously, in stream order ----

  simpleReply(handle: bigint, error: number): number {
    const req = this.request(handle);
    if (error !== 0) {
      req.error ??= this.serverError(req, error, '');
      this.current = { kind: 'none', req, done: true };
      return 0;
    }
    if (req.kind !== 'read' || this.info.structuredReplies) {
      throw new NbdProtocolError(
        `a simple success reply to a ${req.kind === 'read' ? 'READ after structured replies were negotiated' : 'BLOCK_STATUS'}`,
      );
    }
    this.current = { kind: 'simple-read', req, at: 0 };
    return req.length;
  }

  chunkHeader(h: ChunkHeader): void {
    if (!this.info.structuredReplies) throw new NbdProtocolError('a structured reply chunk although structured replies were not negotiated');
    const req = this.request(h.handle);
    const done = (h.flags & REPLY_FLAG_DONE) !== 0;
    if (isReplyError(h.type)) {
      if (h.length < 6 || h.length > MAX_ERROR_CHUNK) throw new NbdProtocolError(`error chunk of ${h.length} bytes`);
      this.current = { kind: 'buffer', req, type: h.type, buf: Buffer.alloc(h.length), fill: 0, done };
      return;
    }
    switch (h.type) {
      case ReplyType.NONE:
        if (h.length !== 0 || !done) throw new NbdProtocolError('NBD_REPLY_TYPE_NONE with a payload or without the DONE flag');
        this.current = { kind: 'none', req, done };
        return;
      case ReplyType.OFFSET_DATA:
        if (req.kind !== 'read') throw new NbdProtocolError('NBD_REPLY_TYPE_OFFSET_DATA in reply to BLOCK_STATUS');
        if (h.length < 9 || h.length - 8 > req.length)
          throw new NbdProtocolError(`OFFSET_DATA chunk of ${h.length} bytes for a ${req.length}-byte read`);
        this.current = { kind: 'data', req, head: Buffer.alloc(8), headFill: 0, at: 0, dataLength: h.length - 8, done };
        return;
      case ReplyType.OFFSET_HOLE:
        if (req.kind !== 'read') throw new NbdProtocolError('NBD_REPLY_TYPE_OFFSET_HOLE in reply to BLOCK_STATUS');
        if (h.length !== 12) throw new NbdProtocolError(`OFFSET_HOLE chunk of ${h.length} bytes (expected 12)`);
        this.current = { kind: 'buffer', req, type: h.type, buf: Buffer.alloc(12), fill: 0, done };
        return;
      case ReplyType.BLOCK_STATUS: {
        if (req.kind !== 'status') throw new NbdProtocolError('NBD_REPLY_TYPE_BLOCK_STATUS in reply to READ');
        const maxDescriptors = Math.min(MAX_STATUS_DESCRIPTORS, req.length + 1);
        if (h.length < 12 || (h.length - 4) % 8 !== 0 || (h.length - 4) / 8 > maxDescriptors) {
          throw new NbdProtocolError(`BLOCK_STATUS chunk of ${h.length} bytes for a ${req.length}-byte request`);
        }
        this.current = { kind: 'status', req, head: Buffer.alloc(4), headFill: 0, bodyLength: h.length - 4, fill: 0, skip: false, done };
        return;
      }
      default:
        throw new NbdProtocolError(`unknown structured reply type ${h.type}`);
    }
  }

  payload(piece: Buffer): void {
    const c = this.current!;
    switch (c.kind) {
      case 'simple-read':
        piece.copy(c.req.dest, c.at);
        c.at += piece.length;
        return;
      case 'data': {
        let p = piece;
        if (c.headFill < c.head.length) {
          const rest = fillHead(c, p);
          if (!rest) return;
          p = rest;
          this.claim(c.req, c.head.readBigUInt64BE(0), c.dataLength, 'OFFSET_DATA');
          c.at = Number(c.head.readBigUInt64BE(0)) - c.req.offset;
        }
        p.copy(c.req.dest, c.at);
        c.at += p.length;
        return;
      }
      case 'buffer':
        piece.copy(c.buf, c.fill);
        c.fill += piece.length;
        return;
      case 'status': {
        let p = piece;
        if (c.headFill < c.head.length) {
          const rest = fillHead(c, p);
          if (!rest) return;
          p = rest;
          const id = c.head.readUInt32BE(0);
          if (![...this.info.contexts.values()].includes(id))
            throw new NbdProtocolError(`BLOCK_STATUS for meta context id ${id}, which was not negotiated`);
          c.skip = id !== c.req.contextId;
          if (!c.skip) {
            if (c.req.descriptors) throw new NbdProtocolError(`two BLOCK_STATUS chunks for meta context id ${id}`);
            c.body = Buffer.alloc(c.bodyLength);
          }
        }
        if (!c.skip && p.length) {
          p.copy(c.body!, c.fill);
          c.fill += p.length;
        }
        return;
      }
      case 'none':
        throw new NbdProtocolError('payload bytes after a reply that has none');
    }
  }

  end(): void {
    const c = this.current!;
    this.current = undefined;
    switch (c.kind) {
      case 'simple-read':
        c.req.covered.add(0, c.req.length);
        this.complete(c.req);
        return;
      case 'data':
        if (c.done) this.complete(c.req);
        return;
      case 'buffer':
        if (c.type === ReplyType.OFFSET_HOLE) {
          const size = c.buf.readUInt32BE(8);
          if (size === 0) throw new NbdProtocolError('OFFSET_HOLE of 0 bytes');
          const req = c.req as PendingRead;
          this.claim(req, c.buf.readBigUInt64BE(0), size, 'OFFSET_HOLE');
          const at = Number(c.buf.readBigUInt64BE(0)) - req.offset;
          req.dest.fill(0, at, at + size);
        } else {
          const e = decodeErrorPayload(c.type, c.buf);
          if (e.errno === 0) throw new NbdProtocolError('error chunk with error 0');
          c.req.error ??= this.serverError(c.req, e.errno, e.message, e.offset);
        }
        if (c.done) this.complete(c.req);
        return;
      case 'status':
        if (!c.skip) {
          const d = c.body!;
          for (let i = 0; i < d.length; i += 8) {
            if (d.readUInt32BE(i) === 0) throw new NbdProtocolError('BLOCK_STATUS descriptor of length 0');
          }
          c.req.descriptors = d;
        }
        if (c.done) this.complete(c.req);
        return;
      case 'none':
        if (c.done) this.complete(c.req);
        return;
    }
  }

  /** Checks that a content chunk lies inside the request and does not overlap an earlier one. */
  private claim(req: PendingRead, offset: bigint, length: number, what: string): void {
    const start = offset - BigInt(req.offset);
    if (start < 0n || start + BigInt(length) > BigInt(req.length)) {
      throw new NbdProtocolError(`${what} [${offset}, +${length}) outside the request [${req.offset}, +${req.length})`);
    }
    if (!req.covered.add(Number(start), Number(start) + length)) throw new NbdProtocolError(`${what} at ${offset} overlaps an earlier chunk`);
  }

  private complete(req: Pending): void {
    if (req.error) {
      req.reject(req.error);
      return;
    }
    if (req.kind === 'read') {
      if (req.covered.bytes !== req.length) {
        req.reject(
          new RnodeError(
            ErrorCodes.SOURCE_IO,
            `NBD server ${this.where} answered a READ of ${req.length} bytes at offset ${req.offset} with only ${req.covered.bytes} bytes; check the server, then run again`,
          ),
        );
        return;
      }
      req.resolve(undefined);
      return;
    }
    if (!req.descriptors) {
      req.reject(
        new RnodeError(
          ErrorCodes.SOURCE_IO,
          `NBD server ${this.where} answered BLOCK_STATUS at offset ${req.offset} without the requested meta context; check the server, then run again`,
        ),
      );
      return;
    }
    req.resolve(req.descriptors);
  }

  private serverError(req: Pending, errno: number, message: string, offset?: number): RnodeError {
    const what = req.kind === 'read' ? 'READ' : 'BLOCK_STATUS';
    const msg = message ? `: ${cleanMessage(message)}` : '';
    return new RnodeError(
      ErrorCodes.SOURCE_IO,
      `NBD server ${this.where} failed a ${what} of ${req.length} bytes at offset ${offset ?? req.offset} (${errnoName(errno)}${msg}); check the disk behind the export, then run again`,
      { details: { errno, offset: offset ?? req.offset } },
    );
  }
}

/** Buffers socket bytes for the handshake's exact-length reads, pausing the socket when the server runs ahead. */
class HandshakeReader implements HandshakeIo {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private want: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private ended: Error | undefined;
  private readonly onData = (d: Buffer) => {
    this.chunks.push(d);
    this.buffered += d.length;
    if (this.buffered > HANDSHAKE_HIGH_WATER) this.socket.pause();
    this.pump();
  };
  private readonly onEnd = (err?: Error) => {
    this.ended ??= err instanceof Error ? err : new Error('the server closed the connection during the handshake');
    this.pump();
  };
  private readonly onClose = () => this.onEnd();

  constructor(private readonly socket: net.Socket) {
    socket.on('data', this.onData);
    socket.on('error', this.onEnd);
    socket.on('close', this.onClose);
  }

  read(n: number): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      this.want = { n, resolve, reject };
      this.pump();
    });
  }

  write(data: Buffer): void {
    this.socket.write(data);
  }

  /** Stops listening and hands back whatever arrived beyond the handshake. */
  detach(): Buffer {
    this.socket.off('data', this.onData);
    this.socket.off('error', this.onEnd);
    this.socket.off('close', this.onClose);
    this.socket.resume();
    const rest = Buffer.concat(this.chunks);
    this.chunks = [];
    this.buffered = 0;
    return rest;
  }

  private pump(): void {
    const w = this.want;
    if (!w) return;
    if (this.buffered >= w.n) {
      this.want = undefined;
      const all = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks);
      const out = Buffer.from(all.subarray(0, w.n));
      const rest = all.subarray(w.n);
      this.chunks = rest.length ? [rest] : [];
      this.buffered = rest.length;
      if (this.buffered <= HANDSHAKE_HIGH_WATER) this.socket.resume();
      w.resolve(out);
      return;
    }
    if (this.ended) {
      this.want = undefined;
      w.reject(this.ended);
    }
  }
}

function connectError(err: unknown, target: NbdTarget, where: string): RnodeError {
  if (err instanceof RnodeError) return err;
  const code = (err as NodeJS.ErrnoException)?.code;
  if (code === 'ENOENT' && 'path' in target) {
    return new RnodeError(
      ErrorCodes.SOURCE_NOT_FOUND,
      `NBD socket ${target.path} does not exist; start the NBD server (qemu-nbd --socket=...) or fix socket= in the source URL`,
      { cause: err },
    );
  }
  if (code === 'ECONNREFUSED' || code === 'ENOTFOUND' || code === 'EACCES' || code === 'EHOSTUNREACH' || code === 'ETIMEDOUT') {
    return new RnodeError(
      ErrorCodes.SOURCE_IO,
      `cannot connect to NBD server ${where} (${code}); check that it is running and reachable, then run again`,
      { cause: err, retryable: code !== 'EACCES' },
    );
  }
  if (err instanceof NbdExportTooLarge) {
    return new RnodeError(
      ErrorCodes.BAD_SOURCE,
      `the NBD export at ${where} is ${err.size} bytes, larger than rnode can address (${Number.MAX_SAFE_INTEGER} bytes, 8 PiB); it cannot be replicated`,
      { cause: err, details: { size: String(err.size) } },
    );
  }
  if (err instanceof NbdProtocolError) {
    return new RnodeError(
      ErrorCodes.SOURCE_IO,
      `NBD server ${where} broke the protocol during the handshake (${err.message}); check the server, then run again`,
      { cause: err },
    );
  }
  return new RnodeError(
    ErrorCodes.SOURCE_IO,
    `the NBD handshake with ${where} failed: ${(err as Error)?.message ?? String(err)}; check the server, then run again`,
    { cause: err, retryable: true },
  );
}

/**
 * A chunk's fixed head (offset, or meta context id) may arrive split across payload pieces: copies what piece
 * has of it into c.head and returns the rest of piece once the head is whole, undefined while it is not.
 */
function fillHead(c: { head: Buffer; headFill: number }, piece: Buffer): Buffer | undefined {
  const n = Math.min(c.head.length - c.headFill, piece.length);
  piece.copy(c.head, c.headFill, 0, n);
  c.headFill += n;
  return c.headFill < c.head.length ? undefined : piece.subarray(n);
}
