// RemoteStore: the ObjectStore for ws:// and wss:// locations. Every call becomes a request on one shared
// WebSocket (multiplexed by stream id) to a receiving node (`rnode serve`). PUT frames are sent only within
// the byte credit the node granted and while the socket's bufferedAmount is under a high-water mark; acks
// arrive once the node's store has the object. A cut connection is re-opened (backoff with jitter, bounded)
// and only the requests not yet answered are sent again, so re-sent bytes never exceed one credit window.
import { createHash } from 'node:crypto';
import type { ClientRequest, IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import WebSocket from 'ws';
import { ErrorCodes, RnodeError, isRnodeError } from '../errors.js';
import type { ByteRange, LeaseAuthority, LeaseRecord, ObjectInfo, ObjectStore, PutOptions, StoreCapabilities } from '../store/types.js';
import { checkKey } from '../store/common.js';
import { claims, r2 } from '../repository/names.js';
import {
  MAX_TOKEN_CHARS,
  RNODE_PATH,
  parseDataMeta,
  parseNodeMessage,
  type ClientMessage,
  type NodeMessage,
  type ObjectInfoWire,
} from './control.js';
import { isPlainTextPeer, isTlsFailure, oneLineTlsError, TransportErrorCodes, transportError } from './errors.js';
import { speaksTls } from './tls-probe.js';
import { LinkProgress, SendPace } from './link-progress.js';
import {
  decodeFrame,
  encodeFrame,
  encodeFrameHead,
  FrameFlag,
  FrameType,
  FRAME_HEADER_BYTES,
  MAX_FRAME_BYTES,
  MAX_OBJECT_BYTES,
  PART_BYTES,
  type Frame,
} from './frame.js';

export interface RemoteStoreOptions {
  /** ws://host:port or wss://host:port (a path is ignored). */
  url: string;
  /** Bearer token (read from a file by the caller; never logged). */
  token?: string;
  /** PEM CA bundle that signs the node's certificate (wss). */
  ca?: string | Buffer;
  /** SHA-256 fingerprint of the node's certificate (hex, colons optional): trust exactly that certificate. */
  pinSha256?: string;
  /** Pause sending while the socket holds more than this many bytes (default 4 MiB). */
  highWaterMark?: number;
  /** One connection attempt may take this long (default 10 s). */
  connectTimeoutMs?: number;
  /** Before the first session: keep trying to connect this long (default 5 s). */
  initialBudgetMs?: number;
  /**
   * After a session was cut: keep trying to reconnect this long (default 60 s). One budget per outage: once it is
   * spent, later requests fail at once (or after a single attempt, see connectLoop) until a connection succeeds.
   */
  reconnectBudgetMs?: number;
  /** Backoff: full jitter over base * 2^attempt, capped (defaults 100 ms, 5 s). */
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  /** Ping this often; a connection silent for twice as long is dropped and re-opened (default 10 s). */
  heartbeatMs?: number;
  /** Name sent in the hello, for the node's log. */
  clientName?: string;
}

export interface RemoteCounters {
  /** Sessions opened; reconnects = connects - 1. */
  connects: number;
  /** Connection attempts, failed ones included. */
  connectAttempts: number;
  /** Connect (or reconnect) budgets spent without reaching the node: one per outage. */
  budgetsSpent: number;
  framesSent: number;
  bytesSent: number;
  /** PUT frames (and their bytes) sent again after a reconnect. */
  resentFrames: number;
  resentBytes: number;
  /** PUTs a resumed session's node said it had stored (acks lost with a cut connection): not sent again. */
  resumedPuts: number;
  /** Highest PUT bytes sent and not yet acknowledged (never above the window). */
  maxUnackedBytes: number;
  /** The credit window of the current (or last) session. */
  window: number;
}

interface Req {
  stream: number;
  /** The frame, or for a PUT its header and meta: the payload follows as a second fragment, not copied. */
  frame: Buffer;
  payload?: Buffer;
  /** An object sent in parts: every part's head and payload (a slice of the caller's buffer), in order. */
  parts?: Array<{ head: Buffer; payload: Buffer }>;
  /** The next part to send, while the parts go out one at a time (other requests may pass between them). */
  nextPart?: number;
  /** Bytes on the wire (frame + payload): what the credit counts. */
  size: number;
  isPut: boolean;
  /** A PUT's key: an ack replayed on a resume must name it. */
  key?: string;
  /** Connection generation it was last sent on (0: never sent). */
  sentOn: number;
  resolve: (f: Frame) => void;
  reject: (err: unknown) => void;
  /** Rebuilds the frame before it is sent again on a new connection (listings restart after the last key). */
  rebuild?: () => Buffer;
}

/**
 * Payload bytes per WebSocket fragment of a PUT. ws hands a fragment that lies within one socket read (64 KiB) to
 * the node as a view of it; one that spans reads it copies into a fresh buffer first. Sent whole, every byte of an
 * 8 MiB pack was copied into a freshly mapped 8 MiB buffer on the node: about a quarter of its CPU. In 16 KiB pieces
 * most of them are views, and the node copies each byte once, into the buffer it checks and writes from.
 */
const FRAGMENT_BYTES = 16 * 1024;
/** The smallest part of a PUT sent in parts (on a slow link), and the step of part sizes. */
const PART_MIN_BYTES = 256 * 1024;

/** Each connection's socket (TCP or TLS), as its upgrade handed it over: corked around a PUT's fragments. */
const socketOf = new WeakMap<WebSocket, Duplex>();

const FATAL_CONNECT = new Set<string>([TransportErrorCodes.AUTH, TransportErrorCodes.VERSION, TransportErrorCodes.TLS, TransportErrorCodes.PROTOCOL]);

export class RemoteStore implements ObjectStore {
  readonly location: string;
  readonly capabilities: StoreCapabilities = { conditionalPut: true };
  readonly counters: RemoteCounters = {
    connects: 0,
    connectAttempts: 0,
    budgetsSpent: 0,
    framesSent: 0,
    bytesSent: 0,
    resentFrames: 0,
    resentBytes: 0,
    resumedPuts: 0,
    maxUnackedBytes: 0,
    window: 0,
  };
  private readonly url: string;
  private readonly hwm: number;
  private readonly pin?: string;
  private ws?: WebSocket;
  private state: 'idle' | 'connecting' | 'ready' | 'closed' = 'idle';
  private gen = 0;
  private session?: string;
  private credit = 0;
  private unacked = 0;
  private sendSeq = 0;
  private recvSeq = 0;
  private nextStream = 1;
  /** PUTs waiting for credit and for the link. */
  private readonly queue: Req[] = [];
  /**
   * Every other request (lease renewals, heads, gets): small, they pass every PUT byte not yet handed to the socket,
   * so a renewal never waits behind packs (and a PUT's parts go one at a time to let them through).
   */
  private readonly controls: Req[] = [];
  /** The parted PUT whose parts are going out. */
  private streaming?: Req;
  private pace?: SendPace;
  private readonly sent = new Map<number, Req>();
  private pumping = false;
  private drainWaiters: Array<() => void> = [];
  private heartbeat?: NodeJS.Timeout;
  private lastHeard = 0;
  /**
   * When a request was last answered, or the oldest one still waiting was made: a link cut again and again before
   * any answer (a proxy that drops every connection after a few MB) reconnected at once every time, each session a
   * new outage with a budget of its own, and re-sent the same request forever (onDisconnect).
   */
  private answeredAt = 0;
  private everConnected = false;
  private maxFrame = MAX_FRAME_BYTES;
  private maxObject = MAX_OBJECT_BYTES;
  private nodeTakesParts = false;
  /** A connection-level refusal (auth, version) the node sent before closing: fails everything pending. */
  private fatal?: RnodeError;
  /**
   * Set when a connect budget was spent without reaching the node (cleared by the next session): the error it ended
   * with, and when the last attempt failed. Requests made after it get no budget of their own (see connectLoop).
   */
  private gaveUp?: { err: unknown; at: number };

  constructor(private readonly opts: RemoteStoreOptions) {
    let u: URL;
    try {
      u = new URL(opts.url);
    } catch {
      throw new RnodeError(ErrorCodes.BAD_STORE_URL, `store location ${JSON.stringify(opts.url)} is not a valid ws:// or wss:// URL`);
    }
    if (u.protocol !== 'ws:' && u.protocol !== 'wss:') {
      throw new RnodeError(ErrorCodes.BAD_STORE_URL, `store location ${JSON.stringify(opts.url)} must start with ws:// or wss://`);
    }
    if (u.username || u.password) {
      throw new RnodeError(ErrorCodes.BAD_STORE_URL, 'a ws:// store location must not carry credentials; pass the token with --token-file');
    }
    if (opts.token !== undefined && opts.token.length > MAX_TOKEN_CHARS) {
      throw new RnodeError(ErrorCodes.USAGE, `the bearer token is ${opts.token.length} characters long; a node takes at most ${MAX_TOKEN_CHARS}`);
    }
    if (!u.port) throw new RnodeError(ErrorCodes.BAD_STORE_URL, `store location ${opts.url} needs a port, e.g. ws://host:7070`);
    // A node serves the one store it was started with: a path or query would look like a choice that nothing makes.
    if ((u.pathname !== '' && u.pathname !== '/') || u.search || u.hash) {
      throw new RnodeError(
        ErrorCodes.BAD_STORE_URL,
        `store location ${u.protocol}//${u.host}${u.pathname} names a path, query or fragment; a node serves the one store given to rnode serve --store: use ${u.protocol}//${u.host}`,
      );
    }
    this.url = `${u.protocol}//${u.host}${RNODE_PATH}`;
    this.location = `${u.protocol}//${u.host}`;
    this.hwm = opts.highWaterMark ?? 4 * 1024 * 1024;
    this.pin = opts.pinSha256 ? normalizeFingerprint(opts.pinSha256) : undefined;
    if (this.pin && u.protocol !== 'wss:') throw new RnodeError(ErrorCodes.USAGE, 'a pinned certificate needs a wss:// location');
  }

  // ---- ObjectStore ----

  /** The largest object the node takes, from its last welcome (before the first one: the protocol's limit). */
  get maxPutBytes(): number {
    return this.maxObject;
  }

  /** The node owns the disks' leases: acquire, renew and release are lease messages, never PUTs of lease.json. */
  readonly leases: LeaseAuthority = {
    acquire: async (disk, holder, ttlMs, breakDead) =>
      this.leaseCall({ op: 'lease', action: 'acquire', disk, holder, ttlMs, ...(breakDead !== undefined ? { breakDead } : {}) }),
    renew: async (r, ttlMs) => this.leaseCall({ op: 'lease', action: 'renew', disk: r.disk, holder: r.holder, token: r.token, ttlMs }),
    release: async (r) => {
      await this.leaseCall({ op: 'lease', action: 'release', disk: r.disk, holder: r.holder, token: r.token });
    },
  };

  private async leaseCall(m: Extract<ClientMessage, { op: 'lease' }>): Promise<LeaseRecord> {
    const f = await this.control(m).catch((err: unknown) => {
      // A node from before lease messages closes the session on the first one as a protocol error.
      if (!isRnodeError(err, TransportErrorCodes.PROTOCOL) || !/unknown control message "lease"/.test(err.message)) throw err;
      throw transportError(
        TransportErrorCodes.VERSION,
        `the receiving node ${this.location} runs an older rnode that does not take lease messages: upgrade rnode on that node (nothing was stored)`,
        { cause: err, details: { remote: this.location } },
      );
    });
    const reply = this.nodeMessage(f);
    if (reply.op !== 'leaseGrant') throw this.unexpected('lease', f);
    return { format: 'rnode-lease', ...reply.lease };
  }

  async put(key: string, data: Uint8Array, opts: PutOptions = {}): Promise<ObjectInfo> {
    checkKey(key);
    const buf = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    const { flags, diskOffset, plainXxh64 } = frameLabels(opts);
    const stream = this.allocStream();
    // The payload is the caller's buffer, held (never copied) until the put resolves: the ObjectStore contract
    // lets callers reuse it only after that.
    const meta = { key, ...(opts.ifMatch !== undefined ? { ifMatch: opts.ifMatch } : {}) };
    let head: Buffer;
    let parts: Array<{ head: Buffer; payload: Buffer }> | undefined;
    const partBytes = this.partBytes();
    if (buf.length <= partBytes) {
      head = encodeFrameHead({ type: FrameType.PUT, stream, seq: 0, flags, diskOffset, plainXxh64, meta }, buf.length);
      if (head.length + buf.length > this.maxFrame) {
        throw new RnodeError(
          ErrorCodes.STORE_IO,
          `put ${key} in ${this.location}: object of ${buf.length} bytes exceeds the node's frame limit of ${this.maxFrame} bytes; raise "rnode serve --window" there`,
        );
      }
    } else {
      // Larger objects (packs) go in parts: no WebSocket message above the frame limit, the node assembles them.
      if (buf.length > this.maxObject) throw this.tooLarge(key, buf.length);
      parts = [];
      for (let at = 0; at < buf.length; at += partBytes) {
        const payload = buf.subarray(at, Math.min(buf.length, at + partBytes));
        parts.push({
          head: encodeFrameHead(
            { type: FrameType.PUT, stream, seq: 0, flags, diskOffset, plainXxh64, meta: { ...meta, total: buf.length, at } },
            payload.length,
          ),
          payload,
        });
      }
      head = parts[0].head;
    }
    let resent = false;
    try {
      const f = await this.request(
        head,
        true,
        stream,
        () => {
          resent = true;
        },
        undefined,
        parts ? undefined : buf,
        parts,
        key,
        opts.stop,
      );
      return infoOf(key, f);
    } catch (err) {
      // A conditional put whose first attempt landed before the cut comes back "already exists": it is ours
      // when the stored bytes are exactly these.
      if (resent && opts.ifNoneMatch && isRnodeError(err, ErrorCodes.STORE_PRECONDITION)) {
        const stored = await this.get(key).catch(() => undefined);
        if (stored && stored.equals(buf)) return this.head(key);
      }
      throw this.olderNode(key, err);
    }
  }

  /**
   * An r2/ or claims/ key the node does not know (its refusal says so, naming the key): a node from before repository
   * v2, or before disk claims. Both speak protocol version 1, so the refusal is all there is to tell by; its raw
   * sentence ("not an rnode object") sent operators looking for damage. This rnode builds those keys with names.ts
   * only, so a node that knows them never refuses one that way.
   */
  private olderNode(key: string, err: unknown): unknown {
    const what = key.startsWith(r2.prefix)
      ? 'repository v2 (the format this rnode writes)'
      : key.startsWith(claims.prefix)
        ? 'disk claims'
        : undefined;
    if (!what || !isRnodeError(err, TransportErrorCodes.REJECTED)) return err;
    if (err.details.key !== key || !/is not an rnode object/.test(err.message)) return err;
    return transportError(
      TransportErrorCodes.VERSION,
      `the receiving node ${this.location} runs an older rnode that predates ${what}: ` +
        `upgrade rnode on that node (it refused ${JSON.stringify(key)}; nothing was stored)`,
      { cause: err, details: { ...err.details, remote: this.location } },
    );
  }

  async get(key: string, range?: ByteRange): Promise<Buffer> {
    checkKey(key);
    const f = await this.control({
      op: 'get',
      key,
      ...(range ? { offset: range.offset, ...(range.length !== undefined ? { length: range.length } : {}) } : {}),
    });
    if (f.type !== FrameType.DATA) throw this.unexpected('get', f);
    const meta = parseDataMeta(f.meta);
    if (meta.size !== f.payload.length)
      throw transportError(TransportErrorCodes.PROTOCOL, `get ${key}: DATA frame says ${meta.size} bytes but carries ${f.payload.length}`);
    // The frame buffer is the whole WebSocket message: hand out exactly the object's bytes.
    return f.payload;
  }

  async head(key: string): Promise<ObjectInfo> {
    checkKey(key);
    return infoOf(key, await this.control({ op: 'head', key }));
  }

  async delete(key: string): Promise<void> {
    checkKey(key);
    await this.control({ op: 'delete', key });
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    let last: string | undefined;
    const stream = this.allocStream();
    let first = true;
    let done = false;
    try {
      for (;;) {
        const meta: ClientMessage = first ? { op: 'list', prefix, ...(last !== undefined ? { after: last } : {}) } : { op: 'listNext' };
        // A page lost with its connection is asked again as a fresh listing after the last key yielded.
        // Same stream id: the node dropped its listing together with the old connection.
        const rebuild = () => {
          return encodeFrame({
            type: FrameType.CONTROL,
            stream,
            seq: 0,
            meta: { op: 'list', prefix, ...(last !== undefined ? { after: last } : {}) },
          });
        };
        const f = await this.request(encodeFrame({ type: FrameType.CONTROL, stream, seq: 0, meta }), false, stream, undefined, rebuild);
        first = false;
        const m = this.nodeMessage(f);
        if (m.op !== 'listPage') throw this.unexpected('list', f);
        for (const it of m.items) {
          last = it.key;
          yield { key: it.key, size: it.size, ...(it.etag !== undefined ? { etag: it.etag } : {}) };
        }
        if (!m.more) {
          done = true;
          return;
        }
      }
    } finally {
      if (!done && this.state === 'ready' && this.ws) {
        // Fire and forget: the node closes the listing.
        this.sendNow(encodeFrame({ type: FrameType.CONTROL, stream, seq: 0, meta: { op: 'listCancel' } }));
      }
    }
  }

  async close(): Promise<void> {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.failAll(transportError(TransportErrorCodes.CLOSED, `the connection to ${this.location} was closed while requests were pending`));
    clearInterval(this.heartbeat);
    const ws = this.ws;
    this.ws = undefined;
    if (ws) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          ws.terminate();
          resolve();
        }, 1000);
        ws.once('close', () => {
          clearTimeout(t);
          resolve();
        });
        try {
          ws.close(1000);
        } catch {
          ws.terminate();
        }
      });
    }
  }

  // ---- requests ----

  private allocStream(): number {
    const s = this.nextStream;
    this.nextStream = this.nextStream >= 0xffff_fffe ? 1 : this.nextStream + 1;
    return s;
  }

  private control(m: ClientMessage): Promise<Frame> {
    const stream = this.allocStream();
    return this.request(encodeFrame({ type: FrameType.CONTROL, stream, seq: 0, meta: m as unknown as Record<string, unknown> }), false, stream);
  }

  private request(
    frame: Buffer,
    isPut: boolean,
    stream: number,
    onResend?: () => void,
    rebuild?: () => Buffer,
    payload?: Buffer,
    parts?: Array<{ head: Buffer; payload: Buffer }>,
    key?: string,
    stop?: AbortSignal,
  ): Promise<Frame> {
    if (this.state === 'closed') return Promise.reject(transportError(TransportErrorCodes.CLOSED, `the store ${this.location} is closed`));
    if (stop?.aborted) return Promise.reject(stoppedPut(key));
    let unlisten: (() => void) | undefined;
    const settled = new Promise<Frame>((resolve, reject) => {
      const size = parts ? parts.reduce((n, p) => n + p.head.length + p.payload.length, 0) : frame.length + (payload?.length ?? 0);
      const req: Req = {
        stream,
        frame,
        payload,
        parts,
        size,
        isPut,
        ...(key !== undefined ? { key } : {}),
        sentOn: 0,
        reject,
        resolve: (f) => {
          if (f.type === FrameType.CONTROL) {
            try {
              this.nodeMessage(f);
            } catch (err) {
              reject(err);
              return;
            }
          }
          resolve(f);
        },
        rebuild: () => {
          onResend?.();
          return rebuild ? rebuild() : Buffer.from(req.frame);
        },
      };
      if (this.queue.length === 0 && this.controls.length === 0 && this.sent.size === 0) this.answeredAt = Date.now();
      if (isPut) this.queue.push(req);
      else {
        this.controls.push(req);
        this.wake(); // a pump waiting for the link sends it now
      }
      if (stop) {
        // Still queued when the writer stops: dropped, not sent (one already going out completes).
        const drop = () => {
          const at = this.queue.indexOf(req);
          if (at < 0) return;
          this.queue.splice(at, 1);
          reject(stoppedPut(key));
        };
        stop.addEventListener('abort', drop, { once: true });
        unlisten = () => stop.removeEventListener('abort', drop);
      }
      if (this.state === 'idle') void this.connectLoop();
      else void this.pump();
    });
    return unlisten ? settled.finally(unlisten) : settled;
  }

  private tooLarge(key: string, bytes: number): RnodeError {
    return new RnodeError(
      ErrorCodes.STORE_IO,
      `put ${key} in ${this.location}: an object of ${bytes} bytes exceeds what the receiving node takes in one session (${Math.min(this.maxObject, this.counters.window || this.maxObject)} bytes); raise "rnode serve --window" there, or lower --pack-size, or --chunk-size when one chunk is that large (a pack holds at least one whole chunk)`,
      { details: { key, bytes, remote: this.location } },
    );
  }

  private nodeMessage(f: Frame): NodeMessage {
    const m = parseNodeMessage(f.meta);
    if (m.op === 'error') {
      throw new RnodeError(m.code, m.message, { retryable: m.retryable ?? false, details: { ...(m.details ?? {}), remote: this.location } });
    }
    return m;
  }

  private unexpected(op: string, f: Frame): RnodeError {
    return transportError(
      TransportErrorCodes.PROTOCOL,
      `${op}: the node answered with an unexpected frame (type ${f.type}); check that both nodes run the same rnode release`,
    );
  }

  /**
   * Sends queued requests: the small ones first, whenever they come; PUTs while credit allows and the link's queue is
   * under its pace (SendPace), a parted one a part at a time. A bandwidth limit paces the puts above: src/store/wrap.ts.
   */
  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.state === 'ready') {
        const control = this.controls.shift();
        if (control) {
          this.dispatch(control);
          continue;
        }
        const r = this.streaming ?? this.queue[0];
        if (!r) break;
        if (r !== this.streaming) {
          if (r.size > this.counters.window) {
            // It would wait for credit forever: this node's window cannot hold it.
            this.queue.shift();
            r.reject(this.tooLarge(String(parsePutMetaKey(r.frame)), r.size));
            continue;
          }
          if (this.credit < r.size) break; // an ack's credit grant calls pump again
        }
        if (this.pace?.full(this.counters.bytesSent)) {
          await this.drained();
          continue;
        }
        if (r === this.streaming) this.sendPart(r);
        else this.dispatch(this.queue.shift()!);
      }
    } finally {
      this.pumping = false;
    }
  }

  /** Sends a request (a PUT's first part only, when it goes in parts): it now waits for its answer. */
  private dispatch(r: Req): void {
    if (r.sentOn !== 0) {
      r.frame = r.rebuild ? r.rebuild() : r.frame;
      if (r.isPut) {
        this.counters.resentFrames++;
        this.counters.resentBytes += r.size;
      }
    }
    if (r.isPut) {
      this.credit -= r.size;
      this.unacked += r.size;
      if (this.unacked > this.counters.maxUnackedBytes) this.counters.maxUnackedBytes = this.unacked;
    }
    r.sentOn = this.gen;
    this.sent.set(r.stream, r);
    if (!r.parts) return this.sendNow(r.frame, r.payload);
    r.nextPart = 0;
    this.streaming = r;
    this.sendPart(r);
  }

  private sendPart(r: Req): void {
    const p = r.parts![r.nextPart!++];
    if (r.nextPart === r.parts!.length) this.streaming = undefined;
    this.sendNow(p.head, p.payload);
  }

  /** Until a write ends, a request comes, or a moment passes (the kernel's queue shrinks without an event). */
  private drained(): Promise<void> {
    return new Promise<void>((res) => {
      const t = setTimeout(() => this.wake(), 20);
      this.drainWaiters.push(() => {
        clearTimeout(t);
        res();
      });
    });
  }

  private wake(): void {
    for (const w of this.drainWaiters.splice(0)) w();
  }

  /** Bytes per part of a PUT sent in parts: what the link's pace lets wait (a node from before parts takes whole frames). */
  private partBytes(): number {
    if (!this.pace || !this.nodeTakesParts) return PART_BYTES;
    return Math.min(PART_BYTES, Math.max(PART_MIN_BYTES, this.pace.limit - (this.pace.limit % PART_MIN_BYTES)));
  }

  private sendNow(frame: Buffer, payload?: Buffer): void {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    frame.writeUInt32LE(this.sendSeq++ >>> 0, 12);
    this.counters.framesSent++;
    this.counters.bytesSent += frame.length + (payload?.length ?? 0);
    if (payload && payload.length > 0) {
      // Fragments of one WebSocket message, queued back to back (ws.send never interleaves them): the head, then
      // the payload in pieces the node's parser can hand out as views of its socket reads (see FRAGMENT_BYTES).
      // The socket is corked meanwhile, so node writes them in one go: uncorked, every fragment was a write call (and a
      // TCP segment) of its own, about 30,000 for a 1 GiB disk's 500 MiB.
      const socket = socketOf.get(ws);
      socket?.cork();
      try {
        ws.send(frame, { binary: true, fin: false });
        for (let at = 0; at < payload.length; at += FRAGMENT_BYTES) {
          const end = Math.min(payload.length, at + FRAGMENT_BYTES);
          if (end < payload.length) ws.send(payload.subarray(at, end), { binary: true, fin: false });
          else ws.send(payload.subarray(at, end), { binary: true, fin: true }, () => this.onWritten());
        }
      } finally {
        socket?.uncork();
      }
    } else {
      ws.send(frame, { binary: true }, () => this.onWritten());
    }
  }

  private onWritten(): void {
    this.wake();
  }

  // ---- connection ----

  private async connectLoop(): Promise<void> {
    if (this.state !== 'idle') return;
    this.state = 'connecting';
    const base = this.opts.backoffBaseMs ?? 100;
    const cap = this.opts.backoffMaxMs ?? 5_000;
    // One budget per outage. A run that fails on an unreachable node still makes requests (its checkpoint, its lease's
    // release), and each used to spend a whole budget of its own: 60 s became 2-3 minutes. After the budget is spent,
    // requests fail at once while the last attempt is recent (no sooner than the backoff would have tried again), then
    // after a single attempt: a store kept open (an agent's) reconnects to a node that is back.
    const spent = this.gaveUp;
    if (spent && Date.now() - spent.at < cap) {
      this.state = 'idle';
      this.failAll(spent.err);
      return;
    }
    const started = Date.now();
    const budget = spent ? 0 : this.everConnected ? (this.opts.reconnectBudgetMs ?? 60_000) : (this.opts.initialBudgetMs ?? 5_000);
    let lastErr: unknown;
    for (let attempt = 0; ; attempt++) {
      if (this.state !== 'connecting') return;
      try {
        this.counters.connectAttempts++;
        await this.connectOnce();
        return;
      } catch (err) {
        lastErr = err;
        if (isRnodeError(err) && FATAL_CONNECT.has(err.code)) break;
        if (spent) break;
        if (isRnodeError(err, TransportErrorCodes.BUSY) && Date.now() - started > budget) break;
      }
      const delay = Math.round(Math.random() * Math.min(cap, base * 2 ** attempt));
      if (Date.now() - started + delay > budget) break;
      await new Promise((r) => setTimeout(r, delay));
    }
    if (this.state !== 'connecting') return;
    this.state = 'idle';
    const err =
      isRnodeError(lastErr) && lastErr.code !== TransportErrorCodes.TIMEOUT && lastErr.code !== TransportErrorCodes.UNREACHABLE
        ? lastErr
        : transportError(
            TransportErrorCodes.UNREACHABLE,
            `cannot reach the receiving node at ${this.location} (${(lastErr as Error)?.message ?? 'no answer'}); check that "rnode serve" runs there and the address and port are right`,
            { cause: lastErr, details: { remote: this.location } },
          );
    // A refusal (auth, version, TLS) is answered at once: only an outage is remembered.
    if (!(isRnodeError(lastErr) && FATAL_CONNECT.has(lastErr.code))) {
      if (!spent) this.counters.budgetsSpent++;
      this.gaveUp = { err, at: Date.now() };
    }
    this.failAll(err);
  }

  /** Opens a socket, verifies TLS pinning, says hello and waits for the welcome. */
  private connectOnce(): Promise<void> {
    const pin = this.pin;
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      let probing = false;
      const ws = new WebSocket(this.url, {
        perMessageDeflate: false,
        maxPayload: MAX_FRAME_BYTES,
        handshakeTimeout: this.opts.connectTimeoutMs ?? 10_000,
        // Both ends are rnode and the link is ours (or TLS): an all-zero mask lets ws send our buffers as is.
        generateMask: (mask: Buffer) => {
          mask.fill(0);
        },
        ...(this.opts.ca ? { ca: this.opts.ca } : {}),
        // With a pin the chain is not what we trust: the exact certificate is, checked before the hello.
        ...(pin ? { rejectUnauthorized: false } : {}),
      });
      const fail = (err: unknown) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        ws.removeAllListeners();
        ws.on('error', () => undefined);
        ws.terminate();
        reject(err);
      };
      const timer = setTimeout(
        () =>
          fail(
            transportError(TransportErrorCodes.TIMEOUT, `the receiving node at ${this.location} did not complete the handshake in time`, {
              retryable: true,
            }),
          ),
        (this.opts.connectTimeoutMs ?? 10_000) + 1000,
      );
      // An HTTP answer instead of the upgrade: the node's per-address cap says why in its body (server.ts onConnection).
      ws.on('unexpected-response', (req: ClientRequest, res: IncomingMessage) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => {
          if (body.length < 4096) body += d;
        });
        const answer = () => {
          req.destroy();
          fail(refusedUpgrade(this.location, res.statusCode ?? 0, body));
        };
        res.once('end', answer);
        res.once('error', answer);
      });
      ws.on('upgrade', (res: IncomingMessage) => {
        socketOf.set(ws, res.socket);
        if (!pin) return;
        const cert = (res.socket as TLSSocket).getPeerCertificate?.();
        const got = cert?.fingerprint256 ? normalizeFingerprint(cert.fingerprint256) : '';
        if (got !== pin) {
          fail(
            transportError(
              TransportErrorCodes.TLS,
              `the certificate of ${this.location} has SHA-256 fingerprint ${got || '(none)'}, not the pinned one; check --pin-sha256 (nothing was sent)`,
            ),
          );
        }
      });
      ws.on('error', (err: Error & { code?: string }) => {
        if (isTlsFailure(err)) {
          fail(
            transportError(
              TransportErrorCodes.TLS,
              isPlainTextPeer(err)
                ? `TLS to ${this.location} failed: the node answers without TLS (${oneLineTlsError(err)}); use ws:// for a node started without --tls-cert, or check the port`
                : `TLS to ${this.location} failed: ${oneLineTlsError(err)}; pass --ca <file> with the CA that signed the node's certificate, or --pin-sha256 <fingerprint>`,
              { cause: err },
            ),
          );
        } else if (this.url.startsWith('ws:') && (err.code === 'ECONNRESET' || err.message === 'socket hang up')) {
          // Dropped before any answer: a node that speaks TLS drops a plain request so (tls-probe.ts).
          probing = true;
          void speaksTls(this.url).then((tls) =>
            fail(
              tls
                ? transportError(
                    TransportErrorCodes.TLS,
                    `the node at ${this.location} speaks TLS (it was started with --tls-cert): use wss://${this.location.slice('ws://'.length)}, with --ca <file> or --pin-sha256 <fingerprint> unless a public CA signed its certificate`,
                    { cause: err },
                  )
                : transportError(TransportErrorCodes.UNREACHABLE, `${err.message}`, { cause: err, retryable: true }),
            ),
          );
        } else {
          fail(transportError(TransportErrorCodes.UNREACHABLE, `${err.message}`, { cause: err, retryable: true }));
        }
      });
      ws.on('close', (code: number, reason: Buffer) => {
        if (probing) return;
        fail(
          transportError(TransportErrorCodes.UNREACHABLE, `the node closed the connection during the handshake (${code} ${reason.toString()})`, {
            retryable: true,
          }),
        );
      });
      ws.on('open', () => {
        this.recvSeq = 0;
        this.sendSeq = 0;
        const hello: ClientMessage = {
          op: 'hello',
          ...(this.opts.token !== undefined ? { token: this.opts.token } : {}),
          client: this.opts.clientName ?? `rnode-${process.pid}`,
          ...(this.session ? { resumeOf: this.session } : {}),
        };
        // A throw in this handler would be uncaught: the process would end with a stack trace.
        let frame: Buffer;
        try {
          frame = encodeFrame({ type: FrameType.CONTROL, stream: 0, seq: this.sendSeq++, meta: hello as unknown as Record<string, unknown> });
        } catch (err) {
          return fail(err);
        }
        ws.send(frame, { binary: true });
      });
      ws.on('message', (data: Buffer) => {
        if (settled) return;
        try {
          const f = decodeFrame(data);
          this.recvSeq++;
          const m = parseNodeMessage(f.meta);
          if (m.op === 'error') {
            fail(new RnodeError(m.code, m.message, { retryable: m.retryable ?? false, details: { remote: this.location } }));
            return;
          }
          if (m.op !== 'welcome') throw transportError(TransportErrorCodes.PROTOCOL, `expected a welcome from ${this.location}, got ${m.op}`);
          settled = true;
          clearTimeout(timer);
          ws.removeAllListeners();
          this.onSession(ws, m);
          resolve();
        } catch (err) {
          fail(err);
        }
      });
    });
  }

  private onSession(ws: WebSocket, w: Extract<NodeMessage, { op: 'welcome' }>): void {
    if (this.state === 'closed') {
      ws.on('error', () => undefined);
      ws.close(1000);
      return;
    } // closed while connecting
    this.ws = ws;
    this.gen++;
    this.session = w.session;
    this.credit = w.window;
    this.unacked = 0;
    this.maxFrame = Math.min(MAX_FRAME_BYTES, w.maxFrame);
    // A node without parted PUTs takes nothing above one frame.
    this.maxObject = Math.min(MAX_OBJECT_BYTES, w.maxObject ?? PART_BYTES);
    this.nodeTakesParts = w.maxObject !== undefined;
    this.pace = new SendPace(ws, socketOf.get(ws), this.hwm);
    this.counters.window = w.window;
    this.counters.connects++;
    this.everConnected = true;
    this.gaveUp = undefined; // a later outage gets a budget of its own
    this.state = 'ready';
    this.lastHeard = Date.now();
    ws.on('message', (data: Buffer) => this.onMessage(ws, data));
    ws.on('pong', () => {
      this.lastHeard = Date.now();
    });
    ws.on('error', () => undefined);
    ws.on('close', () => this.onDisconnect(ws));
    const beat = this.opts.heartbeatMs ?? 10_000;
    clearInterval(this.heartbeat);
    // A node that paces its reading, or a slow link, answers a ping only after the bytes queued before it: bytes
    // moving toward the node say it is there all the same (link-progress.ts).
    const progress = new LinkProgress(ws, socketOf.get(ws), this.counters.bytesSent);
    this.heartbeat = setInterval(() => {
      if (progress.moved(this.counters.bytesSent)) this.lastHeard = Date.now();
      if (Date.now() - this.lastHeard > 2 * beat) {
        ws.terminate();
        return;
      }
      try {
        ws.ping();
      } catch {
        /* closing */
      }
    }, beat);
    this.heartbeat.unref();
    if (w.stored) this.settleStored(w.stored);
    void this.pump();
  }

  /**
   * A resume: the PUTs the old session stored whose acks were lost with it are done, not sent again. Over a link cut
   * before a window's acks come back, re-sending them all would repeat on every connection and never finish.
   */
  private settleStored(stored: Array<{ stream: number } & ObjectInfoWire>): void {
    const byStream = new Map(stored.map((s) => [s.stream, s]));
    for (let i = 0; i < this.queue.length; i++) {
      const r = this.queue[i];
      const s = r.isPut && r.sentOn !== 0 ? byStream.get(r.stream) : undefined;
      if (!s || s.key !== r.key) continue; // not this request's ack (a reused stream id): send it again
      this.queue.splice(i--, 1);
      this.counters.resumedPuts++;
      const { stream, ...info } = s;
      r.resolve(decodeFrame(encodeFrame({ type: FrameType.CONTROL, stream, seq: 0, meta: { op: 'ack', info } })));
    }
  }

  private onMessage(ws: WebSocket, data: Buffer): void {
    if (ws !== this.ws) return;
    this.lastHeard = Date.now();
    let f: Frame;
    try {
      f = decodeFrame(data);
      if (f.seq !== this.recvSeq >>> 0)
        throw transportError(TransportErrorCodes.PROTOCOL, `node frame sequence ${f.seq}, expected ${this.recvSeq >>> 0}`);
      this.recvSeq++;
    } catch (err) {
      // A node that sends garbage is cut; the requests go again on a fresh connection.
      ws.terminate();
      return;
    }
    try {
      if (f.stream === 0) {
        const m = parseNodeMessage(f.meta);
        if (m.op === 'credit') {
          this.grant(m.bytes);
          return;
        }
        if (m.op === 'error') {
          const err = new RnodeError(m.code, m.message, {
            retryable: m.retryable ?? false,
            details: { ...(m.details ?? {}), remote: this.location },
          });
          if (FATAL_CONNECT.has(m.code)) {
            this.fatal = err;
          }
        }
        return;
      }
      const req = this.sent.get(f.stream);
      if (!req) return; // a reply for a request already answered (cancelled listing)
      if (f.type === FrameType.CONTROL) {
        const m = parseNodeMessage(f.meta);
        // Settle the books before the grant: grant() may send at once.
        if (req.isPut) this.unacked -= req.size;
        if ((m.op === 'ack' || m.op === 'error') && m.credit !== undefined) this.grant(m.credit);
      }
      this.sent.delete(f.stream);
      this.answeredAt = Date.now();
      req.resolve(f);
    } catch (err) {
      const req = this.sent.get(f.stream);
      if (req) {
        this.sent.delete(f.stream);
        req.reject(err);
      }
    }
  }

  private grant(bytes: number): void {
    this.credit += bytes;
    void this.pump();
  }

  private onDisconnect(ws: WebSocket): void {
    if (ws !== this.ws) return;
    this.ws = undefined;
    this.pace = undefined;
    this.streaming = undefined; // its parts go again from the first
    clearInterval(this.heartbeat);
    this.wake();
    if (this.state === 'closed') return;
    // Unanswered requests go first again, in the order they were sent.
    const again = [...this.sent.values()].sort((a, b) => a.stream - b.stream);
    this.sent.clear();
    this.queue.unshift(...again.filter((r) => r.isPut));
    this.controls.unshift(...again.filter((r) => !r.isPut));
    this.state = 'idle';
    const fatal = this.fatal;
    this.fatal = undefined;
    if (fatal) {
      this.failAll(fatal);
      return;
    }
    if (this.queue.length === 0 && this.controls.length === 0) return;
    const waited = Date.now() - this.answeredAt;
    if (waited > (this.opts.reconnectBudgetMs ?? 60_000)) {
      const err = transportError(
        TransportErrorCodes.UNREACHABLE,
        `the connection to the receiving node at ${this.location} was cut again and again before it answered a request (${this.counters.connects} sessions, none answered in the last ${Math.round(waited / 1000)} s); check the network path between the nodes (a proxy or firewall that cuts long transfers?) and the node's log`,
        { details: { remote: this.location } },
      );
      // As a spent budget: requests fail at once for a while, then a single attempt (connectLoop).
      this.gaveUp = { err, at: Date.now() };
      this.counters.budgetsSpent++;
      this.failAll(err);
      return;
    }
    void this.connectLoop();
  }

  private failAll(err: unknown): void {
    const reqs = [...this.sent.values(), ...this.controls, ...this.queue];
    this.sent.clear();
    this.controls.length = 0;
    this.queue.length = 0;
    this.streaming = undefined;
    for (const r of reqs) r.reject(err);
  }
}

/** A PUT dropped from the queue because its writer is stopping (PutOptions.stop). */
function stoppedPut(key: string | undefined): RnodeError {
  return new RnodeError(ErrorCodes.CANCELLED, `put ${key ?? ''} was not sent: the run is stopping`);
}

/**
 * A PUT frame's flags, disk offset and plaintext digest, from what the writer said of the object (PutOptions): the
 * bytes are never looked at. The chunk labels are what nodes of every release check against the chunk header.
 */
function frameLabels(opts: PutOptions): { flags: number; diskOffset: number | null; plainXxh64: bigint } {
  let flags = opts.ifNoneMatch ? FrameFlag.IF_NONE_MATCH : 0;
  const c = opts.chunk;
  if (!c) return { flags, diskOffset: null, plainXxh64: 0n };
  flags |= FrameFlag.CHUNK | (c.compressed ? FrameFlag.COMPRESSED : 0) | (c.encrypted ? FrameFlag.ENCRYPTED : 0);
  return { flags, diskOffset: c.diskOffset ?? null, plainXxh64: c.plainXxh64 };
}

/** The key in a PUT head we built ourselves (for an error message). */
function parsePutMetaKey(head: Buffer): string {
  try {
    return String(JSON.parse(head.toString('utf8', FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + head.readUInt32LE(24))).key);
  } catch {
    return '(object)';
  }
}

function infoOf(key: string, f: Frame): ObjectInfo {
  const m = parseNodeMessage(f.meta);
  const i: ObjectInfoWire | undefined = m.op === 'ack' ? m.info : undefined;
  if (!i) return { key, size: 0 };
  return { key: i.key, size: i.size, ...(i.etag !== undefined ? { etag: i.etag } : {}) };
}

/** "AB:CD:..." or "abcd..." (SHA-256, 64 hex digits) → lowercase hex without separators. */
export function normalizeFingerprint(fp: string): string {
  const hex = fp
    .replace(/^sha256[:/]+/i, '')
    .replace(/[:\s]/g, '')
    .toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(hex)) {
    throw new RnodeError(
      ErrorCodes.USAGE,
      `--pin-sha256 must be the certificate's SHA-256 fingerprint as 64 hex digits (colons allowed), e.g. from "openssl x509 -noout -fingerprint -sha256 -in cert.pem"`,
    );
  }
  return hex;
}

/** SHA-256 fingerprint of a PEM certificate in the same form (for tests and `rnode serve` output). */
export function certificateFingerprint(pem: string | Buffer): string {
  const b64 = pem
    .toString()
    .replace(/-----(BEGIN|END) CERTIFICATE-----/g, '')
    .replace(/\s+/g, '');
  return createHash('sha256').update(Buffer.from(b64, 'base64')).digest('hex');
}

/**
 * The error for an HTTP answer to the upgrade: the node at its per-address cap is busy (retried within the connect
 * budget, as at --max-sessions), anything else is no receiving node there.
 */
function refusedUpgrade(location: string, status: number, body: string): RnodeError {
  const line = body.split('\n')[0].trim().slice(0, 300);
  if (line.startsWith(`${TransportErrorCodes.BUSY}: `)) {
    return transportError(
      TransportErrorCodes.BUSY,
      `the node at ${location} refused the connection: ${line.slice(TransportErrorCodes.BUSY.length + 2)}; wait for those connections to end, or raise --max-connections-per-address where the node runs`,
      { retryable: true, details: { remote: location } },
    );
  }
  // Said inside connectLoop's "cannot reach the receiving node" line, which says what to check.
  return transportError(TransportErrorCodes.UNREACHABLE, `HTTP ${status} instead of the upgrade${line ? `: ${line}` : ''}`, {
    retryable: true,
    details: { remote: location },
  });
}
