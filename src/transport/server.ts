// The receiving node: accepts peer connections (ws or wss), authenticates them in the hello, and maps their
// requests onto its own ObjectStore after validating every object. Each session gets a byte-credit window:
// PUT frames received but not yet durable never exceed it, so memory stays bounded whatever the peer does.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { WebSocketServer, type WebSocket } from 'ws';
import { ErrorCodes, RnodeError, isRnodeError } from '../errors.js';
import { PRUNE_LEASE_PREFIX, validateDiskId } from '../repository/names.js';
import { copyBytes } from '../native/index.js';
import { clampLeaseTtl, StoreLeases } from '../repository/lease.js';
import { isStoreFull } from '../store/common.js';
import { assertValidKey, type LeaseRecord, type ObjectInfo, type ObjectStore, type PutOptions } from '../store/types.js';
import type { ClientMessage, NodeMessage, ObjectInfoWire } from './control.js';
import { parseClientMessage, parsePutMeta, RNODE_PATH, type PutMeta } from './control.js';
import { AssemblyBuffers } from './assembly-buffers.js';
import type { ObjectChecks, PutVerdict } from './object-checks.js';
import { TransportErrorCodes, protocolError } from './errors.js';
import {
  decodeFragments,
  encodeFrame,
  FrameFlag,
  FrameType,
  MAX_FRAME_BYTES,
  MAX_OBJECT_BYTES,
  MAX_PAYLOAD_BYTES,
  PART_BYTES,
  type Frame,
  type FrameInPieces,
} from './frame.js';
import { TokenBucket } from '../throttle.js';
import { MAX_TIMER_MS, timerDelay } from '../timer-delay.js';

/**
 * PUT bytes a session may hold unacknowledged unless serve is told otherwise: one 64 MiB pack with its trailer in
 * parts, or four 16 MiB packs. A node holds at most maxSessions × window of PUT bytes.
 */
export const DEFAULT_WINDOW_BYTES = 80 * 1024 * 1024;

export interface ServeOptions {
  store: ObjectStore;
  /** What an object must pass before the store gets it (src/serve's ObjectValidator for `rnode serve`). */
  checks: ObjectChecks;
  host?: string;
  /** 0: any free port (read it from server.port). */
  port?: number;
  /** Bearer token every hello must carry (compared in constant time). Undefined: no authentication. */
  token?: string;
  tls?: { cert: string | Buffer; key: string | Buffer };
  /** Authenticated connections at once (default 16). */
  maxSessions?: number;
  /** Byte credit per session: PUT bytes received and not yet acknowledged (default DEFAULT_WINDOW_BYTES). */
  windowBytes?: number;
  /** Requests a session may have outstanding (default 256). */
  maxInflight?: number;
  /** Store calls one session runs at once (default 16). */
  opConcurrency?: number;
  /** Node-wide limit on bytes received and sent per second (undefined: none). */
  bandwidth?: number;
  /**
   * A TCP connection must complete the HTTP upgrade and an accepted hello within this from accept, or it is closed
   * (default DEFAULT_HANDSHAKE_MS): idle sockets that never upgrade cannot pile up.
   */
  handshakeMs?: number;
  /** Open TCP connections one client address may hold; more are refused at accept (default DEFAULT_MAX_CONNECTIONS_PER_ADDRESS). */
  maxConnectionsPerAddress?: number;
  /** A connection that answers neither data nor pings for this long is dropped (default 60 s). */
  idleMs?: number;
  /** Events for the log; never carries the token. */
  log?: (event: string, fields?: Record<string, unknown>) => void;
}

export interface ServerStats {
  sessions: number;
  sessionsTotal: number;
  authFailures: number;
  puts: number;
  /** Of which legacy chunk objects, and v2 packs. */
  chunkPuts: number;
  packPuts: number;
  putBytes: number;
  rejected: number;
  gets: number;
  getBytes: number;
  protocolErrors: number;
  /** Highest PUT bytes held by one session at once (never above windowBytes). */
  peakSessionBytes: number;
  /** TCP connections closed for not completing upgrade + hello within handshakeMs. */
  handshakeTimeouts: number;
  /** TCP connections refused at accept: their address already held maxConnectionsPerAddress. */
  refusedPerAddress: number;
  /** TCP connections accepted (past the per-address cap), and of those open now. */
  connectionsAccepted: number;
  connectionsOpen: number;
  /** Hellos refused because the node already served maxSessions. */
  busyRefusals: number;
  /** Whole PUT objects received (whatever became of them) and their bytes. */
  receivedObjects: number;
  receivedBytes: number;
  /** PUTs that failed for another reason than validation (the store refused or failed). */
  putFailures: number;
  /** Refused and failed PUTs by error code and object kind ('unknown' for a key that names no rnode object). */
  putErrors: Map<string, { code: string; kind: string; count: number }>;
}

export const DEFAULT_HANDSHAKE_MS = 10_000;
export const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 32;

const WRITE_HIGH_WATER = 4 * 1024 * 1024;
/** PUT payloads from this size on are received into the assembly buffers; smaller ones into a buffer of their own. */
const ASSEMBLE_FROM_BYTES = 64 * 1024;
const LIST_PAGE_ITEMS = 1000;
const MAX_OPEN_LISTS = 16;
/** How long a closed session's stored PUTs can be claimed by the client resuming it, and how many sessions are kept. */
const RESUME_KEEP_MS = 5 * 60_000;
const MAX_RETIRED = 256;
/** A resume waits this long at most for the old session's PUTs still being stored, before its welcome. */
const RESUME_SETTLE_MS = 5_000;

export class ReplicationServer {
  readonly stats: ServerStats = {
    sessions: 0,
    sessionsTotal: 0,
    authFailures: 0,
    puts: 0,
    chunkPuts: 0,
    packPuts: 0,
    putBytes: 0,
    rejected: 0,
    gets: 0,
    getBytes: 0,
    protocolErrors: 0,
    peakSessionBytes: 0,
    handshakeTimeouts: 0,
    refusedPerAddress: 0,
    connectionsAccepted: 0,
    connectionsOpen: 0,
    busyRefusals: 0,
    receivedObjects: 0,
    receivedBytes: 0,
    putFailures: 0,
    putErrors: new Map(),
  };
  /** Open TCP connections by client address. */
  private readonly perAddress = new Map<string, number>();
  /** Connections still to complete upgrade + hello, with the timer that closes them. */
  private readonly handshaking = new Map<Socket, NodeJS.Timeout>();
  readonly checks: ObjectChecks;
  /** This node writes its disks' lease records itself; peers only ask (lease messages). */
  readonly leases: StoreLeases;
  readonly windowBytes: number;
  readonly maxFrameBytes: number;
  /** The largest object a session can send: what its window holds in parts, at most MAX_OBJECT_BYTES. */
  readonly maxObjectBytes: number;
  readonly bucket?: TokenBucket;
  /** Where parted objects are assembled; keeps up to one window's worth (at most 64 MiB) for reuse. */
  readonly assembly: AssemblyBuffers;
  private readonly tokenDigest?: Buffer;
  private readonly sessions = new Set<Session>();
  /** Sessions that closed recently, by id: what they stored, for a client that resumes them (see Session.resume). */
  private readonly retired = new Map<string, { session: Session; timer: NodeJS.Timeout }>();
  private http!: http.Server | https.Server;
  private wss!: WebSocketServer;
  private readonly nodeName = `rnode-${randomBytes(4).toString('hex')}`;

  private constructor(readonly opts: ServeOptions) {
    this.checks = opts.checks;
    this.leases = new StoreLeases(opts.store);
    this.windowBytes = opts.windowBytes ?? DEFAULT_WINDOW_BYTES;
    if (this.windowBytes < 64 * 1024) throw new RangeError('windowBytes must be at least 64 KiB');
    this.maxFrameBytes = Math.min(MAX_FRAME_BYTES, this.windowBytes);
    // Each part's frame head (≤ 40 bytes + its meta) is charged too: leave room for them.
    this.maxObjectBytes = Math.max(0, Math.min(MAX_OBJECT_BYTES, this.windowBytes - partOverhead(this.windowBytes)));
    this.assembly = new AssemblyBuffers(Math.min(this.windowBytes, 64 * 1024 * 1024));
    if (opts.bandwidth) this.bucket = new TokenBucket(opts.bandwidth);
    if (opts.token !== undefined) this.tokenDigest = createHash('sha256').update(opts.token).digest();
  }

  static async start(opts: ServeOptions): Promise<ReplicationServer> {
    const s = new ReplicationServer(opts);
    await s.listen();
    return s;
  }

  get port(): number {
    return (this.http.address() as AddressInfo).port;
  }
  get url(): string {
    const host = this.opts.host ?? '127.0.0.1';
    return `${this.opts.tls ? 'wss' : 'ws'}://${host.includes(':') ? `[${host}]` : host}:${this.port}`;
  }

  log(event: string, fields?: Record<string, unknown>): void {
    try {
      this.opts.log?.(event, fields);
    } catch {
      /* a logger never takes the node down */
    }
  }

  /** Sessions that took or renewed a disk's lease, open or with requests still running (see fenceOthers). */
  readonly leaseTakers = new Set<Session>();

  /**
   * A disk's lease was just taken by `holder` through `by`: every other session that held it under another holder
   * is fenced. A writer that died (or lost its link for good) can have PUTs still queued or in the store, behind
   * slower ones; stored after the next writer rewrote the same table segment and committed its point, one replaced
   * that segment, and the point's table no longer matched its manifest. A client resuming its own session keeps its
   * lease (it renews), so what its old session still stores is not fenced.
   */
  fenceOthers(by: Session, disk: string, holder: string): void {
    for (const s of this.leaseTakers) if (s !== by) s.fenceIfHeld(disk, holder);
  }

  /** A closed session stays findable for RESUME_KEEP_MS (at most MAX_RETIRED of them), then only its log remains. */
  retire(s: Session): void {
    if (this.retired.size >= MAX_RETIRED) this.dropRetired(this.retired.keys().next().value!);
    const timer = setTimeout(() => this.dropRetired(s.id), RESUME_KEEP_MS);
    timer.unref();
    this.retired.set(s.id, { session: s, timer });
  }

  private dropRetired(id: string): void {
    const r = this.retired.get(id);
    if (!r) return;
    clearTimeout(r.timer);
    this.retired.delete(id);
  }

  /**
   * The session a client resumes, taken once: a retired one, or one still open (the client saw the connection die
   * before this node did: the old session is cut now).
   */
  takeSession(id: string, by: Session): Session | undefined {
    let found: Session | undefined;
    for (const s of this.sessions) {
      if (s.id === id && s !== by && s.ready && !s.claimed) {
        found = s;
        s.terminate();
        break;
      }
    }
    const r = this.retired.get(id);
    if (r) {
      this.dropRetired(id);
      found = r.session;
    }
    if (found) found.claimed = true;
    return found;
  }

  private async listen(): Promise<void> {
    this.http = this.opts.tls ? https.createServer({ cert: this.opts.tls.cert, key: this.opts.tls.key }) : http.createServer();
    this.http.on('request', (_req, res) => {
      res.writeHead(426, { 'content-type': 'text/plain' });
      res.end('rnode peer endpoint: use a WebSocket client (rnode replicate --target ws://...)\n');
    });
    this.http.on('tlsClientError', (err) => this.log('tls-error', { message: err.message }));
    this.http.on('connection', (sock: Socket) => this.onConnection(sock));
    // Upgrades only at /rnode, where RemoteStore connects, and at / (the printed URL): another path is answered
    // 404, not given a session.
    this.wss = new WebSocketServer({
      server: this.http,
      maxPayload: this.maxFrameBytes,
      perMessageDeflate: false,
      verifyClient: (info, done) => {
        const p = (info.req.url ?? '/').replace(/\?.*$/, '');
        if (p === RNODE_PATH || p === '/') done(true);
        else done(false, 404, 'Not Found');
      },
    });
    this.wss.on('connection', (ws, req) => {
      try {
        const s = new Session(this, ws, `${req.socket.remoteAddress}:${req.socket.remotePort}`, req.socket);
        this.sessions.add(s);
        ws.on('close', () => {
          this.sessions.delete(s);
        });
      } catch (err) {
        this.log('internal-error', { message: (err as Error).message });
        ws.terminate();
      }
    });
    this.wss.on('error', (err) => this.log('server-error', { message: err.message }));
    await new Promise<void>((resolve, reject) => {
      this.http.once('error', reject);
      this.http.listen(this.opts.port ?? 0, this.opts.host ?? '127.0.0.1', () => {
        this.http.off('error', reject);
        resolve();
      });
    });
  }

  /** Accept: per-address cap, then the handshake deadline (cleared by handshakeDone once a hello is accepted). */
  private onConnection(sock: Socket): void {
    const addr = sock.remoteAddress ?? '?';
    const max = this.opts.maxConnectionsPerAddress ?? DEFAULT_MAX_CONNECTIONS_PER_ADDRESS;
    const n = this.perAddress.get(addr) ?? 0;
    if (n >= max) {
      this.stats.refusedPerAddress++;
      this.log('refused', { peer: addr, reason: 'max-connections-per-address', max });
      // Plain HTTP can say why; a TLS client gets a reset (nothing readable can be sent before the handshake).
      if (this.opts.tls) sock.destroy();
      else {
        sock.end(
          'HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain\r\n\r\n' +
            `RNODE_TRANSPORT_BUSY: ${max} connections from ${addr} already open (--max-connections-per-address)\n`,
        );
        setTimeout(() => sock.destroy(), 1000).unref();
      }
      return;
    }
    this.perAddress.set(addr, n + 1);
    this.stats.connectionsAccepted++;
    this.stats.connectionsOpen++;
    const timer = setTimeout(() => {
      if (!this.handshaking.delete(sock)) return;
      this.stats.handshakeTimeouts++;
      this.log('handshake-timeout', { peer: addr });
      // A session in its hello phase tells the peer why (Session's own timer); a socket that never upgraded is cut.
      sock.destroy();
    }, this.handshakeMs + 500); // after the session's own timeout, which tells a WebSocket peer why
    timer.unref();
    this.handshaking.set(sock, timer);
    sock.once('close', () => {
      this.stats.connectionsOpen--;
      clearTimeout(this.handshaking.get(sock));
      this.handshaking.delete(sock);
      const left = (this.perAddress.get(addr) ?? 1) - 1;
      if (left <= 0) this.perAddress.delete(addr);
      else this.perAddress.set(addr, left);
    });
  }

  get handshakeMs(): number {
    // Less than the longest timer by the 500 ms the socket's own deadline adds (src/timer-delay.ts).
    return Math.min(timerDelay(this.opts.handshakeMs ?? DEFAULT_HANDSHAKE_MS), MAX_TIMER_MS - 500);
  }

  /**
   * A hello was accepted on sock: it is a session now, watched by its idle timer. Under TLS the session's socket is
   * the TLSSocket over the TCP one the deadline was set on (its _parent): looked up by the TLSSocket, the deadline was
   * never cleared, and every wss:// session was cut as a handshake timeout 10.5 s after it began.
   */
  handshakeDone(sock: Socket): void {
    const tcp = this.handshaking.has(sock) ? sock : (sock as Socket & { _parent?: Socket })._parent;
    if (!tcp) return;
    clearTimeout(this.handshaking.get(tcp));
    this.handshaking.delete(tcp);
  }

  authenticated(): number {
    let n = 0;
    for (const s of this.sessions) if (s.ready) n++;
    return n;
  }

  checkToken(token: string | undefined): boolean {
    if (!this.tokenDigest) return true;
    // Hash both sides so the comparison is constant-time whatever the lengths.
    const got = createHash('sha256')
      .update(token ?? '')
      .digest();
    return token !== undefined && timingSafeEqual(got, this.tokenDigest);
  }

  get name(): string {
    return this.nodeName;
  }

  /** True while the listener accepts connections. */
  get listening(): boolean {
    return this.http?.listening ?? false;
  }

  /** PUT bytes held by all sessions now, not yet acknowledged: how much of their windows is in use. */
  heldBytes(): number {
    let n = 0;
    for (const s of this.sessions) n += s.heldBytes;
    return n;
  }

  /** Counts a refused or failed PUT under its code and object kind. */
  countPutError(code: string, kind: string): void {
    const k = `${code} ${kind}`;
    const e = this.stats.putErrors.get(k);
    if (e) e.count++;
    else this.stats.putErrors.set(k, { code, kind, count: 1 });
  }

  /** Stops accepting, drops every connection (in-flight puts still finish in the store). */
  async close(): Promise<void> {
    for (const s of this.sessions) s.terminate();
    await new Promise<void>((r) => this.wss.close(() => r()));
    this.http.closeAllConnections?.();
    await new Promise<void>((r) => this.http.close(() => r()));
  }
}

interface Assembly {
  meta: PutMeta;
  flags: number;
  diskOffset: number | null;
  plainXxh64: bigint;
  buf: Buffer;
  filled: number;
  /** Credit this object holds: every part's frame, with the payload still to come reserved at the first. */
  charged: number;
}

class Session {
  ready = false;
  private closed = false;
  private recvSeq = 0;
  private sendSeq = 0;
  private held = 0;
  get heldBytes(): number {
    return this.held;
  }
  private readonly streams = new Set<number>();
  /** Objects arriving in parts, by stream: charged to the window in full from their first part. */
  private readonly assembling = new Map<number, Assembly>();
  private readonly lists = new Map<number, { it: AsyncIterator<{ key: string; size: number; etag?: string }>; busy: boolean }>();
  private readonly waiters: Array<() => void> = [];
  private running = 0;
  private readonly queue: Array<() => Promise<void>> = [];
  private alive = true;
  private readonly timers: NodeJS.Timeout[] = [];
  readonly id = randomBytes(6).toString('hex');
  /** Resumed by a later session: not kept for another one. */
  claimed = false;
  /** The last PUTs stored, by stream (at most the in-flight limit): a resuming client may not have heard their acks. */
  private readonly storedAcks = new Map<number, ObjectInfoWire>();
  /** PUTs received and not yet answered, with who waits for them to settle (a resume). */
  private putsOpen = 0;
  /** The holder each disk's lease was taken or renewed under through this session. */
  private readonly leased = new Map<string, string>();
  /** Aborted once another writer took a lease this session held: what it still sends or stores is refused. */
  private readonly fence = new AbortController();
  private readonly settleWaiters: Array<() => void> = [];
  /** Control bytes parsed and not yet deducted from what the socket read: they pass the node's throttle free. */
  private exemptBytes = 0;
  private resumeTimer?: NodeJS.Timeout;

  constructor(
    private readonly node: ReplicationServer,
    private readonly ws: WebSocket,
    private readonly peer: string,
    private readonly socket: Socket,
  ) {
    const o = node.opts;
    this.timers.push(
      setTimeout(() => {
        if (!this.ready && !this.closed)
          this.fail(new RnodeError(TransportErrorCodes.TIMEOUT, 'no hello within the handshake timeout; the connection was closed'), 1008);
      }, node.handshakeMs),
    );
    const idle = o.idleMs ?? 60_000;
    const beat = setInterval(
      () => {
        if (!this.alive) {
          this.node.log('session-stalled', { session: this.id, peer });
          this.terminate();
          return;
        }
        this.alive = false;
        try {
          ws.ping();
        } catch {
          /* closing */
        }
      },
      Math.max(50, idle / 2),
    );
    this.timers.push(beat);
    ws.on('pong', () => {
      this.alive = true;
    });
    // A message's fragments as received (views of the socket's reads): a PUT's payload is copied once, into the
    // buffer it is checked and written from, not first joined into one buffer by ws (two copies of every byte).
    ws.binaryType = 'fragments';
    ws.on('message', (data, isBinary) => this.onMessage(data as Buffer[] | Buffer, isBinary));
    // Registered after ws's own reader, so a chunk's complete messages are parsed before it is metered.
    const bucket = node.bucket;
    if (bucket) socket.on('data', (chunk: Buffer) => this.meter(bucket, chunk.length));
    ws.on('error', (err) => this.node.log('session-error', { session: this.id, message: err.message }));
    ws.on('close', (code: number) => this.onClose(code));
    node.log('connection', { session: this.id, peer });
  }

  /**
   * serve --bandwidth on what peers send: the bytes read from the socket are booked on the node's bucket as they
   * arrive, and reading pauses until they are paid, so TCP holds the sender to the rate byte by byte (charged a whole
   * pack at a time, acks let a pack through at full speed: 1.15x of the setting). Control frames are refunded
   * (exemptBytes): lease renewals and listings do not spend the data's budget.
   */
  private meter(bucket: TokenBucket, bytes: number): void {
    // Bytes arriving are a live peer, even while this node holds its reading back for the rate.
    this.alive = true;
    const free = Math.min(bytes, this.exemptBytes);
    this.exemptBytes -= free;
    if (bytes === free || this.closed) return;
    const wait = bucket.reserve(bytes - free);
    if (wait <= 1) return;
    if (!this.ws.isPaused) this.ws.pause();
    clearTimeout(this.resumeTimer);
    this.resumeTimer = setTimeout(() => {
      if (!this.closed) this.ws.resume();
    }, wait);
  }

  terminate(): void {
    this.closed = true;
    try {
      this.ws.terminate();
    } catch {
      /* already gone */
    }
  }

  private onClose(code: number): void {
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
    clearTimeout(this.resumeTimer);
    for (const { it } of this.lists.values()) it.return?.().catch(() => undefined);
    this.lists.clear();
    this.assembling.clear();
    for (const w of this.waiters.splice(0)) w();
    if (this.ready) {
      this.node.stats.sessions--;
      this.node.log('session-closed', { session: this.id, peer: this.peer });
      // A client that closed its session (1000) will not resume it: only a session lost with its link is kept.
      if (!this.claimed && code !== 1000) this.node.retire(this);
    }
    this.forgetIfDone();
  }

  private onMessage(data: Buffer[] | Buffer, isBinary: boolean): void {
    this.alive = true;
    if (this.closed) return;
    try {
      if (!isBinary) throw protocolError('text message (frames are binary)');
      const r = decodeFragments(Array.isArray(data) ? data : [data], this.node.maxFrameBytes);
      const f = r.frame;
      if (f.type === FrameType.CONTROL && this.node.bucket) this.exemptBytes += r.size;
      if (f.seq !== this.recvSeq >>> 0)
        throw protocolError(`frame sequence ${f.seq}, expected ${this.recvSeq >>> 0} (a frame was lost or reordered)`);
      this.recvSeq++;
      if (!this.ready) this.onHello(f);
      else this.onFrame(r);
    } catch (err) {
      this.node.stats.protocolErrors++;
      // Answered in this node's own version (also for an unknown version), so the peer can read why.
      this.fail(err, 1002);
    }
  }

  private onHello(f: Omit<Frame, 'payload'>): void {
    if (f.type !== FrameType.CONTROL) throw protocolError('the first frame must be a hello');
    const m = parseClientMessage(f.meta);
    if (m.op !== 'hello') throw protocolError(`the first message must be a hello, not ${m.op}`);
    if (!this.node.checkToken(m.token)) {
      this.node.stats.authFailures++;
      this.node.log('auth-failed', { session: this.id, peer: this.peer, tokenGiven: m.token !== undefined });
      this.fail(
        new RnodeError(
          TransportErrorCodes.AUTH,
          m.token === undefined
            ? 'the receiving node requires a bearer token; pass --token-file with the token the node was started with'
            : "the receiving node refused the bearer token; check that --token-file holds the same token as the node's --token-file",
        ),
        1008,
      );
      return;
    }
    const max = this.node.opts.maxSessions ?? 16;
    if (this.node.authenticated() >= max) {
      this.node.stats.busyRefusals++;
      this.node.log('busy', { session: this.id, peer: this.peer, maxSessions: max });
      this.fail(
        new RnodeError(
          TransportErrorCodes.BUSY,
          `the receiving node already serves ${max} sessions (--max-sessions); retry later or raise the limit`,
          { retryable: true },
        ),
        1013,
      );
      return;
    }
    this.ready = true;
    clearTimeout(this.timers[0]);
    this.node.handshakeDone(this.socket);
    this.node.stats.sessions++;
    this.node.stats.sessionsTotal++;
    this.node.log('session', { session: this.id, peer: this.peer, client: m.client, resumeOf: m.resumeOf });
    const old = m.resumeOf !== undefined ? this.node.takeSession(m.resumeOf, this) : undefined;
    void (old ? old.settled(RESUME_SETTLE_MS) : Promise.resolve()).then(() => {
      // What the old session stored: its client re-sends only what is not in here (the acks it did not hear).
      const stored = old ? [...old.storedAcks].map(([stream, info]) => ({ stream, ...info })) : [];
      this.send(0, {
        op: 'welcome',
        session: this.id,
        window: this.node.windowBytes,
        maxFrame: this.node.maxFrameBytes,
        maxInflight: this.node.opts.maxInflight ?? 256,
        node: this.node.name,
        maxObject: this.node.maxObjectBytes,
        ...(stored.length ? { stored } : {}),
      });
    });
  }

  fenceIfHeld(disk: string, holder: string): void {
    const mine = this.leased.get(disk);
    if (mine === undefined || mine === holder || this.fence.signal.aborted) return;
    this.node.log('session-fenced', { session: this.id, disk, putsOpen: this.putsOpen });
    this.fence.abort(
      new RnodeError(
        ErrorCodes.LEASE_LOST,
        `the lease of disk ${disk} was taken by another writer: what this session still sends or had not stored is refused`,
      ),
    );
  }

  /** Leaves the node's lease takers once closed with nothing left running. */
  private forgetIfDone(): void {
    if (this.closed && this.putsOpen === 0) this.node.leaseTakers.delete(this);
  }

  /** Resolves once every PUT this session received is answered (stored or refused), or after ms. */
  settled(ms: number): Promise<void> {
    if (this.putsOpen === 0) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.settleWaiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  /** Runs a PUT's store, counted until it settles (a resuming client waits for it). */
  private schedulePut(fn: () => Promise<void>): void {
    this.putsOpen++;
    this.schedule(() =>
      fn().finally(() => {
        if (--this.putsOpen === 0) {
          for (const w of this.settleWaiters.splice(0)) w();
          this.forgetIfDone();
        }
      }),
    );
  }

  private onFrame(r: FrameInPieces): void {
    const { frame: f, size } = r;
    if (f.type === FrameType.DATA) throw protocolError('DATA frames flow from the node only');
    if (f.stream === 0) throw protocolError('requests need a stream id other than 0');
    if (f.type === FrameType.CONTROL) {
      const m = parseClientMessage(f.meta);
      if (m.op === 'hello') throw protocolError('hello after the session started');
      if (m.op === 'listNext' || m.op === 'listCancel') return this.onListMore(f.stream, m.op);
      this.open(f.stream);
      this.schedule(() => this.onRequest(f.stream, m));
      return;
    }
    // PUT: the bytes count against the window until the store has them.
    const meta = parsePutMeta(f.meta);
    const asm = this.assembling.get(f.stream);
    if (asm) return this.onPart(r, meta, asm);
    if (meta.total !== undefined && meta.total !== r.payloadLength) return this.onFirstPart(r, meta);
    this.charge(size);
    this.open(f.stream);
    const data = this.receive(r.payload, r.payloadLength);
    this.schedulePut(() => this.store(f.stream, meta, data, f, size).finally(() => this.node.assembly.give(data)));
  }

  /**
   * A whole object's payload in a buffer of its own: a large one in an assembly buffer (page-aligned shared memory,
   * reused), a small one in a fresh copy (so it pins none of the socket's read buffers while it waits for the store).
   */
  private receive(pieces: Buffer[], bytes: number): Buffer {
    if (bytes < ASSEMBLE_FROM_BYTES) return Buffer.concat(pieces, bytes);
    const buf = this.node.assembly.take(bytes);
    gather(pieces, buf, 0);
    return buf;
  }

  /**
   * The first part of an object sent in parts: the whole object is charged to the credit now (this part's frame
   * plus the payload still to come), so the assembly buffer never holds bytes the window did not grant.
   */
  private onFirstPart(r: FrameInPieces, meta: PutMeta): void {
    const { frame: f, size, payloadLength } = r;
    const total = meta.total!;
    if (meta.at !== 0) throw protocolError(`the first part of ${meta.key} starts at ${meta.at}, not 0`);
    if (total > MAX_OBJECT_BYTES) throw protocolError(`an object of ${total} bytes exceeds the largest this node takes (${MAX_OBJECT_BYTES})`);
    if (payloadLength === 0 || payloadLength > total) throw protocolError(`a part of ${payloadLength} bytes of an object of ${total} bytes`);
    this.charge(size + (total - payloadLength));
    this.open(f.stream);
    const buf = this.node.assembly.take(total);
    gather(r.payload, buf, 0);
    this.assembling.set(f.stream, {
      meta,
      flags: f.flags,
      diskOffset: f.diskOffset,
      plainXxh64: f.plainXxh64,
      buf,
      filled: payloadLength,
      charged: size + (total - payloadLength),
    });
  }

  /** A later part: it must continue exactly where the object stands; only its header and meta are new credit. */
  private onPart(r: FrameInPieces, meta: PutMeta, asm: Assembly): void {
    const { frame: f, size, payloadLength } = r;
    if (meta.key !== asm.meta.key || meta.total !== asm.meta.total || meta.ifMatch !== asm.meta.ifMatch || f.flags !== asm.flags) {
      throw protocolError(`stream ${f.stream}: a part that does not belong to the object ${asm.meta.key} being sent on it`);
    }
    if (meta.at !== asm.filled) throw protocolError(`stream ${f.stream}: a part at ${meta.at}, expected ${asm.filled}`);
    if (payloadLength === 0 || asm.filled + payloadLength > asm.buf.length)
      throw protocolError(`stream ${f.stream}: a part that overruns its object`);
    const extra = size - payloadLength;
    this.charge(extra);
    asm.charged += extra;
    gather(r.payload, asm.buf, asm.filled);
    asm.filled += payloadLength;
    if (asm.filled < asm.buf.length) return;
    this.assembling.delete(f.stream);
    this.schedulePut(() => this.store(f.stream, asm.meta, asm.buf, asm, asm.charged).finally(() => this.node.assembly.give(asm.buf)));
  }

  /** Counts PUT bytes against the window; a peer that sends beyond its credit broke the protocol. */
  private charge(bytes: number): void {
    if (this.held + bytes > this.node.windowBytes) {
      throw protocolError(`PUT of ${bytes} bytes exceeds the credit granted (${this.node.windowBytes - this.held} bytes left)`);
    }
    this.held += bytes;
    this.node.stats.peakSessionBytes = Math.max(this.node.stats.peakSessionBytes, this.held);
  }

  /** Validates and stores one whole object, then returns its credit with the ack (or the error). */
  private async store(
    stream: number,
    meta: PutMeta,
    data: Buffer,
    f: { flags: number; diskOffset: number | null; plainXxh64: bigint },
    charged: number,
  ): Promise<void> {
    this.node.stats.receivedObjects++;
    this.node.stats.receivedBytes += data.length;
    try {
      this.fence.signal.throwIfAborted();
      const kind = await this.node.checks.checkPut({ key: meta.key, data, flags: f.flags, diskOffset: f.diskOffset, plainXxh64: f.plainXxh64 });
      const opts = {
        ...(f.flags & FrameFlag.IF_NONE_MATCH ? { ifNoneMatch: true } : {}),
        ...(meta.ifMatch !== undefined ? { ifMatch: meta.ifMatch } : {}),
        signal: this.fence.signal,
      };
      const store = this.node.opts.store;
      const info = kind.createOnly ? await putCreateOnly(store, meta.key, data, opts, kind) : await store.put(meta.key, data, opts);
      this.node.stats.puts++;
      if (kind.kind === 'legacy-chunk') this.node.stats.chunkPuts++;
      if (kind.kind === 'pack') this.node.stats.packPuts++;
      this.node.stats.putBytes += data.length;
      this.held -= charged;
      this.storedAcks.delete(stream); // a reused stream id goes last
      this.storedAcks.set(stream, wireInfo(info));
      if (this.storedAcks.size > Math.min(this.node.opts.maxInflight ?? 256, 65_536)) this.storedAcks.delete(this.storedAcks.keys().next().value!);
      this.reply(stream, { op: 'ack', info: wireInfo(info), credit: charged });
    } catch (err) {
      const code = err instanceof RnodeError ? err.code : ErrorCodes.INTERNAL;
      const kind = this.node.checks.kindOf(meta.key) ?? 'unknown';
      if (isRnodeError(err, TransportErrorCodes.REJECTED)) {
        this.node.stats.rejected++;
        this.node.log('rejected', { session: this.id, ...err.details, message: err.message });
      } else {
        this.node.stats.putFailures++;
        // The node's operator is the one who can fix a store that fails (full, read-only): the sender only learns
        // that it failed.
        this.node.log('put-failed', { session: this.id, kind, code, message: (err as Error)?.message ?? String(err) });
      }
      this.node.countPutError(code, kind);
      this.held -= charged;
      this.reply(stream, { ...errorMessage(err), credit: charged });
    }
  }

  private open(stream: number): void {
    if (this.streams.has(stream)) throw protocolError(`stream ${stream} is already in use`);
    if (this.streams.size >= (this.node.opts.maxInflight ?? 256)) throw protocolError('too many requests in flight');
    this.streams.add(stream);
  }

  /** Runs store calls at most opConcurrency at once; the queue is bounded by maxInflight. */
  private schedule(fn: () => Promise<void>): void {
    this.queue.push(fn);
    this.drainQueue();
  }

  private drainQueue(): void {
    const limit = this.node.opts.opConcurrency ?? 16;
    while (this.running < limit && this.queue.length > 0) {
      const fn = this.queue.shift()!;
      this.running++;
      fn()
        .catch((err) => this.node.log('internal-error', { session: this.id, message: (err as Error)?.message }))
        .finally(() => {
          this.running--;
          this.drainQueue();
        });
    }
  }

  private async onRequest(stream: number, m: ClientMessage): Promise<void> {
    const store = this.node.opts.store;
    try {
      switch (m.op) {
        case 'get': {
          // Reads of a session that closed have no reader: they were read, and paced by --bandwidth, all the same (a
          // peer that queued 256 gets of a pack and hung up held up every other session for minutes).
          if (this.closed) return;
          requestKey(m.key, this.node.checks);
          await this.writable();
          if (this.closed) return;
          const range = m.offset !== undefined ? { offset: m.offset, ...(m.length !== undefined ? { length: m.length } : {}) } : undefined;
          // One DATA frame carries one get: a larger object (a whole pack) is read in ranges, as every reader does. Its
          // size is known before it is read: read first and refused after, 16 gets of a 256 MiB pack per session took
          // a node to gigabytes of memory.
          const bytes = m.length ?? (await store.head(m.key)).size - (m.offset ?? 0);
          if (bytes > MAX_PAYLOAD_BYTES) {
            throw new RnodeError(ErrorCodes.STORE_IO, `get ${m.key}: ${bytes} bytes do not fit one frame (${MAX_PAYLOAD_BYTES}); read it in ranges`, {
              details: { key: m.key, bytes },
            });
          }
          const data = await store.get(m.key, range);
          if (this.closed) return;
          await this.node.bucket?.take(data.length);
          this.node.stats.gets++;
          this.node.stats.getBytes += data.length;
          this.streams.delete(stream);
          this.sendFrame(encodeFrame({ type: FrameType.DATA, stream, seq: this.sendSeq++, meta: { size: data.length }, payload: data }));
          return;
        }
        case 'head':
          if (this.closed) return;
          requestKey(m.key, this.node.checks);
          this.reply(stream, { op: 'ack', info: wireInfo(await store.head(m.key)) });
          return;
        case 'delete':
          this.node.checks.checkDelete(m.key);
          this.fence.signal.throwIfAborted();
          await store.delete(m.key);
          this.reply(stream, { op: 'ack' });
          return;
        case 'list': {
          if (this.lists.size >= MAX_OPEN_LISTS) throw protocolError(`more than ${MAX_OPEN_LISTS} listings open at once`);
          if (m.prefix !== '') requestKey(m.prefix.endsWith('/') ? m.prefix.slice(0, -1) : m.prefix);
          const it = store.list(m.prefix)[Symbol.asyncIterator]();
          const entry = { it, busy: true };
          this.lists.set(stream, entry);
          await this.page(stream, entry, m.after);
          return;
        }
        case 'lease': {
          validateDiskId(m.disk);
          // Prune's lease of a repository (prune.<domain>) is the node's own: a peer holding it blocked every sweep
          // of the node's store, reported as "another prune is sweeping". Prune runs on the node, never over ws://.
          if (m.disk.startsWith(PRUNE_LEASE_PREFIX)) {
            throw new RnodeError(
              TransportErrorCodes.REJECTED,
              `lease of ${m.disk} refused: ids that start with "${PRUNE_LEASE_PREFIX}" are prune's lease, taken on the node only`,
            );
          }
          const ttl = clampLeaseTtl(m.ttlMs ?? 60_000);
          const ref: LeaseRecord = { format: 'rnode-lease', disk: m.disk, holder: m.holder, token: m.token ?? 0, acquiredAt: '', expiresAt: '' };
          let rec: LeaseRecord = ref;
          if (m.action === 'acquire') rec = await this.node.leases.acquire(m.disk, m.holder, ttl, m.breakDead);
          else if (m.action === 'renew') rec = await this.node.leases.renew(ref, ttl);
          else await this.node.leases.release(ref);
          if (m.action !== 'release') {
            this.leased.set(m.disk, m.holder);
            this.node.leaseTakers.add(this);
          }
          if (m.action === 'acquire') this.node.fenceOthers(this, m.disk, m.holder);
          this.node.log('lease', {
            session: this.id,
            peer: this.peer,
            action: m.action,
            disk: m.disk,
            holder: m.holder,
            fencingToken: rec.token,
            ttlMs: ttl,
          });
          const { format: _f, ...lease } = rec;
          this.reply(stream, { op: 'leaseGrant', lease });
          return;
        }
        default:
          throw protocolError(`unexpected ${m.op}`);
      }
    } catch (err) {
      if (isRnodeError(err, TransportErrorCodes.PROTOCOL)) {
        this.fail(err, 1002);
        return;
      }
      const l = this.lists.get(stream);
      if (l) {
        this.lists.delete(stream);
        l.it.return?.().catch(() => undefined);
      }
      // As for a put: what the node's own store cannot do (read-only, full, no permission) is for its operator, who saw
      // nothing while the sender was told "its log says why" (a lease acquire on a read-only store fails first).
      if (!(err instanceof RnodeError) || STORE_TROUBLE.has(err.code)) {
        this.node.log('request-failed', {
          session: this.id,
          op: m.op,
          code: err instanceof RnodeError ? err.code : ErrorCodes.INTERNAL,
          message: (err as Error)?.message ?? String(err),
        });
      }
      this.reply(stream, errorMessage(err));
    }
  }

  private onListMore(stream: number, op: 'listNext' | 'listCancel'): void {
    const l = this.lists.get(stream);
    if (op === 'listCancel') {
      if (l) {
        this.lists.delete(stream);
        this.streams.delete(stream);
        l.it.return?.().catch(() => undefined);
      }
      return;
    }
    if (!l || l.busy) throw protocolError(`listNext on stream ${stream}, which has no listing waiting`);
    l.busy = true;
    this.schedule(async () => {
      try {
        await this.page(stream, l);
      } catch (err) {
        this.lists.delete(stream);
        this.reply(stream, errorMessage(err));
      }
    });
  }

  private async page(
    stream: number,
    l: { it: AsyncIterator<{ key: string; size: number; etag?: string }>; busy: boolean },
    after?: string,
  ): Promise<void> {
    const items: ObjectInfoWire[] = [];
    let bytes = 0;
    let more = true;
    while (items.length < LIST_PAGE_ITEMS && bytes < 256 * 1024) {
      const r = await l.it.next();
      if (r.done) {
        more = false;
        break;
      }
      if (after !== undefined && Buffer.compare(Buffer.from(r.value.key), Buffer.from(after)) <= 0) continue;
      items.push(wireInfo(r.value));
      bytes += r.value.key.length + 40;
    }
    l.busy = false;
    if (!more) {
      this.lists.delete(stream);
    }
    this.reply(stream, { op: 'listPage', items, more }, more);
  }

  /** Waits while the socket has more than WRITE_HIGH_WATER bytes queued (ws's bufferedAmount). */
  private async writable(): Promise<void> {
    while (!this.closed && this.ws.bufferedAmount >= WRITE_HIGH_WATER) await new Promise<void>((r) => this.waiters.push(r));
  }

  private reply(stream: number, m: NodeMessage, keepOpen = false): void {
    if (!keepOpen) this.streams.delete(stream);
    this.send(stream, m);
  }

  private send(stream: number, m: NodeMessage): void {
    this.sendFrame(encodeFrame({ type: FrameType.CONTROL, stream, seq: this.sendSeq++, meta: m as unknown as Record<string, unknown> }));
  }

  private sendFrame(b: Buffer): void {
    if (this.closed) return;
    this.ws.send(b, { binary: true }, () => {
      if (this.ws.bufferedAmount < WRITE_HIGH_WATER) for (const w of this.waiters.splice(0)) w();
    });
  }

  /** Tells the peer why (when the socket still takes it), then closes. */
  private fail(err: unknown, closeCode: number): void {
    if (this.closed) return;
    const m = errorMessage(err);
    this.node.log('session-failed', { session: this.id, peer: this.peer, code: m.code, message: m.message });
    try {
      this.ws.send(encodeFrame({ type: FrameType.CONTROL, stream: 0, seq: this.sendSeq++, meta: m as unknown as Record<string, unknown> }), {
        binary: true,
      });
      this.ws.close(closeCode, m.code);
    } catch {
      this.ws.terminate();
    }
    this.closed = true;
    // A peer that does not finish the close handshake is cut.
    setTimeout(() => {
      try {
        this.ws.terminate();
      } catch {
        /* gone */
      }
    }, 2000).unref();
  }
}

/** Bytes of a stored object compared with a put's at once: a peer's retries never make the node read a pack whole. */
const COMPARE_BYTES = 4 * 1024 * 1024;
/** How many times a put refused for a key that is not there yet waits for the other put of it (about 40 s in all). */
const CONCURRENT_PUT_WAITS = 45;

/**
 * Stores an object that is written once (a pack, an index, a manifest...) only where its key is free, whatever the
 * peer asked: a peer with the token overwrote committed points' packs and tables, and every restore of them failed.
 * The same bytes again are a retry (an ack lost with a cut) and succeed. Other bytes are refused, unless the checks
 * say the object may still be replaced; a put the sender made conditional itself fails as the store says, as before.
 */
async function putCreateOnly(store: ObjectStore, key: string, data: Buffer, asked: PutOptions, verdict: PutVerdict): Promise<ObjectInfo> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await putIfAbsent(store, key, data, asked.signal);
    } catch (err) {
      if (!isRnodeError(err, ErrorCodes.STORE_PRECONDITION) || asked.ifNoneMatch) throw err;
    }
    let same: boolean;
    try {
      same = await holdsBytes(store, key, data);
    } catch (err) {
      // Refused, yet not there: another put of the key is under way (a sender's retry while the node still stores what
      // its cut session sent; S3 answers 409 ConditionalRequestConflict to the second). Once it lands, compare.
      if (!isRnodeError(err, ErrorCodes.STORE_NOT_FOUND) || attempt === CONCURRENT_PUT_WAITS) throw err;
      await new Promise((r) => setTimeout(r, Math.min(100 * attempt, 1000)));
      continue;
    }
    if (same) return store.head(key);
    if (verdict.replaceable && (await verdict.replaceable())) return store.put(key, data, asked);
    throw new RnodeError(
      TransportErrorCodes.REJECTED,
      `${key} is already on this node with other bytes; objects of its kind (${verdict.kind}) are written once and never ` +
        `replaced over the peer link (committed points use them); it was not stored. rnode never sends other bytes under ` +
        `a name it wrote: if an rnode run sent this, report it as a bug`,
      { details: { key, kind: verdict.kind } },
    );
  }
}

/** A conditional put (create-only); a backend that does not enforce if-none-match (capabilities) is asked first. */
async function putIfAbsent(store: ObjectStore, key: string, data: Buffer, signal?: AbortSignal): Promise<ObjectInfo> {
  if (!store.capabilities.conditionalPut && (await exists(store, key))) {
    throw new RnodeError(ErrorCodes.STORE_PRECONDITION, `put ${key}: the key already exists`, { details: { key } });
  }
  return store.put(key, data, { ifNoneMatch: true, ...(signal ? { signal } : {}) });
}

async function exists(store: ObjectStore, key: string): Promise<boolean> {
  try {
    await store.head(key);
    return true;
  } catch (err) {
    if (isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) return false;
    throw err;
  }
}

/** Whether the store holds exactly these bytes under key (read in ranges of COMPARE_BYTES). */
async function holdsBytes(store: ObjectStore, key: string, data: Buffer): Promise<boolean> {
  if ((await store.head(key)).size !== data.length) return false;
  for (let at = 0; at < data.length; at += COMPARE_BYTES) {
    const length = Math.min(COMPARE_BYTES, data.length - at);
    if (!(await store.get(key, { offset: at, length })).equals(data.subarray(at, at + length))) return false;
  }
  return true;
}

/** Copies a payload's pieces, in order, into dst from `at` (dst has room: the callers checked the lengths). */
function gather(pieces: Buffer[], dst: Buffer, at: number): void {
  for (const p of pieces) {
    copyBytes(p, dst.subarray(at));
    at += p.length;
  }
}

/** Credit the frame heads of an object sent in parts may take beyond its bytes (generous: 8 KiB a part). */
function partOverhead(objectBytes: number): number {
  return (Math.ceil(objectBytes / PART_BYTES) + 1) * 8192;
}

/**
 * A key (or list prefix) a peer sent: one that is not a valid key (e.g. "../x") is the peer's mistake, never INTERNAL.
 * `reading` (get, head): the checks that tell a lease record's key.
 */
function requestKey(key: string, reading?: ObjectChecks): void {
  try {
    assertValidKey(key);
  } catch {
    throw new RnodeError(
      TransportErrorCodes.REJECTED,
      `key ${JSON.stringify(key.slice(0, 200))} is not a valid object key (no '.', '..' or empty segments, no backslash); nothing was read`,
      { details: { key: key.slice(0, 200) } },
    );
  }
  // A lease's holder id is what renews or releases it: peers never read lease records, they hold their own.
  if (reading?.kindOf(key) === 'lease') {
    throw new RnodeError(
      TransportErrorCodes.REJECTED,
      `${key} is kept by the receiving node, which a sender takes with a lease message: the sending rnode is older than this node (it reads and writes lease.json itself), upgrade it`,
      { details: { key } },
    );
  }
}

/** Failures of a request that are the node's store's, not the request's (a missing object or a lost race is an answer). */
const STORE_TROUBLE: ReadonlySet<string> = new Set([
  ErrorCodes.STORE_IO,
  ErrorCodes.STORE_AUTH,
  ErrorCodes.STORE_UNAVAILABLE,
  ErrorCodes.PATH_UNUSABLE,
  ErrorCodes.INTERNAL,
]);

/** The events of ServeOptions.log that say something went wrong (warnings); the others are info. */
export const SERVE_WARN_EVENTS: ReadonlySet<string> = new Set([
  'put-failed',
  'request-failed',
  'internal-error',
  'server-error',
  'session-error',
  'session-failed',
  'session-stalled',
  'rejected',
  'auth-failed',
  'tls-error',
  'handshake-timeout',
  'refused',
  'busy',
]);

function wireInfo(i: { key: string; size: number; etag?: string }): ObjectInfoWire {
  return { key: i.key, size: i.size, ...(i.etag !== undefined ? { etag: i.etag } : {}) };
}

/**
 * What a sender is told of a failed request. The node's own store folder failing (read-only, not a folder:
 * PATH_UNUSABLE, a usage error where the folder is the user's own; full: STORE_IO) is for the node's operator to fix,
 * not a mistake on the sender's command line, and that folder's path is the node's business: the sender gets
 * STORE_IO (exit 1) without it.
 */
function errorMessage(err: unknown): Extract<NodeMessage, { op: 'error' }> {
  const full = isStoreFull(err);
  if (full || isRnodeError(err, ErrorCodes.PATH_UNUSABLE)) {
    const errno = typeof err.details.errno === 'string' ? err.details.errno : undefined;
    return {
      op: 'error',
      code: ErrorCodes.STORE_IO,
      message: full
        ? `the receiving node's store has no space left (${errno}); free space there (or prune its points), then run the same command again`
        : `the receiving node cannot write to its store${errno ? ` (${errno})` : ''}; its operator must fix the store folder (its log says why), then run the same command again`,
      retryable: false,
      details: errno ? { errno } : {},
    };
  }
  if (err instanceof RnodeError) {
    return { op: 'error', code: err.code, message: err.message.slice(0, 4000), retryable: err.retryable, details: safeDetails(err.details) };
  }
  return {
    op: 'error',
    code: ErrorCodes.INTERNAL,
    message: `the receiving node failed: ${(err as Error)?.message ?? String(err)}`.slice(0, 4000),
    retryable: false,
  };
}

function safeDetails(d: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(d)) if (v === null || ['string', 'number', 'boolean'].includes(typeof v)) out[k] = v;
  return out;
}
