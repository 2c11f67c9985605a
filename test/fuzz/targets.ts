// One fuzz target per parser that reads bytes from outside: each takes arbitrary input and checks the parser's
// contract (a valid result, round-tripping where that means something, or the module's typed error; never a
// TypeError/RangeError, a hang or a crash). test/fuzz/fuzz.test.ts and test/fuzz/run.ts drive them.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { agentMessages, checkOutgoing, decode, serverMessages } from '../../src/agent/protocol.js';
import { RnodeError } from '../../src/errors.js';
import { decodeChunkHeader, encodeChunkHeader } from '../../src/format/chunk.js';
import { decodeManifest, encodeManifest } from '../../src/format/manifest.js';
import { decodeSegment, encodeSegment } from '../../src/format/table.js';
import { negotiate, nbdProtocol as P, ReplyParser, type ReplySink } from '../../src/source/nbd/index.js';
import { MemoryStore } from '../../src/store/memory/memory-store.js';
import { decodeFrame, encodeFrame, FrameFlag } from '../../src/transport/frame.js';
import { ObjectValidator } from '../../src/serve/index.js';
import { parseXml, XmlError, type XmlElement } from '../../src/source/vmware/vsphere/xml.js';
import { EncryptionKey } from '../../src/crypto/keys.js';
import { Domain } from '../../src/repository/domain.js';
import { EnvelopeKind, envelopeContext, openEnvelope, sealEnvelope, type EnvelopeKindId } from '../../src/repository/envelope.js';
import { decodeIndex, encodeIndex } from '../../src/repository/index-file.js';
import { decodePack, encodeTrailerBody, PACK_TAIL_BYTES } from '../../src/repository/pack.js';
import { decodeTableV3, encodeTableV3 } from '../../src/repository/point-format.js';

export const CORPUS = fileURLToPath(new URL('./corpus/', import.meta.url));

export interface FuzzTarget {
  name: string;
  /** Throws FuzzFinding (or anything unexpected) when the contract is broken. */
  run(input: Buffer): void | Promise<void>;
}

/** A broken contract: what the parser did with which input. */
export class FuzzFinding extends Error {
  constructor(
    message: string,
    override readonly cause?: unknown,
  ) {
    super(message);
    this.name = 'FuzzFinding';
  }
}

/** The seed files of a target (test/fuzz/corpus/<name>/*): valid encodings the mutations start from. */
export function seeds(name: string): Buffer[] {
  const dir = path.join(CORPUS, name);
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir)
    .sort()
    .map((f) => fs.readFileSync(path.join(dir, f)));
}

/** Runs fn; an error is fine only if it is one of the allowed classes (and an RnodeError has a stable code). */
function contract<T>(fn: () => T, allowed: Array<new (...a: any[]) => Error> = []): T | undefined {
  try {
    return fn();
  } catch (err) {
    checkRefusal(err, allowed);
    return undefined;
  }
}

async function contractAsync<T>(fn: () => Promise<T>, allowed: Array<new (...a: any[]) => Error> = []): Promise<T | undefined> {
  try {
    return await fn();
  } catch (err) {
    checkRefusal(err, allowed);
    return undefined;
  }
}

function checkRefusal(err: unknown, allowed: Array<new (...a: any[]) => Error>): void {
  if (err instanceof RnodeError && /^RNODE_[A-Z_]+$/.test(err.code)) {
    // A refusal that wraps a programming error (a TypeError caught and re-coded) hides a crash.
    const cause = (err as Error & { cause?: unknown }).cause;
    if (cause instanceof TypeError || cause instanceof RangeError)
      throw new FuzzFinding(`${err.code} wraps a ${cause.name}: ${cause.message}`, cause);
    return;
  }
  if (allowed.some((c) => err instanceof c)) return;
  const e = err as Error;
  throw new FuzzFinding(`threw ${e?.name ?? typeof err}: ${e?.message ?? String(err)}`, err);
}

function same(a: unknown, b: unknown, what: string): void {
  const sa = JSON.stringify(a, bigints);
  const sb = JSON.stringify(b, bigints);
  if (sa !== sb) throw new FuzzFinding(`${what} does not round-trip:\n  ${sa.slice(0, 300)}\n  ${sb.slice(0, 300)}`);
}
const bigints = (_k: string, v: unknown) => (typeof v === 'bigint' ? `${v}n` : Buffer.isBuffer(v) ? v.toString('hex') : v);

const frame: FuzzTarget = {
  name: 'frame',
  run(input) {
    const f = contract(() => decodeFrame(input));
    if (!f) return;
    // Meta is re-serialised, so compare frames, not bytes.
    const again = decodeFrame(
      encodeFrame({
        type: f.type,
        stream: f.stream,
        seq: f.seq,
        meta: f.meta,
        payload: f.payload,
        flags: f.flags,
        diskOffset: f.diskOffset ?? undefined,
        plainXxh64: f.plainXxh64,
      }),
    );
    same({ ...again, payload: again.payload.toString('hex') }, { ...f, payload: f.payload.toString('hex') }, 'frame');
  },
};

const chunkHeader: FuzzTarget = {
  name: 'chunk-header',
  run(input) {
    const h = contract(() => decodeChunkHeader(input));
    if (!h) return;
    const { version: _v, ...rest } = h;
    const bytes = encodeChunkHeader(rest);
    // Byte 7 is the header length, the only byte encode recomputes; the rest must be the input's.
    if (!bytes.equals(input.subarray(0, bytes.length))) throw new FuzzFinding('chunk header does not round-trip byte for byte');
  },
};

const table: FuzzTarget = {
  name: 'table',
  run(input) {
    const entries = contract(() => decodeSegment(input, 'fuzz'));
    if (!entries) return;
    if (!encodeSegment(entries).equals(input)) throw new FuzzFinding('table segment does not round-trip byte for byte');
  },
};

const manifest: FuzzTarget = {
  name: 'manifest',
  run(input) {
    const m = contract(() => decodeManifest(input, 'fuzz'));
    if (!m) return;
    same(decodeManifest(encodeManifest(m), 'fuzz'), m, 'manifest');
  },
};

const validator = new ObjectValidator(new MemoryStore(), 2);
/** The receiving node's check of a PUT: key from the first line of the input, object bytes after it. */
const validate: FuzzTarget = {
  name: 'validate',
  async run(input) {
    const nl = input.indexOf(10);
    const key = input.subarray(0, nl < 0 ? Math.min(input.length, 80) : nl).toString('latin1');
    const data = nl < 0 ? Buffer.alloc(0) : input.subarray(nl + 1);
    const flags = FrameFlag.CHUNK | FrameFlag.IF_NONE_MATCH;
    const plainXxh64 = data.length >= 24 ? data.readBigUInt64LE(16) : 0n;
    await contractAsync(() => validator.checkPut({ key, data, flags, diskOffset: null, plainXxh64 }));
    contract(() => validator.checkDelete(key));
  },
};

// Repository v2 decoders. Unsealed objects are deterministic, so what decodes must re-encode byte for byte; the
// sealed variants (a fixed key) must refuse every mutation (METADATA_FORGED) without throwing anything else.
export const FUZZ_OBJECT_ID = '00112233445566778899aabbccddeeff';
export const FUZZ_PLACE = { disk: 'd0', point: 2, parent: 1, generation: 0, segment: 0 };
export const FUZZ_KEY = EncryptionKey.fromBytes(Buffer.alloc(32, 0x5a));
const plainDomain = Domain.of(undefined);
const sealedDomain = Domain.of(FUZZ_KEY);
/** The context each v2 target opens its input under (props.ts fixes checksums up with the same). */
export const FUZZ_CONTEXTS = {
  envelope: envelopeContext.manifest('plain', 'd0', 2),
  pack: envelopeContext.pack('plain', FUZZ_OBJECT_ID),
  index: envelopeContext.index('plain', FUZZ_OBJECT_ID),
  'table-v3': envelopeContext.table('plain', FUZZ_PLACE.disk, FUZZ_PLACE.point, FUZZ_PLACE.parent, FUZZ_PLACE.generation, FUZZ_PLACE.segment),
};

const envelope: FuzzTarget = {
  name: 'envelope',
  run(input) {
    for (const kind of Object.values(EnvelopeKind) as EnvelopeKindId[]) {
      const body = contract(() => openEnvelope(input, kind, FUZZ_CONTEXTS.envelope, 'fuzz'));
      if (body && !sealEnvelope(kind, FUZZ_CONTEXTS.envelope, body).equals(input))
        throw new FuzzFinding('envelope does not round-trip byte for byte');
      contract(() => openEnvelope(input, kind, FUZZ_CONTEXTS.envelope, 'fuzz', FUZZ_KEY));
    }
  },
};

const pack: FuzzTarget = {
  name: 'pack',
  run(input) {
    const entries = contract(() => decodePack(input, 'plain', FUZZ_OBJECT_ID));
    if (entries) {
      const trailerLength = input.readUInt32LE(input.length - PACK_TAIL_BYTES);
      const trailerStart = input.length - PACK_TAIL_BYTES - trailerLength;
      for (const e of entries) if (e.offset + e.length > trailerStart) throw new FuzzFinding('an accepted entry reaches into the trailer');
      const body = openEnvelope(input.subarray(trailerStart, trailerStart + trailerLength), EnvelopeKind.PACK_TRAILER, FUZZ_CONTEXTS.pack, 'fuzz');
      if (!encodeTrailerBody(entries).equals(body)) throw new FuzzFinding('pack trailer does not round-trip byte for byte');
    }
    contract(() => decodePack(input, sealedDomain.name, FUZZ_OBJECT_ID, FUZZ_KEY));
  },
};

const index: FuzzTarget = {
  name: 'index',
  run(input) {
    const locations = contract(() => decodeIndex(input, plainDomain, FUZZ_OBJECT_ID));
    if (locations && !encodeIndex(plainDomain, FUZZ_OBJECT_ID, locations).equals(input))
      throw new FuzzFinding('index does not round-trip byte for byte');
    contract(() => decodeIndex(input, sealedDomain, FUZZ_OBJECT_ID));
  },
};

const tableV3: FuzzTarget = {
  name: 'table-v3',
  run(input) {
    const entries = contract(() => decodeTableV3(input, plainDomain, FUZZ_PLACE, 'fuzz'));
    if (entries && !encodeTableV3(plainDomain, FUZZ_PLACE, entries).equals(input))
      throw new FuzzFinding('table v3 segment does not round-trip byte for byte');
    contract(() => decodeTableV3(input, sealedDomain, FUZZ_PLACE, 'fuzz'));
  },
};

/** A sink that refuses what the real connection refuses (unknown handles, oversize lengths). */
function nbdSink(): ReplySink {
  return {
    simpleReply: (handle) => (handle % 2n === 0n ? 64 : 0),
    chunkHeader: (h) => {
      if (h.length > 1 << 20) throw new P.NbdProtocolError(`chunk of ${h.length} bytes`);
      if (P.isReplyError(h.type) && h.length >= 6) return;
    },
    payload: () => undefined,
    end: () => undefined,
  };
}

const nbdReplies: FuzzTarget = {
  name: 'nbd-replies',
  run(input) {
    const parser = new ReplyParser(nbdSink());
    // Fed in pieces, the way a socket delivers them.
    contract(() => {
      for (let at = 0, i = 0; at < input.length; i++) {
        const n = 1 + ((input[i % input.length] ?? 0) % 37);
        parser.push(input.subarray(at, at + n));
        at += n;
      }
    }, [P.NbdProtocolError]);
    contract(() => P.decodeErrorPayload(P.ReplyType.ERROR_OFFSET, input), [P.NbdProtocolError]);
    contract(() => P.decodeInfo(input), [P.NbdProtocolError]);
    contract(() => P.decodeMetaContext(input), [P.NbdProtocolError]);
  },
};

/** The client handshake against a server that answers with the input's bytes (and hangs up after them). */
const nbdHandshake: FuzzTarget = {
  name: 'nbd-handshake',
  async run(input) {
    let at = 0;
    const io = {
      read: async (n: number) => {
        if (at + n > input.length) throw new P.NbdProtocolError('the server hung up');
        const b = input.subarray(at, at + n);
        at += n;
        return Buffer.from(b);
      },
      write: () => undefined,
    };
    await contractAsync(() => negotiate(io, { exportName: 'e', contexts: ['base:allocation'], listPrefix: 'qemu:' }, 'fuzz'), [P.NbdProtocolError]);
  },
};

const xml: FuzzTarget = {
  name: 'xml',
  run(input) {
    const root = contract(() => parseXml(input.toString('utf8')), [XmlError]);
    if (root) walk(root, 0);
  },
};

function walk(el: XmlElement, depth: number): void {
  if (depth > 300 || typeof el.name !== 'string' || typeof el.local !== 'string' || typeof el.text !== 'string' || !Array.isArray(el.children)) {
    throw new FuzzFinding('parseXml returned a malformed tree');
  }
  for (const c of el.children) walk(c, depth + 1);
}

/** Control-protocol frames, both directions: decode never throws; what it accepts is what a sender may send. */
const control: FuzzTarget = {
  name: 'control',
  run(input) {
    const text = input.toString('utf8');
    for (const table of [agentMessages, serverMessages]) {
      let d;
      try {
        d = decode<Record<string, unknown>>(text, table);
      } catch (err) {
        throw new FuzzFinding(`decode threw ${(err as Error)?.name}: ${(err as Error)?.message}`, err);
      }
      if (!d.ok) {
        if (typeof d.code !== 'string' || typeof d.message !== 'string') throw new FuzzFinding('a refusal without code or message');
        continue;
      }
      try {
        checkOutgoing(d.msg, table);
      } catch (err) {
        throw new FuzzFinding(`accepted ${String(d.msg.type)} that a sender may not send: ${(err as Error).message}`, err);
      }
      const again = decode(JSON.stringify(d.msg), table);
      if (!again.ok) throw new FuzzFinding(`accepted ${String(d.msg.type)} does not survive re-serialisation: ${again.message}`);
    }
  },
};

export const targets: FuzzTarget[] = [
  frame,
  chunkHeader,
  table,
  manifest,
  validate,
  nbdReplies,
  nbdHandshake,
  xml,
  control,
  envelope,
  pack,
  index,
  tableV3,
];
