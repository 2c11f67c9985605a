// Whether a connection still takes the bytes it was given, seen from the sending side, for the sender's heartbeat. A
// node that paces its reading (serve --bandwidth), or a slow link, answers a ping only after the bytes queued before
// it, which can be minutes: the bytes moving toward it say it is there all the same. They move in three places, and
// on a slow link only one of them may change between two beats: a whole write ends (the WebSocket's buffer shrinks:
// a corked PUT is one write of megabytes), libuv hands part of a write to the kernel (the handle's write queue
// shrinks), or the peer acknowledges bytes the kernel holds (its send queue shrinks, SIOCOUTQ: the last megabytes of a
// run, with nothing left in the process).
import type { Duplex } from 'node:stream';
import type { WebSocket } from 'ws';
import { socketSendQueue } from '../native/index.js';

/** The libuv handle of a socket: a TCP one's own, a TLS one's under its TLS layer. */
interface StreamHandle {
  fd?: number;
  writeQueueSize?: number;
  _parent?: StreamHandle;
}

/** Bytes in a socket's libuv write queue and in its kernel send queue (SIOCOUTQ); Infinity where unknown. */
function socketQueues(socket: Duplex | undefined): { inLibuv: number; inKernel: number } {
  const handle = (socket as unknown as { _handle?: StreamHandle } | undefined)?._handle;
  const tcp = handle?._parent ?? handle;
  const inLibuv = typeof tcp?.writeQueueSize === 'number' ? tcp.writeQueueSize : Infinity;
  const queue = typeof tcp?.fd === 'number' && tcp.fd >= 0 ? socketSendQueue(tcp.fd) : -1;
  return { inLibuv, inKernel: queue >= 0 ? queue : Infinity };
}

export class LinkProgress {
  private written: number;
  private inLibuv = Infinity;
  private inKernel = Infinity;

  constructor(
    private readonly ws: WebSocket,
    private readonly socket: Duplex | undefined,
    sent: number,
  ) {
    this.written = sent - ws.bufferedAmount;
  }

  /** True when bytes moved toward the peer since the last call; sent: every byte handed to the WebSocket so far. */
  moved(sent: number): boolean {
    const written = sent - this.ws.bufferedAmount;
    const { inLibuv, inKernel } = socketQueues(this.socket);
    const moved = written > this.written || inLibuv < this.inLibuv || inKernel < this.inKernel;
    this.written = written;
    this.inLibuv = inLibuv;
    this.inKernel = inKernel;
    return moved;
  }
}

/** Bytes a sender keeps queued toward its peer before it knows the link's rate, and at the least. */
const FIRST_LIMIT = 1024 * 1024;
const MIN_LIMIT = 256 * 1024;
/** How long the bytes queued ahead of a new request may take to cross the link. */
const QUEUE_SECONDS = 0.5;
/** The shortest time over which the delivery rate is measured. */
const SAMPLE_MS = 100;

/**
 * How many bytes a sender lets wait toward its peer (in the WebSocket, libuv and the kernel's send queue): what the
 * link delivers in QUEUE_SECONDS, measured while bytes wait, so that a request sent next (a lease renewal) reaches
 * the peer within about that. A fixed 4 MiB, plus a whole pack sent at once, held a renewal back for minutes on a
 * 100 kB/s link while the lease ran out. A fast link gets `max`, counted in the WebSocket's buffer alone (as before:
 * the kernel's queue is the link's own buffering there).
 */
export class SendPace {
  private rate: number | undefined;
  private mark: { at: number; delivered: number; busy: boolean } | undefined;

  constructor(
    private readonly ws: WebSocket,
    private readonly socket: Duplex | undefined,
    private readonly max: number,
  ) {}

  /** The bytes that may wait toward the peer now. */
  get limit(): number {
    if (this.rate === undefined) return Math.min(this.max, FIRST_LIMIT);
    return Math.min(this.max, Math.max(MIN_LIMIT, Math.floor(this.rate * QUEUE_SECONDS)));
  }

  /**
   * True while the bytes waiting toward the peer reach the limit; sent: every byte handed to the WebSocket so far. The
   * kernel's queue counts once the link is known to be slow: before, and on a fast link, it is the link's own buffer.
   */
  full(sent: number): boolean {
    const inKernel = socketQueues(this.socket).inKernel;
    const waiting = this.ws.bufferedAmount + (Number.isFinite(inKernel) ? inKernel : 0);
    this.sample(sent - waiting, waiting > 0);
    const limit = this.limit;
    return this.rate === undefined || limit >= this.max ? this.ws.bufferedAmount >= limit : waiting >= limit;
  }

  /**
   * A window's delivery rate counts only when bytes were waiting at its start and at its end: a link that emptied its
   * queue (a sender slower than it) says nothing of its speed.
   */
  private sample(delivered: number, busy: boolean): void {
    const now = performance.now();
    const m = this.mark;
    if (m && now - m.at < SAMPLE_MS) return;
    if (m?.busy && busy) {
      const r = ((delivered - m.delivered) * 1000) / (now - m.at);
      this.rate = this.rate === undefined ? r : (this.rate + r) / 2;
    }
    this.mark = { at: now, delivered, busy };
  }
}
