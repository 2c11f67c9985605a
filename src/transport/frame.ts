// Wire frames of the peer protocol, pure encode/decode with no I/O (docs/wire-protocol.md). One WebSocket
// binary message carries exactly one frame: a fixed 40-byte header, a JSON meta block, then the payload.
//
//   off size field
//    0   4   magic "RNWF" (u32 LE 0x46574e52)
//    4   1   protocol version (PROTOCOL_VERSION)
//    5   1   frame type (FrameType)
//    6   2   flags (FrameFlag), u16 LE
//    8   4   stream id, u32 LE (0: the connection itself)
//   12   4   sequence: frames sent so far on this connection by this side, u32 LE
//   16   8   disk offset of a chunk frame, u64 LE (NO_OFFSET otherwise)
//   24   4   meta length, u32 LE (UTF-8 JSON object)
//   28   4   payload length, u32 LE
//   32   8   xxh64 of the chunk plaintext (chunk frames; 0 otherwise), u64 LE
import { protocolError, transportError, TransportErrorCodes } from './errors.js';

export const FRAME_MAGIC = 0x46574e52; // "RNWF" read as u32 LE
export const PROTOCOL_VERSION = 1;
export const FRAME_HEADER_BYTES = 40;
/** Largest meta block: keys, ranges, list pages. */
export const MAX_META_BYTES = 1024 * 1024;
/** Largest object payload: a 16 MiB chunk at its LZ4 worst case, with room to spare. */
export const MAX_PAYLOAD_BYTES = 16 * 1024 * 1024 + 128 * 1024;
export const MAX_FRAME_BYTES = FRAME_HEADER_BYTES + MAX_META_BYTES + MAX_PAYLOAD_BYTES;
/**
 * Largest object one PUT may carry: a 64 MiB pack (the largest pack size) with its trailer. Objects above
 * PART_BYTES travel as several PUT frames of one stream (parts); the node assembles them within the session's
 * byte credit, so a WebSocket message never exceeds MAX_FRAME_BYTES, before or after the hello.
 */
export const MAX_OBJECT_BYTES = 72 * 1024 * 1024;
/** Payload of one part of a parted PUT. */
export const PART_BYTES = 8 * 1024 * 1024;
const NO_OFFSET_BIG = 0xffff_ffff_ffff_ffffn;

export const FrameType = {
  /** A typed control message; all of it is in the meta block, no payload. */
  CONTROL: 1,
  /** Client → node: store the payload under meta.key. */
  PUT: 2,
  /** Node → client: the bytes of a get (meta: size, etag). */
  DATA: 3,
} as const;
export type FrameTypeId = (typeof FrameType)[keyof typeof FrameType];

export const FrameFlag = {
  /** Chunk payload: the chunk is all zeros (reserved: zero chunks are never stored today). */
  ZERO: 1,
  /** Chunk payload is compressed (codec != none). */
  COMPRESSED: 2,
  /** Chunk payload is encrypted. */
  ENCRYPTED: 4,
  /** PUT: fail with STORE_PRECONDITION when the key exists. */
  IF_NONE_MATCH: 8,
  /** PUT: the payload is a chunk object (the receiver checks it as one). */
  CHUNK: 16,
} as const;
const KNOWN_FLAGS = 31;

export interface Frame {
  version: number;
  type: FrameTypeId;
  flags: number;
  stream: number;
  seq: number;
  /** Disk offset of the chunk a PUT carries; null when not a chunk frame. */
  diskOffset: number | null;
  plainXxh64: bigint;
  /** Parsed meta block (always an object). */
  meta: Record<string, unknown>;
  payload: Buffer;
}

export type FrameInit = Omit<Frame, 'version' | 'payload' | 'plainXxh64' | 'diskOffset' | 'flags'> & {
  flags?: number;
  diskOffset?: number | null;
  plainXxh64?: bigint;
  payload?: Uint8Array;
};

/** Builds one frame as a single buffer (header + meta + payload copied in). */
export function encodeFrame(f: FrameInit): Buffer {
  const payload = f.payload ?? new Uint8Array(0);
  const head = encodeFrameHead(f, payload.length);
  if (payload.length === 0) return head;
  const b = Buffer.allocUnsafe(head.length + payload.length);
  head.copy(b, 0);
  b.set(payload, head.length);
  return b;
}

/**
 * Header and meta of a frame whose payloadLength bytes follow separately (sent as the next WebSocket fragment
 * of the same message, so a chunk is never copied into a frame buffer).
 */
export function encodeFrameHead(f: Omit<FrameInit, 'payload'>, payloadLength: number): Buffer {
  const meta = Buffer.from(JSON.stringify(f.meta), 'utf8');
  if (meta.length > MAX_META_BYTES)
    throw transportError(TransportErrorCodes.PROTOCOL, `frame meta of ${meta.length} bytes exceeds ${MAX_META_BYTES}`);
  if (payloadLength > MAX_PAYLOAD_BYTES)
    throw transportError(TransportErrorCodes.PROTOCOL, `frame payload of ${payloadLength} bytes exceeds ${MAX_PAYLOAD_BYTES}`);
  const b = Buffer.allocUnsafe(FRAME_HEADER_BYTES + meta.length);
  b.writeUInt32LE(FRAME_MAGIC, 0);
  b.writeUInt8(PROTOCOL_VERSION, 4);
  b.writeUInt8(f.type, 5);
  b.writeUInt16LE(f.flags ?? 0, 6);
  b.writeUInt32LE(f.stream >>> 0, 8);
  b.writeUInt32LE(f.seq >>> 0, 12);
  b.writeBigUInt64LE(f.diskOffset === null || f.diskOffset === undefined ? NO_OFFSET_BIG : BigInt(f.diskOffset), 16);
  b.writeUInt32LE(meta.length, 24);
  b.writeUInt32LE(payloadLength, 28);
  b.writeBigUInt64LE(f.plainXxh64 ?? 0n, 32);
  meta.copy(b, FRAME_HEADER_BYTES);
  return b;
}

/** The version byte of a message, if it is long enough and has the magic (to answer a wrong version clearly). */
export function peekVersion(b: Uint8Array): number | undefined {
  if (b.length < 5) return undefined;
  const buf = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  return buf.readUInt32LE(0) === FRAME_MAGIC ? buf.readUInt8(4) : undefined;
}

/**
 * Parses one message into a frame. Pure and total: any input gives a Frame or throws an RnodeError
 * (RNODE_TRANSPORT_PROTOCOL, or RNODE_TRANSPORT_VERSION for another protocol version); it never reads
 * past the input and never allocates more than the input's size.
 */
export function decodeFrame(input: Uint8Array, maxFrameBytes = MAX_FRAME_BYTES): Frame {
  const b = Buffer.isBuffer(input) ? input : Buffer.from(input.buffer, input.byteOffset, input.byteLength);
  const { head, headBytes } = decodeHead(b, b.length, maxFrameBytes);
  return { ...head, payload: b.subarray(headBytes) };
}

/** A frame whose payload is still in the pieces it arrived in. */
export interface FrameInPieces {
  frame: Omit<Frame, 'payload'>;
  /** The payload's pieces in order (no empty ones): views of the received fragments, not copies. */
  payload: Buffer[];
  payloadLength: number;
  /** Bytes of the whole message (header, meta and payload). */
  size: number;
}

/**
 * Parses one message received as WebSocket fragments (ws binaryType 'fragments'), the same checks as decodeFrame:
 * a large payload is left in the pieces it arrived in, so the receiver copies it once, to where it is kept. When
 * the first fragment does not hold the whole header and meta (a peer may split a message anywhere) the fragments
 * are joined first; maxFrameBytes is checked before that.
 */
export function decodeFragments(fragments: readonly Buffer[], maxFrameBytes = MAX_FRAME_BYTES): FrameInPieces {
  let total = 0;
  for (const f of fragments) total += f.length;
  if (total > maxFrameBytes) throw protocolError(`frame of ${total} bytes exceeds the limit of ${maxFrameBytes}`);
  const first = fragments[0] ?? Buffer.alloc(0);
  if (fragments.length <= 1 || first.length < FRAME_HEADER_BYTES || first.length < FRAME_HEADER_BYTES + first.readUInt32LE(24)) {
    const f = decodeFrame(fragments.length === 1 ? first : Buffer.concat(fragments, total), maxFrameBytes);
    const { payload, ...frame } = f;
    return { frame, payload: payload.length > 0 ? [payload] : [], payloadLength: payload.length, size: total };
  }
  const { head, headBytes, payloadLength } = decodeHead(first, total, maxFrameBytes);
  const payload = [first.subarray(headBytes), ...fragments.slice(1)].filter((p) => p.length > 0);
  return { frame: head, payload, payloadLength, size: total };
}

/**
 * Header and meta at the start of b, for a frame of totalLength bytes (b may hold only its start): every length is
 * checked against the limits and against totalLength before anything is read or allocated.
 */
function decodeHead(
  b: Buffer,
  totalLength: number,
  maxFrameBytes: number,
): { head: Omit<Frame, 'payload'>; headBytes: number; payloadLength: number } {
  if (totalLength > maxFrameBytes) throw protocolError(`frame of ${totalLength} bytes exceeds the limit of ${maxFrameBytes}`);
  if (b.length < FRAME_HEADER_BYTES) throw protocolError(`frame of ${b.length} bytes is shorter than its ${FRAME_HEADER_BYTES}-byte header`);
  if (b.readUInt32LE(0) !== FRAME_MAGIC) throw protocolError('bad magic (not an rnode peer frame)');
  const version = b.readUInt8(4);
  if (version !== PROTOCOL_VERSION) {
    throw transportError(
      TransportErrorCodes.VERSION,
      `peer speaks wire protocol version ${version}, this node speaks version ${PROTOCOL_VERSION}; run the same rnode release on both nodes`,
      { details: { peerVersion: version, version: PROTOCOL_VERSION } },
    );
  }
  const type = b.readUInt8(5);
  if (type !== FrameType.CONTROL && type !== FrameType.PUT && type !== FrameType.DATA) throw protocolError(`unknown frame type ${type}`);
  const flags = b.readUInt16LE(6);
  if ((flags & ~KNOWN_FLAGS) !== 0) throw protocolError(`unknown flags 0x${flags.toString(16)}`);
  const stream = b.readUInt32LE(8);
  const seq = b.readUInt32LE(12);
  const off = b.readBigUInt64LE(16);
  let diskOffset: number | null = null;
  if (off !== NO_OFFSET_BIG) {
    if (off > BigInt(Number.MAX_SAFE_INTEGER)) throw protocolError('disk offset out of range');
    diskOffset = Number(off);
  }
  const metaLength = b.readUInt32LE(24);
  const payloadLength = b.readUInt32LE(28);
  if (metaLength > MAX_META_BYTES) throw protocolError(`meta length ${metaLength} exceeds ${MAX_META_BYTES}`);
  if (payloadLength > MAX_PAYLOAD_BYTES) throw protocolError(`payload length ${payloadLength} exceeds ${MAX_PAYLOAD_BYTES}`);
  if (FRAME_HEADER_BYTES + metaLength + payloadLength !== totalLength) {
    throw protocolError(`frame is ${totalLength} bytes but its header says ${FRAME_HEADER_BYTES + metaLength + payloadLength}`);
  }
  if (type === FrameType.CONTROL && payloadLength !== 0) throw protocolError('control frame with a payload');
  const plainXxh64 = b.readBigUInt64LE(32);
  let meta: unknown;
  try {
    meta = JSON.parse(b.toString('utf8', FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + metaLength));
  } catch {
    throw protocolError('meta block is not valid JSON');
  }
  if (meta === null || typeof meta !== 'object' || Array.isArray(meta)) throw protocolError('meta block is not a JSON object');
  return {
    head: { version, type: type as FrameTypeId, flags, stream, seq, diskOffset, plainXxh64, meta: meta as Record<string, unknown> },
    headBytes: FRAME_HEADER_BYTES + metaLength,
    payloadLength,
  };
}
