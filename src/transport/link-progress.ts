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
    const handle = (this.socket as unknown as { _handle?: StreamHandle } | undefined)?._handle;
    const tcp = handle?._parent ?? handle;
    const inLibuv = typeof tcp?.writeQueueSize === 'number' ? tcp.writeQueueSize : Infinity;
    const queue = typeof tcp?.fd === 'number' && tcp.fd >= 0 ? socketSendQueue(tcp.fd) : -1;
    const inKernel = queue >= 0 ? queue : Infinity;
    const moved = written > this.written || inLibuv < this.inLibuv || inKernel < this.inKernel;
    this.written = written;
    this.inLibuv = inLibuv;
    this.inKernel = inKernel;
    return moved;
  }
}
