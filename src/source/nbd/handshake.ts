// The fixed-newstyle handshake as a client: greeting, structured replies, meta contexts, then NBD_OPT_GO
// with a request for block sizes. Runs over any byte reader/writer, so tests can drive it without a socket.
import { ErrorCodes, RnodeError } from '../../errors.js';
import {
  cleanMessage,
  decodeInfo,
  decodeMetaContext,
  decodeOptionReplyHeader,
  encodeClientFlags,
  encodeGo,
  encodeMetaContextQuery,
  encodeOption,
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  IHAVEOPT,
  Info,
  isRepError,
  MAX_STRING,
  NBDMAGIC,
  NbdProtocolError,
  OLDSTYLE_MAGIC,
  Opt,
  OPTION_REPLY_HEADER,
  Rep,
  RepErr,
  repName,
  type BlockSizeInfo,
  type ExportInfo,
} from './protocol.js';

export interface HandshakeIo {
  /** Exactly n bytes, or a rejection when the connection ends first. */
  read(n: number): Promise<Buffer>;
  write(data: Buffer): void;
}

export interface HandshakeRequest {
  exportName: string;
  /** Meta contexts to select (exact names). */
  contexts: string[];
  /** When a selected context is missing, list what the server has under this prefix (for the message). */
  listPrefix?: string;
}

export interface Negotiated {
  size: number;
  transmissionFlags: number;
  blockSize?: BlockSizeInfo;
  structuredReplies: boolean;
  /** Selected meta contexts by name -> id. */
  contexts: Map<string, number>;
  /** Names the server listed under listPrefix, when asked (capped). */
  offered?: string[];
}

/** Option replies carry strings of at most 4 KiB plus a few fixed fields; anything larger is hostile. */
const MAX_OPTION_REPLY = 64 * 1024;
/** A single option gets at most this many replies before the server is considered broken. */
const MAX_REPLIES_PER_OPTION = 1024;
const MAX_OFFERED_NAMES = 32;

export async function negotiate(io: HandshakeIo, req: HandshakeRequest, where: string): Promise<Negotiated> {
  const greeting = await io.read(16);
  const magic = greeting.readBigUInt64BE(0);
  if (magic !== NBDMAGIC) throw new NbdProtocolError('the peer did not greet with NBDMAGIC; is this an NBD server?');
  const second = greeting.readBigUInt64BE(8);
  if (second === OLDSTYLE_MAGIC) {
    throw new RnodeError(
      ErrorCodes.BAD_SOURCE,
      `NBD server ${where} speaks the oldstyle protocol, which has no export names or block status; run a newstyle server (qemu-nbd, nbdkit)`,
    );
  }
  if (second !== IHAVEOPT) throw new NbdProtocolError(`unexpected greeting magic 0x${second.toString(16)}`);
  const serverFlags = (await io.read(2)).readUInt16BE(0);
  if (!(serverFlags & FLAG_FIXED_NEWSTYLE)) {
    throw new RnodeError(ErrorCodes.BAD_SOURCE, `NBD server ${where} does not support fixed newstyle negotiation; use a current qemu-nbd or nbdkit`);
  }
  io.write(encodeClientFlags(FLAG_C_FIXED_NEWSTYLE | (serverFlags & FLAG_NO_ZEROES ? FLAG_C_NO_ZEROES : 0)));

  const option = (opt: number, data?: Buffer) => {
    io.write(encodeOption(opt, data));
    let count = 0;
    return async (): Promise<{ type: number; data: Buffer }> => {
      if (++count > MAX_REPLIES_PER_OPTION) throw new NbdProtocolError(`more than ${MAX_REPLIES_PER_OPTION} replies to option ${opt}`);
      const h = decodeOptionReplyHeader(await io.read(OPTION_REPLY_HEADER));
      if (h.option !== opt) throw new NbdProtocolError(`reply for option ${h.option} while waiting for option ${opt}`);
      if (h.length > MAX_OPTION_REPLY) throw new NbdProtocolError(`option reply of ${h.length} bytes (limit ${MAX_OPTION_REPLY})`);
      return { type: h.type, data: h.length ? await io.read(h.length) : Buffer.alloc(0) };
    };
  };
  const refuse = (opt: string, r: { type: number; data: Buffer }) => {
    const msg = r.data.length ? `: ${cleanMessage(r.data.toString('utf8'))}` : '';
    if (r.type === RepErr.TLS_REQD) {
      return new RnodeError(
        ErrorCodes.BAD_SOURCE,
        `NBD server ${where} requires TLS, which rnode does not speak yet; export without TLS on a trusted socket or network`,
      );
    }
    if (r.type === RepErr.SHUTDOWN) {
      return new RnodeError(ErrorCodes.SOURCE_IO, `NBD server ${where} is shutting down; run again once it is back`, { retryable: true });
    }
    if (!isRepError(r.type)) return new NbdProtocolError(`unexpected ${repName(r.type)} to ${opt}`);
    return new RnodeError(ErrorCodes.SOURCE_IO, `NBD server ${where} refused ${opt} (${repName(r.type)}${msg}); check the server's options`);
  };

  // Structured replies first: block status (and sparse reads) depend on them.
  let structuredReplies = false;
  {
    const next = option(Opt.STRUCTURED_REPLY);
    const r = await next();
    if (r.type === Rep.ACK) structuredReplies = true;
    else if (r.type === RepErr.UNSUP || r.type === RepErr.POLICY || r.type === RepErr.INVALID) structuredReplies = false;
    else throw refuse('NBD_OPT_STRUCTURED_REPLY', r);
  }

  const contexts = new Map<string, number>();
  if (structuredReplies && req.contexts.length) {
    const next = option(Opt.SET_META_CONTEXT, encodeMetaContextQuery(req.exportName, req.contexts));
    for (;;) {
      const r = await next();
      if (r.type === Rep.ACK) break;
      if (r.type === Rep.META_CONTEXT) {
        const c = decodeMetaContext(r.data);
        if (!req.contexts.includes(c.name))
          throw new NbdProtocolError(`server selected meta context "${cleanMessage(c.name)}" that was not asked for`);
        if (contexts.has(c.name) || [...contexts.values()].includes(c.id))
          throw new NbdProtocolError(`server selected meta context "${c.name}" (id ${c.id}) twice`);
        contexts.set(c.name, c.id);
        continue;
      }
      if (isRepError(r.type) && r.type !== RepErr.TLS_REQD && r.type !== RepErr.SHUTDOWN) {
        contexts.clear();
        break;
      } // no metadata: fall back to full reads
      throw refuse('NBD_OPT_SET_META_CONTEXT', r);
    }
  }

  let offered: string[] | undefined;
  if (structuredReplies && req.listPrefix !== undefined && req.contexts.some((c) => !contexts.has(c))) {
    offered = [];
    const next = option(Opt.LIST_META_CONTEXT, encodeMetaContextQuery(req.exportName, [req.listPrefix]));
    for (;;) {
      const r = await next();
      if (r.type === Rep.ACK || isRepError(r.type)) break; // only for the message: an error just means "unknown"
      if (r.type === Rep.META_CONTEXT && offered.length < MAX_OFFERED_NAMES) offered.push(cleanMessage(decodeMetaContext(r.data).name, MAX_STRING));
    }
  }

  const next = option(Opt.GO, encodeGo(req.exportName, [Info.BLOCK_SIZE]));
  let exp: ExportInfo | undefined;
  let blockSize: BlockSizeInfo | undefined;
  for (;;) {
    const r = await next();
    if (r.type === Rep.INFO) {
      const info = decodeInfo(r.data);
      if ('export' in info) exp = info.export;
      else if ('blockSize' in info) blockSize = info.blockSize;
      continue;
    }
    if (r.type === Rep.ACK) break;
    if (r.type === RepErr.UNKNOWN) {
      throw new RnodeError(
        ErrorCodes.SOURCE_NOT_FOUND,
        `NBD server ${where} has no export named "${cleanMessage(req.exportName)}"; check the export name in the source URL (qemu-nbd -x NAME, default "")`,
      );
    }
    if (r.type === RepErr.UNSUP) {
      throw new RnodeError(ErrorCodes.BAD_SOURCE, `NBD server ${where} does not support NBD_OPT_GO; use qemu-nbd 2.11+ or nbdkit 1.x`);
    }
    throw refuse('NBD_OPT_GO', r);
  }
  if (!exp) throw new NbdProtocolError('NBD_OPT_GO finished without NBD_INFO_EXPORT');
  return { size: exp.size, transmissionFlags: exp.transmissionFlags, blockSize, structuredReplies, contexts, offered };
}
