// The byte I/O a session runs over: exact-length reads with back-pressure (the socket is paused while enough is
// buffered), replies written whole and in order, waiting for 'drain', and the STARTTLS upgrade of the socket.
import type net from 'node:net';
import tls from 'node:tls';

export interface SessionIo {
  /** Exactly n bytes, or a rejection when the peer goes away first. */
  read(n: number): Promise<Buffer>;
  /**
   * Writes the buffers back to back (one reply stays contiguous); resolves once the socket can take more.
   * flushed is called once the socket no longer reads from parts (written, or the connection is gone).
   */
  write(parts: Buffer[], flushed?: () => void): Promise<void>;
  /** Upgrades the connection to TLS as the server side (after NBD_OPT_STARTTLS was acknowledged). */
  startTls(): Promise<void>;
  readonly encrypted: boolean;
  /** Bytes the peer sent that are still buffered here (tests and memory bounds). */
  readonly buffered: number;
  close(): void;
}

/** A reply could not be sent: the client went away. Not the request's failure, and nothing for the log. */
export class ConnectionClosed extends Error {}

/** Buffered input beyond this pauses the socket, unless a read waits for more. */
const HIGH_WATER = 1024 * 1024;
/**
 * A reply counts as sent while the socket holds at most this many bytes not yet written: the next reply joins the
 * queue and goes out in the same writev, instead of waiting for the queue to empty first (that wait left the
 * socket idle between replies and took one write per part). A session's memory beyond its requests in flight is
 * bounded by this.
 */
const QUEUED_BYTES = 4 * 1024 * 1024;
/** What write() returns for a reply that left room on the socket. */
const ROOM: Promise<void> = Promise.resolve();

export class SocketIo implements SessionIo {
  private chunks: Buffer[] = [];
  private size = 0;
  private waiter?: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void };
  private ended?: Error;
  /** The last write that waited for room (settled: never rejects), and how many writes wait behind it or for it. */
  private tail: Promise<void> = ROOM;
  private behind = 0;
  private socket: net.Socket;
  encrypted = false;

  constructor(
    socket: net.Socket,
    private readonly tlsContext?: tls.SecureContext,
    private readonly tlsTimeoutMs = 10_000,
  ) {
    this.socket = socket;
    this.attach();
  }

  get buffered(): number {
    return this.size;
  }

  private readonly onData = (d: Buffer) => {
    this.chunks.push(d);
    this.size += d.length;
    this.serve();
    if (this.size >= Math.max(HIGH_WATER, this.waiter?.n ?? 0)) this.socket.pause();
  };
  private readonly onEnd = () => this.fail(new Error('the client closed the connection'));
  private readonly onError = (e: Error) => this.fail(e);

  private attach(): void {
    this.socket.on('data', this.onData);
    this.socket.on('end', this.onEnd);
    this.socket.on('close', this.onEnd);
    this.socket.on('error', this.onError);
  }

  private detach(): void {
    this.socket.off('data', this.onData);
    this.socket.off('end', this.onEnd);
    this.socket.off('close', this.onEnd);
    this.socket.off('error', this.onError);
  }

  private fail(e: Error): void {
    this.ended ??= e;
    const w = this.waiter;
    this.waiter = undefined;
    w?.reject(this.ended);
  }

  private take(n: number): Buffer {
    if (this.chunks[0].length >= n) {
      const head = this.chunks[0];
      const out = head.subarray(0, n);
      if (head.length === n) this.chunks.shift();
      else this.chunks[0] = head.subarray(n);
      this.size -= n;
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let o = 0;
    while (o < n) {
      const head = this.chunks[0];
      const k = Math.min(head.length, n - o);
      head.copy(out, o, 0, k);
      o += k;
      if (k === head.length) this.chunks.shift();
      else this.chunks[0] = head.subarray(k);
    }
    this.size -= n;
    return out;
  }

  private serve(): void {
    const w = this.waiter;
    if (w && this.size >= w.n) {
      this.waiter = undefined;
      w.resolve(this.take(w.n));
    }
    if (this.size < HIGH_WATER && !this.waiter) this.socket.resume();
  }

  read(n: number): Promise<Buffer> {
    if (this.waiter) return Promise.reject(new Error('concurrent reads on one session'));
    if (n === 0) return Promise.resolve(Buffer.alloc(0));
    if (this.size >= n) {
      const b = this.take(n);
      if (this.size < HIGH_WATER) this.socket.resume();
      return Promise.resolve(b);
    }
    if (this.ended) return Promise.reject(this.ended);
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject };
      this.socket.resume();
    });
  }

  write(parts: Buffer[], flushed?: () => void): Promise<void> {
    // Straight onto the socket while no earlier reply waits for room; behind that reply otherwise, so replies keep
    // their order (a chained write per reply cost three promises and two turns of the microtask queue).
    const p = this.behind === 0 ? this.put(parts, flushed) : this.tail.then(() => this.put(parts, flushed));
    if (p === ROOM) return p;
    this.behind++;
    const done = () => {
      this.behind--;
    };
    this.tail = p.then(done, done);
    return p;
  }

  /** Writes one reply now; ROOM when the socket can take more at once, else a promise of 'drain'. */
  private put(parts: Buffer[], flushed?: () => void): Promise<void> {
    if (this.socket.destroyed || !this.socket.writable) {
      flushed?.();
      return Promise.reject(new ConnectionClosed('the connection is closed'));
    }
    let ok = true;
    let lastPart = parts.length - 1;
    while (lastPart >= 0 && parts[lastPart].length === 0) lastPart--;
    if (lastPart < 0) flushed?.();
    // The last part's callback comes once the socket has handed every earlier byte on too (or failed). Corked, the
    // parts of a reply leave in one writev.
    this.socket.cork();
    for (let i = 0; i <= lastPart; i++) {
      if (parts[i].length) ok = this.socket.write(parts[i], i === lastPart && flushed ? () => flushed() : undefined);
    }
    this.socket.uncork();
    if (ok || this.socket.writableLength <= QUEUED_BYTES) return ROOM;
    return new Promise<void>((resolve, reject) => {
      const done = (err?: Error) => {
        this.socket.off('drain', onDrain);
        this.socket.off('close', onClose);
        if (err) reject(err);
        else resolve();
      };
      const onDrain = () => done();
      const onClose = () => done(new ConnectionClosed('the connection closed while a reply was being sent'));
      this.socket.once('drain', onDrain);
      this.socket.once('close', onClose);
    });
  }

  async startTls(): Promise<void> {
    if (!this.tlsContext) throw new Error('TLS is not configured');
    await this.tail;
    this.detach();
    // Bytes that arrived after the option (a quick client's ClientHello) belong to the TLS layer.
    if (this.size) this.socket.unshift(Buffer.concat(this.chunks));
    this.chunks = [];
    this.size = 0;
    const raw = this.socket;
    const secure = new tls.TLSSocket(raw, { isServer: true, secureContext: this.tlsContext });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => fail(new Error('TLS handshake timed out')), this.tlsTimeoutMs);
      const fail = (e: Error) => {
        clearTimeout(timer);
        secure.destroy();
        raw.destroy();
        reject(e);
      };
      secure.once('secure', () => {
        clearTimeout(timer);
        secure.off('error', fail);
        resolve();
      });
      secure.once('error', fail);
      raw.resume();
    });
    this.socket = secure;
    this.encrypted = true;
    this.attach();
  }

  close(): void {
    this.fail(new Error('the session closed'));
    this.detach();
    this.socket.on('error', () => undefined);
    this.socket.destroy();
  }
}
