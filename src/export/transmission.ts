// The transmission phase: requests read one at a time, checked (magic, flags, range, size) before anything is
// done, served concurrently up to a bound, and answered with structured or simple replies. Errors stay per request.
import { isRnodeError } from '../errors.js';
import type { Chosen } from './handshake.js';
import type { Piece } from './image.js';
import { ConnectionClosed, type SessionIo } from './io.js';
import {
  Cmd,
  CmdFlag,
  decodeRequest,
  encodeBlockStatusChunk,
  encodeDataChunkHead,
  encodeErrorChunk,
  encodeHoleChunk,
  encodeNoneChunk,
  encodeSimpleReply,
  Errno,
  REQUEST_HEADER,
  type Request,
} from './wire.js';

export interface TransmissionOptions {
  /** Largest READ/WRITE length (also the advertised maximum block size). */
  maxBlock: number;
  /** Requests being served at once; the next is not read until one finishes (a flood waits in the socket). */
  maxInFlight: number;
  /** Bytes of READ/WRITE requests being served at once, the memory a connection may hold. */
  maxInFlightBytes: number;
  onServed?: (bytes: number) => void;
  log?: (event: string, fields: Record<string, unknown>) => void;
}

const ZEROES = Buffer.alloc(1024 * 1024);
const KNOWN_FLAGS = CmdFlag.FUA | CmdFlag.NO_HOLE | CmdFlag.DF | CmdFlag.REQ_ONE;

/** Serves requests until NBD_CMD_DISC (resolves) or a protocol violation / lost connection (rejects). */
export async function transmit(io: SessionIo, c: Chosen, opts: TransmissionOptions): Promise<void> {
  const { image } = c;
  // Requests being served, counted: a Promise.race over them on every request left a reaction on each of up to 64
  // pending promises per request, garbage a busy copy paid for on every reply.
  let count = 0;
  let bytes = 0;
  let wake: (() => void) | undefined;
  let lost: unknown;
  const settle = () =>
    new Promise<void>((resolve) => {
      wake = resolve;
    });
  const waitForRoom = async (need: number) => {
    while (count > 0 && (count >= opts.maxInFlight || bytes + need > opts.maxInFlightBytes)) await settle();
  };
  const run = async (req: Request, payload: Buffer | undefined, length: number) => {
    try {
      await serve(io, c, req, payload, opts);
    } catch (err) {
      lost ??= err;
    } finally {
      count--;
      bytes -= length;
      const w = wake;
      wake = undefined;
      w?.();
    }
  };
  try {
    for (;;) {
      if (lost) throw lost;
      await waitForRoom(0);
      const req = decodeRequest(await io.read(REQUEST_HEADER));
      if (req.type === Cmd.DISC) break;
      const length = req.type === Cmd.READ || req.type === Cmd.WRITE ? req.length : 0;
      let payload: Buffer | undefined;
      if (req.type === Cmd.WRITE) {
        // The payload must be read to stay in step with the stream; one larger than we allow cannot be skipped safely.
        if (req.length > opts.maxBlock) throw new Error(`write of ${req.length} bytes (limit ${opts.maxBlock})`);
        await waitForRoom(length);
        payload = await io.read(req.length);
      } else {
        await waitForRoom(length);
      }
      count++;
      bytes += length;
      void run(req, payload, length);
    }
  } finally {
    while (count > 0) await settle();
  }
  if (lost) throw lost;
  if (image.flush) await image.flush();
}

async function serve(io: SessionIo, c: Chosen, req: Request, payload: Buffer | undefined, opts: TransmissionOptions): Promise<void> {
  const { image } = c;
  const fail = (errno: number, message: string) =>
    io.write([c.structured ? encodeErrorChunk(req.handle, errno, message) : encodeSimpleReply(req.handle, errno)]);
  const ok = () => io.write([c.structured ? encodeNoneChunk(req.handle) : encodeSimpleReply(req.handle, 0)]);

  if (req.flags & ~KNOWN_FLAGS) return fail(Errno.EINVAL, `unknown command flags 0x${req.flags.toString(16)}`);
  // Read-only before the range: a write past the end of a read-only export is EPERM (ENOSPC makes qemu pause the VM).
  const writes = req.type === Cmd.WRITE || req.type === Cmd.WRITE_ZEROES || req.type === Cmd.TRIM || req.type === Cmd.FLUSH;
  if (writes && !image.writable) return fail(Errno.EPERM, 'the export is read-only (start it with --writable --overlay <file>)');
  const end = req.offset + BigInt(req.length);
  if (end > BigInt(image.size)) {
    return fail(
      req.type === Cmd.WRITE || req.type === Cmd.WRITE_ZEROES ? Errno.ENOSPC : Errno.EINVAL,
      `request ${req.offset}+${req.length} is beyond the ${image.size}-byte export`,
    );
  }
  const offset = Number(req.offset);
  try {
    switch (req.type) {
      case Cmd.READ: {
        if (req.length === 0 || req.length > opts.maxBlock) return fail(Errno.EINVAL, `read of ${req.length} bytes (1..${opts.maxBlock})`);
        const pieces = await image.read(offset, req.length);
        await io.write(readReply(c, req, pieces), () => image.done?.(pieces));
        opts.onServed?.(req.length);
        return;
      }
      case Cmd.BLOCK_STATUS: {
        if (c.allocationContext === undefined) return fail(Errno.EINVAL, 'no meta context was negotiated');
        if (req.length === 0) return fail(Errno.EINVAL, 'block status of 0 bytes');
        let extents = await image.extents(offset, req.length);
        if (req.flags & CmdFlag.REQ_ONE) extents = extents.slice(0, 1);
        return io.write([encodeBlockStatusChunk(req.handle, c.allocationContext, extents)]);
      }
      case Cmd.WRITE:
        if (req.length === 0) return ok();
        await image.write!(offset, payload!);
        if (req.flags & CmdFlag.FUA) await image.flush!();
        return ok();
      case Cmd.WRITE_ZEROES:
        await image.writeZeroes!(offset, req.length);
        if (req.flags & CmdFlag.FUA) await image.flush!();
        return ok();
      case Cmd.TRIM:
        // A hint: the guest no longer needs these bytes; the overlay keeps them as they are, which the spec allows.
        return ok();
      case Cmd.FLUSH:
        await image.flush!();
        return ok();
      default:
        return fail(Errno.EINVAL, `command ${req.type} is not supported`);
    }
  } catch (err) {
    // A client that went away with requests in flight: the session ends (quietly, server.ts); no request failed.
    if (err instanceof ConnectionClosed) throw err;
    // The chunk cache has logged a failed fetch (chunk, offset, object); this says why the request failed. EIO for it only.
    opts.log?.('request-failed', {
      command: req.type,
      offset,
      length: req.length,
      code: isRnodeError(err) ? err.code : 'RNODE_INTERNAL',
      message: (err as Error)?.message ?? String(err),
    });
    // A full overlay is ENOSPC: qemu pauses the VM until space is freed, where EIO goes on to the guest's filesystem.
    const noSpace = writes && isRnodeError(err) && err.details.noSpace === true;
    return fail(noSpace ? Errno.ENOSPC : Errno.EIO, isRnodeError(err) ? `${err.code}: ${err.message}` : 'internal error');
  }
}

function readReply(c: Chosen, req: Request, pieces: Piece[]): Buffer[] {
  const zeros = (n: number) => (n <= ZEROES.length ? ZEROES.subarray(0, n) : Buffer.alloc(n));
  // Simple replies, or DF (the client wants the data in one chunk): every byte, zeros included.
  if (!c.structured || req.flags & CmdFlag.DF) {
    const body = pieces.map((p) => p.data ?? zeros(p.length));
    const head = c.structured ? encodeDataChunkHead(req.handle, true, Number(req.offset), req.length) : encodeSimpleReply(req.handle, 0);
    return [head, ...body];
  }
  const out: Buffer[] = [];
  pieces.forEach((p, i) => {
    const done = i === pieces.length - 1;
    if (p.data) out.push(encodeDataChunkHead(req.handle, done, p.offset, p.length), p.data);
    else out.push(encodeHoleChunk(req.handle, done, p.offset, p.length));
  });
  return out;
}
