// The server side of the fixed-newstyle handshake: greeting, then option haggling until NBD_OPT_GO (or
// EXPORT_NAME) picks an export. Runs over a SessionIo, so tests can drive it without a socket.
import { ErrorCodes, isRnodeError } from '../errors.js';
import type { SessionIo } from './io.js';
import type { ExportImage } from './image.js';
import {
  BASE_ALLOCATION,
  ClientProtocolError,
  decodeGoPayload,
  decodeMetaPayload,
  decodeOptionHeader,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeMetaContextReply,
  encodeOptionReply,
  encodeServerEntry,
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  Info,
  MAX_STRING,
  Opt,
  OptionInvalid,
  Rep,
  RepErr,
  TFlag,
  TFLAG_HAS_FLAGS,
  TFLAG_READ_ONLY,
} from './wire.js';

/** The exports a server offers: names to list, and the image behind a name ('' is the default export). */
export interface ExportCatalog {
  list(): Promise<string[]>;
  /** The image, or undefined for an unknown name; rejects when the export exists but cannot be opened. */
  resolve(name: string): Promise<ExportImage | undefined>;
}

export interface HandshakeOptions {
  /** 'require': every option but STARTTLS and ABORT is refused until the session is encrypted. */
  tls: 'off' | 'require';
  /** The largest request payload accepted (advertised as the maximum block size). */
  maxBlock: number;
}

export interface Chosen {
  name: string;
  image: ExportImage;
  structured: boolean;
  /** The id of base:allocation when the client selected it. */
  allocationContext?: number;
}

/** Option payloads larger than this end the session (names and queries are at most 4 KiB each). */
export const MAX_OPTION_BYTES = 64 * 1024;
/** Options per session before the client is considered hostile. */
const MAX_OPTIONS = 256;
const ALLOCATION_ID = 1;

export function transmissionFlags(image: ExportImage, structured: boolean): number {
  let f = TFLAG_HAS_FLAGS;
  if (image.writable) f |= TFlag.SEND_FLUSH | TFlag.SEND_FUA | TFlag.SEND_TRIM | TFlag.SEND_WRITE_ZEROES;
  // Read-only: every connection sees the same immutable bytes, so clients may spread reads over several.
  else f |= TFLAG_READ_ONLY | TFlag.CAN_MULTI_CONN;
  if (structured) f |= TFlag.SEND_DF;
  return f;
}

/** Negotiates an export; undefined when the client aborts. Throws ClientProtocolError when it must be dropped. */
export async function negotiate(
  io: SessionIo,
  catalog: ExportCatalog,
  opts: HandshakeOptions & { tlsAvailable: boolean },
): Promise<Chosen | undefined> {
  await io.write([encodeGreeting()]);
  const clientFlags = (await io.read(4)).readUInt32BE(0);
  if (!(clientFlags & FLAG_C_FIXED_NEWSTYLE) || clientFlags & ~(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)) {
    throw new ClientProtocolError(`client flags 0x${clientFlags.toString(16)} (fixed newstyle required, no others known)`);
  }
  const noZeroes = (clientFlags & FLAG_C_NO_ZEROES) !== 0;
  let structured = false;
  let meta: { name: string; selected: boolean } | undefined;

  for (let count = 0; ; count++) {
    if (count >= MAX_OPTIONS) throw new ClientProtocolError(`more than ${MAX_OPTIONS} options`);
    const h = decodeOptionHeader(await io.read(16));
    if (h.length > MAX_OPTION_BYTES) throw new ClientProtocolError(`option ${h.option} of ${h.length} bytes`);
    const data = await io.read(h.length);
    const reply = (type: number, payload?: Buffer) => io.write([encodeOptionReply(h.option, type, payload)]);
    const refuse = (type: number, message: string) => reply(type, Buffer.from(message.slice(0, MAX_STRING), 'utf8'));

    if (opts.tls === 'require' && !io.encrypted && h.option !== Opt.STARTTLS && h.option !== Opt.ABORT) {
      if (h.option === Opt.EXPORT_NAME) throw new ClientProtocolError('NBD_OPT_EXPORT_NAME before STARTTLS on a TLS-only server');
      await refuse(RepErr.TLS_REQD, 'this server requires TLS: use NBD_OPT_STARTTLS (nbds:// URIs, qemu tls-creds)');
      continue;
    }
    try {
      switch (h.option) {
        case Opt.ABORT:
          await reply(Rep.ACK).catch(() => undefined);
          return undefined;
        case Opt.LIST: {
          if (h.length !== 0) {
            await refuse(RepErr.INVALID, 'NBD_OPT_LIST takes no data');
            break;
          }
          for (const name of await catalog.list()) await reply(Rep.SERVER, encodeServerEntry(name));
          await reply(Rep.ACK);
          break;
        }
        case Opt.STARTTLS: {
          if (h.length !== 0) {
            await refuse(RepErr.INVALID, 'NBD_OPT_STARTTLS takes no data');
            break;
          }
          if (!opts.tlsAvailable) {
            await refuse(RepErr.POLICY, 'TLS is not configured on this export');
            break;
          }
          if (io.encrypted) {
            await refuse(RepErr.INVALID, 'the session is already encrypted');
            break;
          }
          await reply(Rep.ACK);
          await io.startTls();
          // Nothing negotiated in the clear carries over into the encrypted session.
          structured = false;
          meta = undefined;
          break;
        }
        case Opt.STRUCTURED_REPLY: {
          if (h.length !== 0) {
            await refuse(RepErr.INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data');
            break;
          }
          structured = true;
          await reply(Rep.ACK);
          break;
        }
        case Opt.LIST_META_CONTEXT:
        case Opt.SET_META_CONTEXT: {
          const set = h.option === Opt.SET_META_CONTEXT;
          if (!structured) {
            await refuse(RepErr.INVALID, 'negotiate NBD_OPT_STRUCTURED_REPLY first');
            break;
          }
          const q = decodeMetaPayload(data);
          if (!(await openOrRefuse(catalog, q.name, refuse))) break;
          const wanted = q.queries.length === 0 && !set ? true : q.queries.some((s) => s === BASE_ALLOCATION || (!set && s === 'base:'));
          if (wanted) await reply(Rep.META_CONTEXT, encodeMetaContextReply(ALLOCATION_ID, BASE_ALLOCATION));
          if (set) meta = { name: q.name, selected: wanted };
          await reply(Rep.ACK);
          break;
        }
        case Opt.INFO:
        case Opt.GO: {
          const g = decodeGoPayload(data);
          const image = await openOrRefuse(catalog, g.name, refuse);
          if (!image) break;
          await reply(Rep.INFO, encodeInfoExport(image.size, transmissionFlags(image, structured)));
          for (const info of new Set(g.infos)) {
            if (info === Info.BLOCK_SIZE) await reply(Rep.INFO, encodeInfoBlockSize(1, 4096, opts.maxBlock));
            else if (info === Info.NAME) await reply(Rep.INFO, encodeInfoString(Info.NAME, g.name));
            else if (info === Info.DESCRIPTION) await reply(Rep.INFO, encodeInfoString(Info.DESCRIPTION, `point ${image.point}`));
          }
          await reply(Rep.ACK);
          if (h.option === Opt.GO) return chosen(g.name, image, structured, meta);
          break;
        }
        case Opt.EXPORT_NAME: {
          if (h.length > MAX_STRING) throw new ClientProtocolError(`export name of ${h.length} bytes`);
          const name = data.toString('utf8');
          // This option has no error reply: the spec's answer to an unknown name is to close, saying why in the log.
          const image = await catalog.resolve(name).catch((err: Error) => {
            throw new ClientProtocolError(`NBD_OPT_EXPORT_NAME for export "${printable(name)}", which cannot be opened: ${err.message}`);
          });
          if (!image) throw new ClientProtocolError(`NBD_OPT_EXPORT_NAME for unknown export "${printable(name)}"`);
          await io.write([encodeExportNameReply(image.size, transmissionFlags(image, structured), noZeroes)]);
          return chosen(name, image, structured, meta);
        }
        default:
          await refuse(RepErr.UNSUP, `option ${h.option} is not supported`);
      }
    } catch (err) {
      if (!(err instanceof OptionInvalid)) throw err;
      await refuse(RepErr.INVALID, err.message);
    }
  }
}

async function openOrRefuse(
  catalog: ExportCatalog,
  name: string,
  refuse: (type: number, message: string) => Promise<void>,
): Promise<ExportImage | undefined> {
  let image: ExportImage | undefined;
  try {
    image = await catalog.resolve(name);
  } catch (err) {
    // One the server will not serve as configured (a point of another chunk size): policy, not an unknown name.
    const type = isRnodeError(err, ErrorCodes.USAGE) ? RepErr.POLICY : RepErr.UNKNOWN;
    await refuse(type, `export "${printable(name)}" cannot be opened: ${(err as Error).message}`);
    return undefined;
  }
  if (!image) await refuse(RepErr.UNKNOWN, `no export named "${printable(name)}"`);
  return image;
}

function chosen(name: string, image: ExportImage, structured: boolean, meta: { name: string; selected: boolean } | undefined): Chosen {
  // Contexts selected for another export name do not apply to this one.
  const selected = structured && meta?.selected === true && meta.name === name;
  return { name, image, structured, ...(selected ? { allocationContext: ALLOCATION_ID } : {}) };
}

function printable(s: string): string {
  // eslint-disable-next-line no-control-regex
  return s.replace(/[\u0000-\u001f\u007f]/g, '?').slice(0, 200);
}
