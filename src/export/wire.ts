// NBD wire format, server side: decoding what a client sends (option and request headers, option payloads)
// and encoding what a server answers. Pure functions over buffers; every length is checked before it is used.
import {
  Info,
  IHAVEOPT,
  MAX_STRING,
  NBDMAGIC,
  OPTION_REPLY_MAGIC,
  REQUEST_MAGIC,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_MAGIC,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  REPLY_FLAG_DONE,
  ReplyType,
} from '../source/nbd/protocol.js';

export {
  Cmd,
  CmdFlag,
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  Info,
  Opt,
  Rep,
  RepErr,
  STATE_HOLE,
  STATE_ZERO,
  BASE_ALLOCATION,
  MAX_STRING,
  REQUEST_HEADER,
  TFLAG_HAS_FLAGS,
  TFLAG_READ_ONLY,
} from '../source/nbd/protocol.js';

/** Transmission flags beyond the two the client module names. */
export const TFlag = {
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
} as const;

/** errno values of the transmission phase (the protocol fixes these numbers, whatever the host's). */
export const Errno = { EPERM: 1, EIO: 5, ENOMEM: 12, EINVAL: 22, ENOSPC: 28, EOVERFLOW: 75, ENOTSUP: 95, ESHUTDOWN: 108 } as const;

/** A client broke the protocol in a way that leaves no safe reply: the connection is closed. */
export class ClientProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ClientProtocolError';
  }
}

// ---- handshake ----

/** The server's opening: NBDMAGIC, IHAVEOPT, handshake flags (fixed newstyle, no zeroes). */
export function encodeGreeting(): Buffer {
  const b = Buffer.alloc(18);
  b.writeBigUInt64BE(NBDMAGIC, 0);
  b.writeBigUInt64BE(IHAVEOPT, 8);
  b.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16);
  return b;
}

export interface OptionHeader {
  option: number;
  length: number;
}

export function decodeOptionHeader(b: Buffer): OptionHeader {
  if (b.readBigUInt64BE(0) !== IHAVEOPT) throw new ClientProtocolError('option without the IHAVEOPT magic');
  return { option: b.readUInt32BE(8), length: b.readUInt32BE(12) };
}

export function encodeOptionReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(20 + data.length);
  b.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(data.length, 16);
  data.copy(b, 20);
  return b;
}

/** A cursor over an option's payload that refuses to read past its end (the client's lengths are never trusted). */
export class PayloadReader {
  private o = 0;
  constructor(private readonly b: Buffer) {}
  u16(): number {
    this.need(2);
    const v = this.b.readUInt16BE(this.o);
    this.o += 2;
    return v;
  }
  u32(): number {
    this.need(4);
    const v = this.b.readUInt32BE(this.o);
    this.o += 4;
    return v;
  }
  /** A u32 length then that many bytes of UTF-8, at most MAX_STRING. */
  string(what: string): string {
    const n = this.u32();
    if (n > MAX_STRING) throw new OptionInvalid(`${what} of ${n} bytes is longer than ${MAX_STRING}`);
    this.need(n);
    const s = this.b.subarray(this.o, this.o + n).toString('utf8');
    this.o += n;
    return s;
  }
  get remaining(): number {
    return this.b.length - this.o;
  }
  private need(n: number): void {
    if (this.o + n > this.b.length) throw new OptionInvalid('option payload is shorter than its fields say');
  }
}

/** An option whose payload is malformed: answered with NBD_REP_ERR_INVALID, the session goes on. */
export class OptionInvalid extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'OptionInvalid';
  }
}

/** NBD_OPT_INFO / NBD_OPT_GO payload: export name, then the NBD_INFO_* items asked for. */
export function decodeGoPayload(b: Buffer): { name: string; infos: number[] } {
  const r = new PayloadReader(b);
  const name = r.string('export name');
  const n = r.u16();
  if (r.remaining !== 2 * n) throw new OptionInvalid(`information request count ${n} does not match the payload`);
  const infos: number[] = [];
  for (let i = 0; i < n; i++) infos.push(r.u16());
  return { name, infos };
}

/** NBD_OPT_{LIST,SET}_META_CONTEXT payload: export name, then the queries. */
export function decodeMetaPayload(b: Buffer): { name: string; queries: string[] } {
  const r = new PayloadReader(b);
  const name = r.string('export name');
  const n = r.u32();
  // Each query takes at least its 4-byte length: a count the payload cannot hold is refused before any loop.
  if (n * 4 > r.remaining) throw new OptionInvalid(`query count ${n} does not fit the payload`);
  const queries: string[] = [];
  for (let i = 0; i < n; i++) queries.push(r.string('meta context query'));
  if (r.remaining !== 0) throw new OptionInvalid('trailing bytes after the meta context queries');
  return { name, queries };
}

export function encodeInfoExport(size: number, flags: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt16BE(Info.EXPORT, 0);
  b.writeBigUInt64BE(BigInt(size), 2);
  b.writeUInt16BE(flags, 10);
  return b;
}

export function encodeInfoBlockSize(minimum: number, preferred: number, maximum: number): Buffer {
  const b = Buffer.alloc(14);
  b.writeUInt16BE(Info.BLOCK_SIZE, 0);
  b.writeUInt32BE(minimum, 2);
  b.writeUInt32BE(preferred, 6);
  b.writeUInt32BE(maximum, 10);
  return b;
}

export function encodeInfoString(type: number, s: string): Buffer {
  const text = Buffer.from(s, 'utf8');
  const b = Buffer.alloc(2 + text.length);
  b.writeUInt16BE(type, 0);
  text.copy(b, 2);
  return b;
}

/** NBD_REP_SERVER data: the name's length, the name, then an optional description. */
export function encodeServerEntry(name: string, description = ''): Buffer {
  const n = Buffer.from(name, 'utf8');
  return afterU32(n.length, n, Buffer.from(description, 'utf8'));
}

export function encodeMetaContextReply(id: number, name: string): Buffer {
  return afterU32(id, Buffer.from(name, 'utf8'));
}

/** A 32-bit big-endian number, then the parts: the shape of several option replies. */
function afterU32(n: number, ...parts: Buffer[]): Buffer {
  const head = Buffer.alloc(4);
  head.writeUInt32BE(n, 0);
  return Buffer.concat([head, ...parts]);
}

/** The reply to NBD_OPT_EXPORT_NAME: size, flags, and 124 zero bytes unless the client asked for none. */
export function encodeExportNameReply(size: number, flags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(10 + (noZeroes ? 0 : 124));
  b.writeBigUInt64BE(BigInt(size), 0);
  b.writeUInt16BE(flags, 8);
  return b;
}

// ---- transmission ----

export interface Request {
  flags: number;
  type: number;
  handle: bigint;
  offset: bigint;
  length: number;
}

export function decodeRequest(b: Buffer): Request {
  const magic = b.readUInt32BE(0);
  if (magic !== REQUEST_MAGIC) throw new ClientProtocolError(`bad request magic 0x${magic.toString(16)}`);
  return {
    flags: b.readUInt16BE(4),
    type: b.readUInt16BE(6),
    handle: b.readBigUInt64BE(8),
    offset: b.readBigUInt64BE(16),
    length: b.readUInt32BE(24),
  };
}

export function encodeSimpleReply(handle: bigint, error: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  b.writeBigUInt64BE(handle, 8);
  return b;
}

/**
 * A structured reply chunk's 20-byte header, in a buffer with `extra` bytes after it. From the pool (allocUnsafe):
 * every byte is written, and a copy sends one such header per reply.
 */
function chunkHeader(handle: bigint, type: number, done: boolean, length: number, extra = 0): Buffer {
  const b = Buffer.allocUnsafe(20 + extra);
  b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(done ? REPLY_FLAG_DONE : 0, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(handle, 8);
  b.writeUInt32BE(length, 16);
  return b;
}

export function encodeNoneChunk(handle: bigint): Buffer {
  return chunkHeader(handle, ReplyType.NONE, true, 0);
}

/** Header and offset of an OFFSET_DATA chunk; the data follows it on the wire. */
export function encodeDataChunkHead(handle: bigint, done: boolean, offset: number, length: number): Buffer {
  const b = chunkHeader(handle, ReplyType.OFFSET_DATA, done, 8 + length, 8);
  writeU64(b, offset, 20);
  return b;
}

export function encodeHoleChunk(handle: bigint, done: boolean, offset: number, length: number): Buffer {
  const b = chunkHeader(handle, ReplyType.OFFSET_HOLE, done, 12, 12);
  writeU64(b, offset, 20);
  b.writeUInt32BE(length, 28);
  return b;
}

/** A disk offset (a safe integer) as a big-endian u64, without a BigInt. */
function writeU64(b: Buffer, n: number, at: number): void {
  b.writeUInt32BE(Math.floor(n / 2 ** 32), at);
  b.writeUInt32BE(n % 2 ** 32, at + 4);
}

export function encodeErrorChunk(handle: bigint, errno: number, message: string): Buffer {
  const msg = Buffer.from(message.slice(0, 200), 'utf8');
  const b = chunkHeader(handle, ReplyType.ERROR, true, 6 + msg.length, 6 + msg.length);
  b.writeUInt32BE(errno, 20);
  b.writeUInt16BE(msg.length, 24);
  msg.copy(b, 26);
  return b;
}

export interface StatusExtent {
  length: number;
  flags: number;
}

export function encodeBlockStatusChunk(handle: bigint, contextId: number, extents: StatusExtent[]): Buffer {
  const b = chunkHeader(handle, ReplyType.BLOCK_STATUS, true, 4 + 8 * extents.length, 4 + 8 * extents.length);
  b.writeUInt32BE(contextId, 20);
  extents.forEach((e, i) => {
    b.writeUInt32BE(e.length, 24 + 8 * i);
    b.writeUInt32BE(e.flags, 28 + 8 * i);
  });
  return b;
}
