// The envelope every v2 metadata object travels in: an 8-byte header naming its kind, then the body, sealed
// (AES-256-GCM under the metadata seal key) or, in the `plain` domain, followed by a BLAKE3-256 checksum.
//
//   "RNSO" | u8 version=1 | u8 kind | u8 flags (1 = sealed) | u8 reserved=0 | body...
//   sealed:   nonce(12) | AES-256-GCM(body) | tag(16); AAD = header | context
//   unsealed: body | BLAKE3-256(header | context | body)
//
// The context is a canonical string naming the object's place (see the *Context helpers): a sealed object moved to
// another place, swapped with another, replayed into another point or edited fails to open (METADATA_FORGED). An
// unsealed object only detects damage and misplacement (MANIFEST_CORRUPT): without a key nothing is authentic.
import { blake3 } from '../native/index.js';
import type { EncryptionKey } from '../crypto/keys.js';
import { ErrorCodes, RnodeError } from '../errors.js';

export const ENVELOPE_MAGIC = Buffer.from('RNSO', 'latin1');
export const ENVELOPE_VERSION = 1;
export const ENVELOPE_HEADER_BYTES = 8;
const FLAG_SEALED = 1;
const CHECKSUM_BYTES = 32;
/** The most an envelope adds to its body: the header, and the larger of nonce + tag (28) and the checksum (32). */
export const ENVELOPE_MAX_OVERHEAD_BYTES = ENVELOPE_HEADER_BYTES + CHECKSUM_BYTES;

export const EnvelopeKind = {
  CONFIG: 1,
  MANIFEST: 2,
  TABLE: 3,
  PENDING: 4,
  INDEX: 5,
  PACK_TRAILER: 6,
  PRUNE_MARKS: 7,
  VM_POINT: 8,
} as const;
export type EnvelopeKindId = (typeof EnvelopeKind)[keyof typeof EnvelopeKind];

const KIND_NAMES: Record<number, string> = Object.fromEntries(Object.entries(EnvelopeKind).map(([k, v]) => [v, k.toLowerCase().replace('_', ' ')]));

/** What an operator can do about a damaged object of a kind (what restores it, when something does). */
const DAMAGE_REMEDIES: Record<number, string> = {
  [EnvelopeKind.INDEX]: 'run "rnode check --read-data --repair": it indexes the intact chunks again from their packs and deletes it',
  [EnvelopeKind.PRUNE_MARKS]: 'run "rnode prune --reset-marks" (the next prunes start their grace periods afresh)',
};
const DEFAULT_REMEDY = 'run "rnode check" and restore from another point or store';

// Contexts: every field written, joined by NUL; a field never holds a NUL (ids, numbers, hex).
const ctx = (...parts: Array<string | number | null>) => parts.map((p) => (p === null ? 'null' : String(p))).join('\0');
export const envelopeContext = {
  config: (domain: string) => ctx('config', domain),
  manifest: (domain: string, disk: string, point: number) => ctx('manifest', domain, disk, point),
  table: (domain: string, disk: string, point: number, parent: number | null, generation: number, segment: number) =>
    ctx('table', domain, disk, point, parent, generation, segment),
  pending: (domain: string, disk: string, point: number) => ctx('pending', domain, disk, point),
  index: (domain: string, indexId: string) => ctx('index', domain, indexId),
  pack: (domain: string, packId: string) => ctx('pack', domain, packId),
  prune: (domain: string, name: string) => ctx('prune', domain, name),
  vmPoint: (domain: string, vm: string, seq: number) => ctx('vm-point', domain, vm, seq),
  vmPartial: (domain: string, objectKey: string) => ctx('vm-partial', domain, objectKey),
};

function header(kind: EnvelopeKindId, sealed: boolean): Buffer {
  const h = Buffer.alloc(ENVELOPE_HEADER_BYTES);
  ENVELOPE_MAGIC.copy(h, 0);
  h.writeUInt8(ENVELOPE_VERSION, 4);
  h.writeUInt8(kind, 5);
  h.writeUInt8(sealed ? FLAG_SEALED : 0, 6);
  return h;
}

/** Wraps body: sealed when key is given (an encrypted domain), checksummed otherwise. */
export function sealEnvelope(kind: EnvelopeKindId, context: string, body: Uint8Array, key?: EncryptionKey): Buffer {
  const h = header(kind, key !== undefined);
  const c = Buffer.from(context, 'utf8');
  if (key) return Buffer.concat([h, key.sealMetadata(Buffer.concat([h, c]), body)]);
  return Buffer.concat([h, body, blake3(Buffer.concat([h, c, body]))]);
}

/**
 * Opens an envelope read from `what` (its key, for messages): it must be of `kind`, sealed exactly when key is given
 * (an encrypted domain never accepts an unsealed object), and open under context. Returns the body.
 */
export function openEnvelope(b: Buffer, kind: EnvelopeKindId, context: string, what: string, key?: EncryptionKey): Buffer {
  const name = KIND_NAMES[kind];
  const corrupt = (why: string) =>
    new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `${name} ${what} is corrupt (${why}); ${DAMAGE_REMEDIES[kind] ?? DEFAULT_REMEDY}`, {
      details: { key: what },
    });
  const forged = (why: string) =>
    new RnodeError(
      ErrorCodes.METADATA_FORGED,
      `${name} ${what} ${why}: it was modified, moved from another place, replayed or forged; ${DAMAGE_REMEDIES[kind] ?? 'restore from another point or store'}`,
      { details: { key: what } },
    );
  if (b.length < ENVELOPE_HEADER_BYTES || !b.subarray(0, 4).equals(ENVELOPE_MAGIC)) {
    throw key ? forged('is not a metadata envelope') : corrupt('not a metadata envelope');
  }
  const version = b.readUInt8(4);
  if (version !== ENVELOPE_VERSION) {
    throw new RnodeError(
      ErrorCodes.FORMAT_VERSION,
      `${name} ${what} has envelope version ${version}; this rnode reads version ${ENVELOPE_VERSION}, upgrade rnode`,
      { details: { key: what } },
    );
  }
  const flags = b.readUInt8(6);
  const sealed = (flags & FLAG_SEALED) !== 0;
  const h = b.subarray(0, ENVELOPE_HEADER_BYTES);
  const c = Buffer.from(context, 'utf8');
  if (key) {
    if (!sealed) throw forged('is not sealed in an encrypted repository');
    if (b.readUInt8(5) !== kind) throw forged(`is of kind ${b.readUInt8(5)}, not ${name}`);
    if (flags !== FLAG_SEALED || b.readUInt8(7) !== 0) throw forged('has unknown flags');
    const body = key.openMetadata(Buffer.concat([h, c]), b.subarray(ENVELOPE_HEADER_BYTES));
    if (!body) throw forged('fails authentication');
    return body;
  }
  if (sealed) {
    throw new RnodeError(ErrorCodes.KEY_REQUIRED, `${name} ${what} is encrypted; pass its key with --encryption-key-file`, {
      details: { key: what },
    });
  }
  if (b.readUInt8(5) !== kind) throw corrupt(`kind ${b.readUInt8(5)}, expected ${name}`);
  if (flags !== 0 || b.readUInt8(7) !== 0) throw corrupt('unknown flags');
  if (b.length < ENVELOPE_HEADER_BYTES + CHECKSUM_BYTES) throw corrupt('truncated');
  const body = b.subarray(ENVELOPE_HEADER_BYTES, b.length - CHECKSUM_BYTES);
  if (!blake3(Buffer.concat([h, c, body])).equals(b.subarray(b.length - CHECKSUM_BYTES))) {
    throw corrupt('checksum mismatch: damaged, or moved from another place');
  }
  return body;
}
