// A lane of codec work on the main thread itself (codec-workers.ts): the same ops a codec worker thread runs
// (codec-ops.ts), one per event-loop turn as a worker runs them, with the same replies. A one-job process (the rnode
// CLI) runs one lane here and one worker fewer: each worker thread is a node start of its own (~80 ms of CPU here),
// which a 1 MiB replicate or an unchanged incremental paid before its first chunk, while its main thread mostly
// waited. Only with liblz4: lz4-napi's garbage needs the gc() a worker isolate exposes.
import fs from 'node:fs';
import { makeKernel } from '../format/codec-kernel.js';
import { blake3, Blake3Hasher, copyBytes, isZero, lz4Block, nativeXxh64, threadCpuMs, xxh3, zeroBytes } from '../native/index.js';
import { PLAIN_ID_KEY } from '../repository/domain.js';
import { errorText, makeCodecOps, type OpMessage } from './codec-ops.js';

/** What a lane answers: the op's reply with its message id, or the error's text (as a worker posts them). */
export type LaneReply = { id: number; error?: string } & Record<string, unknown>;

export class InlineLane {
  /** Ops handled so far (requests and setup messages alike). */
  handled = 0;
  private readonly queue: OpMessage[] = [];
  private scheduled = false;
  private readonly ops = makeCodecOps({
    kernel: makeKernel({ block: lz4Block, copy: copyBytes, zero: zeroBytes }),
    h64Raw: (data) => nativeXxh64(data),
    blake3,
    Blake3Hasher,
    cpu: threadCpuMs ?? (() => performance.now()),
    idKeys: [['plain', Buffer.from(PLAIN_ID_KEY)]],
    readSync: (fd, buf, offset, length, position) => fs.readSync(fd, buf, offset, length, position),
    isZero,
    xxh3,
  });

  /** True where this process can run codec ops on its main thread (liblz4 loaded). */
  static get available(): boolean {
    return lz4Block !== undefined;
  }

  constructor(private readonly reply: (m: LaneReply) => void) {}

  // What CodecWorkers calls on a worker: a lane holds no handle (its queued turns keep the process alive) and no thread.
  ref(): void {}
  unref(): void {}
  async terminate(): Promise<void> {}

  /** Queues a message, as Worker.postMessage does; it is handled on a later turn of the event loop. */
  postMessage(m: Record<string, unknown>): void {
    this.queue.push(m as unknown as OpMessage);
    this.schedule();
  }

  private schedule(): void {
    if (this.scheduled || this.queue.length === 0) return;
    this.scheduled = true;
    setImmediate(this.pump);
  }

  // One message per turn, so the job's I/O callbacks run between chunks.
  private readonly pump = (): void => {
    this.scheduled = false;
    const m = this.queue.shift()!;
    this.handled++;
    let r: LaneReply;
    try {
      r = { ...this.ops.handle(m), id: m.id! };
    } catch (err) {
      r = { id: m.id!, error: errorText(err) };
    }
    this.schedule();
    if (m.id !== undefined) this.reply(r);
  };
}
