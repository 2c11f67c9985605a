// NBD wire format: the numbers of the fixed-newstyle handshake and the transmission phase, and pure
// encoders/decoders for them. Nothing here touches a socket; see handshake.ts and connection.ts for that.

// Magic numbers (network byte order on the wire).
export const NBDMAGIC = 0x4e42444d41474943n; // "NBDMAGIC"
export const IHAVEOPT = 0x49484156454f5054n; // "IHAVEOPT": newstyle greeting and every option request
export const OLDSTYLE_MAGIC = 0x00420281861253n;
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// Handshake flags (server) and client flags.
export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;
export const FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_C_NO_ZEROES = 1 << 1;

// Transmission flags (the ones this read-only client looks at).
export const TFLAG_HAS_FLAGS = 1 << 0;
export const TFLAG_READ_ONLY = 1 << 1;

export const Opt = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
} as const;

export const Rep = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
} as const;

const REP_ERR_BIT = 0x80000000;
export const RepErr = {
  UNSUP: REP_ERR_BIT + 1,
  POLICY: REP_ERR_BIT + 2,
  INVALID: REP_ERR_BIT + 3,
  PLATFORM: REP_ERR_BIT + 4,
  TLS_REQD: REP_ERR_BIT + 5,
  UNKNOWN: REP_ERR_BIT + 6,
  SHUTDOWN: REP_ERR_BIT + 7,
  BLOCK_SIZE_REQD: REP_ERR_BIT + 8,
  TOO_BIG: REP_ERR_BIT + 9,
} as const;

export function isRepError(type: number): boolean {
  return type >= REP_ERR_BIT;
}

export const Info = {
  EXPORT: 0,
  NAME: 1,
  DESCRIPTION: 2,
  BLOCK_SIZE: 3,
} as const;

export const Cmd = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
} as const;

export const CmdFlag = {
  FUA: 1 << 0,
  NO_HOLE: 1 << 1,
  DF: 1 << 2,
  REQ_ONE: 1 << 3,
} as const;

export const REPLY_FLAG_DONE = 1 << 0;

export const ReplyType = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  ERROR: 0x8000 + 1,
  ERROR_OFFSET: 0x8000 + 2,
} as const;

export function isReplyError(type: number): boolean {
  return (type & 0x8000) !== 0;
}

// base:allocation flags; qemu:dirty-bitmap:<name> uses bit 0 for "dirty".
export const STATE_HOLE = 1 << 0;
export const STATE_ZERO = 1 << 1;
export const STATE_DIRTY = 1 << 0;

export const BASE_ALLOCATION = 'base:allocation';
export const DIRTY_BITMAP_PREFIX = 'qemu:dirty-bitmap:';

/** Strings (export names, context names, messages) must not exceed this (proto.md "Conventions"). */
export const MAX_STRING = 4096;

// Header sizes.
export const OPTION_REPLY_HEADER = 20;
export const REQUEST_HEADER = 28;
export const SIMPLE_REPLY_HEADER = 16;
export const STRUCTURED_REPLY_HEADER = 20;

/** errno values servers put in error replies, for messages. */
const ERRNO_NAMES: Record<number, string> = {
  1: 'EPERM',
  5: 'EIO',
  12: 'ENOMEM',
  22: 'EINVAL',
  28: 'ENOSPC',
  75: 'EOVERFLOW',
  95: 'ENOTSUP',
  108: 'ESHUTDOWN',
};

export function errnoName(code: number): string {
  return ERRNO_NAMES[code] ?? `error ${code}`;
}

const REP_NAMES: Record<number, string> = {
  [RepErr.UNSUP]: 'NBD_REP_ERR_UNSUP',
  [RepErr.POLICY]: 'NBD_REP_ERR_POLICY',
  [RepErr.INVALID]: 'NBD_REP_ERR_INVALID',
  [RepErr.PLATFORM]: 'NBD_REP_ERR_PLATFORM',
  [RepErr.TLS_REQD]: 'NBD_REP_ERR_TLS_REQD',
  [RepErr.UNKNOWN]: 'NBD_REP_ERR_UNKNOWN',
  [RepErr.SHUTDOWN]: 'NBD_REP_ERR_SHUTDOWN',
  [RepErr.BLOCK_SIZE_REQD]: 'NBD_REP_ERR_BLOCK_SIZE_REQD',
  [RepErr.TOO_BIG]: 'NBD_REP_ERR_TOO_BIG',
};

export function repName(type: number): string {
  return REP_NAMES[type] ?? `reply type 0x${type.toString(16)}`;
}

/** The peer broke the protocol; the connection cannot be trusted any more and is dropped. */
export class NbdProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'NbdProtocolError';
  }
}

/** An export larger than 2^53 - 1 bytes: the server is right, the disk is beyond what rnode addresses. */
export class NbdExportTooLarge extends NbdProtocolError {
  constructor(readonly size: bigint) {
    super(`export size ${size} is beyond what this client can address`);
    this.name = 'NbdExportTooLarge';
  }
}

// ---- client -> server ----

export function encodeClientFlags(flags: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(flags >>> 0);
  return b;
}

export function encodeOption(option: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(16 + data.length);
  b.writeBigUInt64BE(IHAVEOPT, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(data.length, 12);
  data.copy(b, 16);
  return b;
}

function lengthPrefixed(s: string): Buffer {
  const bytes = Buffer.from(s, 'utf8');
  const b = Buffer.alloc(4 + bytes.length);
  b.writeUInt32BE(bytes.length, 0);
  bytes.copy(b, 4);
  return b;
}

/** NBD_OPT_SET_META_CONTEXT / NBD_OPT_LIST_META_CONTEXT data: export name, then the queries. */
export function encodeMetaContextQuery(exportName: string, queries: string[]): Buffer {
  const count = Buffer.alloc(4);
  count.writeUInt32BE(queries.length);
  return Buffer.concat([lengthPrefixed(exportName), count, ...queries.map(lengthPrefixed)]);
}

/** NBD_OPT_GO data: export name, then the NBD_INFO_* items asked for. */
export function encodeGo(exportName: string, infos: number[]): Buffer {
  const tail = Buffer.alloc(2 + 2 * infos.length);
  tail.writeUInt16BE(infos.length, 0);
  infos.forEach((info, i) => tail.writeUInt16BE(info, 2 + 2 * i));
  return Buffer.concat([lengthPrefixed(exportName), tail]);
}

export function encodeRequest(type: number, flags: number, handle: bigint, offset: number, length: number): Buffer {
  const b = Buffer.alloc(REQUEST_HEADER);
  b.writeUInt32BE(REQUEST_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(handle, 8);
  b.writeBigUInt64BE(BigInt(offset), 16);
  b.writeUInt32BE(length, 24);
  return b;
}

// ---- server -> client (handshake) ----

export interface OptionReplyHeader {
  option: number;
  type: number;
  length: number;
}

export function decodeOptionReplyHeader(b: Buffer): OptionReplyHeader {
  const magic = b.readBigUInt64BE(0);
  if (magic !== OPTION_REPLY_MAGIC) throw new NbdProtocolError(`bad option reply magic 0x${magic.toString(16)}`);
  return { option: b.readUInt32BE(8), type: b.readUInt32BE(12), length: b.readUInt32BE(16) };
}

export interface ExportInfo {
  size: number;
  transmissionFlags: number;
}

export interface BlockSizeInfo {
  minimum: number;
  preferred: number;
  maximum: number;
}

export type InfoReply =
  { type: typeof Info.EXPORT; export: ExportInfo } | { type: typeof Info.BLOCK_SIZE; blockSize: BlockSizeInfo } | { type: number };

const isPowerOfTwo = (n: number) => n > 0 && (n & (n - 1)) === 0;

/** Decodes an NBD_REP_INFO payload; checks the sizes a client relies on. Unknown info types are returned bare. */
export function decodeInfo(data: Buffer): InfoReply {
  if (data.length < 2) throw new NbdProtocolError(`NBD_REP_INFO of ${data.length} bytes is too short`);
  const type = data.readUInt16BE(0);
  if (type === Info.EXPORT) {
    if (data.length !== 12) throw new NbdProtocolError(`NBD_INFO_EXPORT of ${data.length} bytes (expected 12)`);
    const size = data.readBigUInt64BE(2);
    if (size > BigInt(Number.MAX_SAFE_INTEGER)) throw new NbdExportTooLarge(size);
    return { type, export: { size: Number(size), transmissionFlags: data.readUInt16BE(10) } };
  }
  if (type === Info.BLOCK_SIZE) {
    if (data.length !== 14) throw new NbdProtocolError(`NBD_INFO_BLOCK_SIZE of ${data.length} bytes (expected 14)`);
    const minimum = data.readUInt32BE(2);
    const preferred = data.readUInt32BE(6);
    const maximum = data.readUInt32BE(10);
    // proto.md: minimum a power of two up to 64 KiB; preferred a power of two >= minimum; maximum a multiple of
    // minimum (or 0xffffffff for "no limit") and at least the preferred size.
    if (!isPowerOfTwo(minimum) || minimum > 65536) throw new NbdProtocolError(`minimum block size ${minimum} is not a power of two up to 64 KiB`);
    if (!isPowerOfTwo(preferred) || preferred < minimum)
      throw new NbdProtocolError(`preferred block size ${preferred} is not a power of two >= the minimum ${minimum}`);
    if (maximum !== 0xffffffff && (maximum < minimum || maximum % minimum !== 0)) {
      throw new NbdProtocolError(`maximum block size ${maximum} is not a multiple of the minimum ${minimum}`);
    }
    return { type, blockSize: { minimum, preferred, maximum } };
  }
  return { type };
}

export function decodeMetaContext(data: Buffer): { id: number; name: string } {
  if (data.length < 4) throw new NbdProtocolError(`NBD_REP_META_CONTEXT of ${data.length} bytes is too short`);
  if (data.length - 4 > MAX_STRING) throw new NbdProtocolError(`meta context name of ${data.length - 4} bytes is too long`);
  return { id: data.readUInt32BE(0), name: data.subarray(4).toString('utf8') };
}

// ---- server -> client (transmission) ----

export interface ChunkHeader {
  flags: number;
  type: number;
  handle: bigint;
  length: number;
}

export interface ErrorPayload {
  errno: number;
  message: string;
  offset?: number;
}

/** Decodes the payload of an error chunk (any type with bit 15 set). */
export function decodeErrorPayload(type: number, p: Buffer): ErrorPayload {
  if (p.length < 6) throw new NbdProtocolError(`error chunk of ${p.length} bytes is too short`);
  const errno = p.readUInt32BE(0);
  const msgLen = p.readUInt16BE(4);
  if (6 + msgLen > p.length) throw new NbdProtocolError(`error chunk message of ${msgLen} bytes does not fit its ${p.length}-byte payload`);
  const message = p.subarray(6, 6 + msgLen).toString('utf8');
  if (type === ReplyType.ERROR_OFFSET) {
    if (p.length !== 6 + msgLen + 8) throw new NbdProtocolError(`NBD_REPLY_TYPE_ERROR_OFFSET of ${p.length} bytes does not match its message`);
    const offset = p.readBigUInt64BE(6 + msgLen);
    return { errno, message, offset: offset > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(offset) };
  }
  return { errno, message };
}

/** Strips control characters and caps a server-provided message before it goes into an error or a log. */
export function cleanMessage(s: string, max = 200): string {
  // eslint-disable-next-line no-control-regex
  const t = s
    .replace(/[\u0000-\u001f\u007f]+/g, ' ')
    .replace(/ {2,}/g, ' ')
    .trim();
  return t.length > max ? `${t.slice(0, max)}...` : t;
}
