// Splits the server's transmission-phase byte stream into simple replies and structured reply chunks.
// Pure: bytes in, calls on a ReplySink out; payloads are handed over in pieces as they arrive so a 32 MiB
// read is never buffered twice. Anything malformed throws NbdProtocolError and the parser is then dead.
import {
  NbdProtocolError,
  SIMPLE_REPLY_HEADER,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_HEADER,
  STRUCTURED_REPLY_MAGIC,
  type ChunkHeader,
} from './protocol.js';

export interface ReplySink {
  /** A simple reply header; returns how many payload bytes follow it (the read length, or 0). */
  simpleReply(handle: bigint, error: number): number;
  /** A structured chunk header; throws NbdProtocolError to refuse it (unknown handle, oversize length...). */
  chunkHeader(header: ChunkHeader): void;
  /** The next piece of the current message's payload (a view of the caller's buffer: copy, do not keep). */
  payload(piece: Buffer): void;
  /** The current message (header and payload) is complete. */
  end(): void;
}

export class ReplyParser {
  private readonly header = Buffer.alloc(STRUCTURED_REPLY_HEADER);
  private filled = 0;
  private need = 4; // 4 until the magic says which header this is
  private remaining = 0;
  private inPayload = false;
  private dead: NbdProtocolError | undefined;

  constructor(private readonly sink: ReplySink) {}

  push(data: Buffer): void {
    if (this.dead) throw this.dead;
    try {
      this.consume(data);
    } catch (err) {
      this.dead = err instanceof NbdProtocolError ? err : new NbdProtocolError(String((err as Error)?.message ?? err));
      throw this.dead;
    }
  }

  /** True when the stream is between messages (a clean place for the server to hang up). */
  get idle(): boolean {
    return !this.inPayload && this.filled === 0;
  }

  private consume(data: Buffer): void {
    let pos = 0;
    while (pos < data.length) {
      if (this.inPayload) {
        const n = Math.min(this.remaining, data.length - pos);
        this.sink.payload(data.subarray(pos, pos + n));
        pos += n;
        this.remaining -= n;
        if (this.remaining === 0) this.finish();
        continue;
      }
      const n = Math.min(this.need - this.filled, data.length - pos);
      data.copy(this.header, this.filled, pos, pos + n);
      this.filled += n;
      pos += n;
      if (this.filled < this.need) continue;
      if (this.need === 4) {
        const magic = this.header.readUInt32BE(0);
        if (magic === SIMPLE_REPLY_MAGIC) this.need = SIMPLE_REPLY_HEADER;
        else if (magic === STRUCTURED_REPLY_MAGIC) this.need = STRUCTURED_REPLY_HEADER;
        else throw new NbdProtocolError(`unexpected reply magic 0x${magic.toString(16).padStart(8, '0')}`);
        continue;
      }
      this.startPayload();
    }
  }

  private startPayload(): void {
    const h = this.header;
    if (this.need === SIMPLE_REPLY_HEADER) {
      this.remaining = this.sink.simpleReply(h.readBigUInt64BE(8), h.readUInt32BE(4));
    } else {
      const header: ChunkHeader = { flags: h.readUInt16BE(4), type: h.readUInt16BE(6), handle: h.readBigUInt64BE(8), length: h.readUInt32BE(16) };
      this.sink.chunkHeader(header);
      this.remaining = header.length;
    }
    this.filled = 0;
    this.need = 4;
    if (this.remaining === 0) this.sink.end();
    else this.inPayload = true;
  }

  private finish(): void {
    this.inPayload = false;
    this.sink.end();
  }
}
