// Every object key of a store, in one place: this module builds them and is the only one that parses them back.
// Callers speak in typed handles (a disk, a point, a pack id...) and `classify` turns a key back into one.
//
// Repository v2 (one "domain" per encryption key, plus `plain`; docs/formats.md):
//   r2/<domain>/config                               repository config (envelope CONFIG), written once
//   r2/<domain>/packs/<xx>/<id32hex>                  packs: blobs, then a sealed trailer (xx = 2 hex of the id)
//   r2/<domain>/index/<xx>/<id32hex>                  index objects: chunk id -> pack, offset, length
//   r2/<domain>/disks/<dname>/points/<seq10>          point manifests v4 (envelope MANIFEST)
//   r2/<domain>/disks/<dname>/tables/<seq10>/g<gen4>-<n8>   table segments v3 (envelope TABLE)
//   r2/<domain>/disks/<dname>/pending/<seq10>         checkpoint of a point being written (envelope PENDING)
//   r2/<domain>/prune/<name>                          prune's marks and state (names below)
// dname is the disk id in `plain`, and a keyed name (32 hex) in an encrypted domain, so names reveal nothing there.
//
// Legacy layout (written by rnode before v2, still read; leases and encryption markers stay there):
//   disks/<disk>/points/<seq>.json, tables/<seq>/g<gen>-<n>, chunks/<seq>/<index>, pending/<seq>.json,
//   lease.json, encryption.json; vms/<vm>/points/<seq>.json, partial/<seq>-<ms>.json, access.json
import { ErrorCodes, RnodeError } from '../errors.js';

const DISK_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export function validateDiskId(disk: string): string {
  if (!DISK_ID.test(disk)) {
    throw new RnodeError(
      ErrorCodes.BAD_DISK_ID,
      `disk id "${disk}" is not valid: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit (pass --disk)`,
    );
  }
  return disk;
}

/** Prune's lease of a domain is the disk lease `prune.<domain>` (src/jobs/prune-v2.ts): no new disk may take such an id. */
export const PRUNE_LEASE_PREFIX = 'prune.';

/**
 * A disk id a new point may be written under. A disk `prune.plain` would share the lease of the plain repository's
 * prune (disks/prune.plain/lease.json): each would block the other and be reported as it. Points such a disk already
 * has (an older rnode took the id) stay readable: reading commands check ids with validateDiskId only.
 */
export function validateNewDiskId(disk: string): string {
  validateDiskId(disk);
  if (disk.startsWith(PRUNE_LEASE_PREFIX)) {
    throw new RnodeError(
      ErrorCodes.BAD_DISK_ID,
      `disk id "${disk}" cannot take new points: ids that start with "${PRUNE_LEASE_PREFIX}" are reserved for prune's lease (disks/${PRUNE_LEASE_PREFIX}<repository>/lease.json); choose another --disk (the points the disk already has stay readable)`,
    );
  }
  return disk;
}

const pad = (n: number, w: number) => String(n).padStart(w, '0');

// Where everything of the legacy format lives. One disk's objects share the prefix disks/<disk>/:
//   points/<seq>.json          committed point manifests (written last, atomically)
//   tables/<seq>/g<gen>-<n>    chunk-table segments of point <seq> (generation bumps when prune rebases it)
//   chunks/<seq>/<index>       chunk objects written by point <seq>
//   pending/<seq>.json         checkpoint of a point being written (resume after a crash or a cut)
//   lease.json                 the one-writer-per-disk lease (v2 disks too, under their dname)
//   encryption.json            the disk's encryption marker: written (authenticated) before its first authenticated
//                              encrypted point, so key-less writers and down-versioned points are refused
export const layout = {
  diskPrefix: (disk: string) => `disks/${disk}/`,
  pointsPrefix: (disk: string) => `disks/${disk}/points/`,
  point: (disk: string, seq: number) => `disks/${disk}/points/${pad(seq, 10)}.json`,
  allTablesPrefix: (disk: string) => `disks/${disk}/tables/`,
  tablesPrefix: (disk: string, seq: number) => `disks/${disk}/tables/${pad(seq, 10)}/`,
  segment: (disk: string, seq: number, gen: number, n: number) => `disks/${disk}/tables/${pad(seq, 10)}/g${pad(gen, 4)}-${pad(n, 8)}`,
  chunksPrefix: (disk: string) => `disks/${disk}/chunks/`,
  pointChunksPrefix: (disk: string, seq: number) => `disks/${disk}/chunks/${pad(seq, 10)}/`,
  chunk: (disk: string, seq: number, index: number) => `disks/${disk}/chunks/${pad(seq, 10)}/${pad(index, 12)}`,
  pendingPrefix: (disk: string) => `disks/${disk}/pending/`,
  pending: (disk: string, seq: number) => `disks/${disk}/pending/${pad(seq, 10)}.json`,
  lease: (disk: string) => `disks/${disk}/lease.json`,
  encryptionMarker: (disk: string) => `disks/${disk}/encryption.json`,
  disksPrefix: 'disks/',
};

/** Sequence number from a legacy points/ or pending/ key, or undefined for anything else. */
export function seqFromKey(key: string): number | undefined {
  const m = /\/(\d{10})\.json$/.exec(key);
  return m ? Number(m[1]) : undefined;
}

/** Legacy chunk object key → {writer, index}, or undefined. */
export function parseChunkKey(key: string): { writer: number; index: number } | undefined {
  const m = /\/chunks\/(\d{10})\/(\d{12})$/.exec(key);
  return m ? { writer: Number(m[1]), index: Number(m[2]) } : undefined;
}

// A VM's objects share the prefix vms/<vm>/ (the disks' own points stay under disks/<disk>/):
//   points/<seq>.json          committed VM points: one snapshot, the disks' point numbers, the VM config
//   partial/<seq>-<ms>.json    a run whose disks did not all commit: which did (they are in no VM point)
//   access.json                a run is between PrepareForAccess and EndAccess (left behind if it was killed)
export const vmLayout = {
  access: (vm: string) => `vms/${vm}/access.json`,
  vmsPrefix: 'vms/',
  pointsPrefix: (vm: string) => `vms/${vm}/points/`,
  point: (vm: string, seq: number) => `vms/${vm}/points/${pad(seq, 10)}.json`,
  partialPrefix: (vm: string) => `vms/${vm}/partial/`,
  partial: (vm: string, after: number, at: number) => `vms/${vm}/partial/${pad(after, 10)}-${pad(at, 15)}.json`,
};

// ---- Repository v2 ----

/** A 128-bit random object id (packs, indexes), as 32 lowercase hex. */
export type ObjectId = string;
export const OBJECT_ID_BYTES = 16;
const HEX32 = /^[0-9a-f]{32}$/;
const DOMAIN = /^(plain|k[0-9a-f]{16})$/;
/** The domain of unencrypted v2 objects. */
export const PLAIN_DOMAIN = 'plain';
const PRUNE_NAME = /^[a-z0-9][a-z0-9._-]{0,99}$/;

export function isDomainName(d: string): boolean {
  return DOMAIN.test(d);
}

export function isObjectId(id: string): boolean {
  return HEX32.test(id);
}

function checkDomain(d: string): string {
  if (!DOMAIN.test(d)) throw new RnodeError(ErrorCodes.INTERNAL, `"${d}" is not a repository domain name`);
  return d;
}

function checkId(id: string): string {
  if (!HEX32.test(id)) throw new RnodeError(ErrorCodes.INTERNAL, `"${id}" is not a 128-bit object id`);
  return id;
}

export const r2 = {
  prefix: 'r2/',
  /** Where encrypted domains (k + 16 hex) are listed: every key under it that classifies is one of theirs. */
  sealedDomainsPrefix: 'r2/k',
  domainPrefix: (d: string) => `r2/${checkDomain(d)}/`,
  config: (d: string) => `r2/${checkDomain(d)}/config`,
  packsPrefix: (d: string) => `r2/${checkDomain(d)}/packs/`,
  pack: (d: string, id: ObjectId) => `r2/${checkDomain(d)}/packs/${checkId(id).slice(0, 2)}/${id}`,
  indexPrefix: (d: string) => `r2/${checkDomain(d)}/index/`,
  index: (d: string, id: ObjectId) => `r2/${checkDomain(d)}/index/${checkId(id).slice(0, 2)}/${id}`,
  disksPrefix: (d: string) => `r2/${checkDomain(d)}/disks/`,
  diskPrefix: (d: string, dname: string) => `r2/${checkDomain(d)}/disks/${validateDiskId(dname)}/`,
  pointsPrefix: (d: string, dname: string) => `r2/${checkDomain(d)}/disks/${validateDiskId(dname)}/points/`,
  point: (d: string, dname: string, seq: number) => `r2/${checkDomain(d)}/disks/${validateDiskId(dname)}/points/${pad(seq, 10)}`,
  tablesPrefix: (d: string, dname: string, seq: number) => `r2/${checkDomain(d)}/disks/${validateDiskId(dname)}/tables/${pad(seq, 10)}/`,
  segment: (d: string, dname: string, seq: number, gen: number, n: number) =>
    `r2/${checkDomain(d)}/disks/${validateDiskId(dname)}/tables/${pad(seq, 10)}/g${pad(gen, 4)}-${pad(n, 8)}`,
  pendingPrefix: (d: string, dname: string) => `r2/${checkDomain(d)}/disks/${validateDiskId(dname)}/pending/`,
  pending: (d: string, dname: string, seq: number) => `r2/${checkDomain(d)}/disks/${validateDiskId(dname)}/pending/${pad(seq, 10)}`,
  prunePrefix: (d: string) => `r2/${checkDomain(d)}/prune/`,
  /** prune's objects (marks, state): name is prune's own, lowercase letters, digits, '.', '_', '-'. */
  prune: (d: string, name: string) => {
    if (!PRUNE_NAME.test(name)) throw new RnodeError(ErrorCodes.INTERNAL, `"${name}" is not a prune object name`);
    return `r2/${checkDomain(d)}/prune/${name}`;
  },
};

/**
 * A disk's claim (src/repository/claims.ts): which repository its v2 points live in, under a name any writer computes
 * from the disk id alone (`claims/<32 hex>`), so a writer without the key, or with another one, is refused.
 */
export const claims = {
  prefix: 'claims/',
  claim: (hash: string) => `claims/${checkId(hash)}`,
};

/** A v2 key turned back into what it names. */
export type R2Handle =
  | { kind: 'config'; domain: string }
  | { kind: 'pack'; domain: string; id: ObjectId }
  | { kind: 'index'; domain: string; id: ObjectId }
  | { kind: 'manifest'; domain: string; dname: string; point: number }
  | { kind: 'table'; domain: string; dname: string; point: number; generation: number; segment: number }
  | { kind: 'pending'; domain: string; dname: string; point: number }
  | { kind: 'prune'; domain: string; name: string };

/** A disk claim's key turned back into its hash. */
export type ClaimHandle = { kind: 'claim'; hash: string };

/** A legacy key turned back into what it names. */
export type LegacyHandle =
  | { kind: 'legacy-manifest'; disk: string; point: number }
  | { kind: 'legacy-table'; disk: string; point: number; generation: number; segment: number }
  | { kind: 'legacy-chunk'; disk: string; writer: number; index: number }
  | { kind: 'legacy-pending'; disk: string; point: number }
  | { kind: 'lease'; disk: string }
  | { kind: 'encryption-marker'; disk: string }
  | { kind: 'vm-point'; vm: string; point: number }
  | { kind: 'vm-partial'; vm: string; after: number; at: number }
  | { kind: 'vm-access'; vm: string };

export type KeyHandle = R2Handle | LegacyHandle | ClaimHandle;

const SEQ = '(\\d{10})';
const R2_PATTERNS: Array<[RegExp, (m: RegExpExecArray) => R2Handle]> = [
  [/^r2\/([^/]+)\/config$/, (m) => ({ kind: 'config', domain: m[1] })],
  [/^r2\/([^/]+)\/packs\/([0-9a-f]{2})\/([0-9a-f]{32})$/, (m) => ({ kind: 'pack', domain: m[1], id: m[3] })],
  [/^r2\/([^/]+)\/index\/([0-9a-f]{2})\/([0-9a-f]{32})$/, (m) => ({ kind: 'index', domain: m[1], id: m[3] })],
  [new RegExp(`^r2/([^/]+)/disks/([^/]+)/points/${SEQ}$`), (m) => ({ kind: 'manifest', domain: m[1], dname: m[2], point: Number(m[3]) })],
  [
    new RegExp(`^r2/([^/]+)/disks/([^/]+)/tables/${SEQ}/g(\\d{4})-(\\d{8})$`),
    (m) => ({ kind: 'table', domain: m[1], dname: m[2], point: Number(m[3]), generation: Number(m[4]), segment: Number(m[5]) }),
  ],
  [new RegExp(`^r2/([^/]+)/disks/([^/]+)/pending/${SEQ}$`), (m) => ({ kind: 'pending', domain: m[1], dname: m[2], point: Number(m[3]) })],
  [/^r2\/([^/]+)\/prune\/([^/]+)$/, (m) => ({ kind: 'prune', domain: m[1], name: m[2] })],
];
const CLAIM_PATTERN = /^claims\/([0-9a-f]{32})$/;

const LEGACY_PATTERNS: Array<[RegExp, (m: RegExpExecArray) => LegacyHandle]> = [
  [new RegExp(`^disks/([^/]+)/points/${SEQ}\\.json$`), (m) => ({ kind: 'legacy-manifest', disk: m[1], point: Number(m[2]) })],
  [
    new RegExp(`^disks/([^/]+)/tables/${SEQ}/g(\\d{4})-(\\d{8})$`),
    (m) => ({ kind: 'legacy-table', disk: m[1], point: Number(m[2]), generation: Number(m[3]), segment: Number(m[4]) }),
  ],
  [new RegExp(`^disks/([^/]+)/chunks/${SEQ}/(\\d{12})$`), (m) => ({ kind: 'legacy-chunk', disk: m[1], writer: Number(m[2]), index: Number(m[3]) })],
  [new RegExp(`^disks/([^/]+)/pending/${SEQ}\\.json$`), (m) => ({ kind: 'legacy-pending', disk: m[1], point: Number(m[2]) })],
  [/^disks\/([^/]+)\/lease\.json$/, (m) => ({ kind: 'lease', disk: m[1] })],
  [/^disks\/([^/]+)\/encryption\.json$/, (m) => ({ kind: 'encryption-marker', disk: m[1] })],
  [new RegExp(`^vms/([^/]+)/points/${SEQ}\\.json$`), (m) => ({ kind: 'vm-point', vm: m[1], point: Number(m[2]) })],
  [new RegExp(`^vms/([^/]+)/partial/${SEQ}-(\\d{15})\\.json$`), (m) => ({ kind: 'vm-partial', vm: m[1], after: Number(m[2]), at: Number(m[3]) })],
  [/^vms\/([^/]+)\/access\.json$/, (m) => ({ kind: 'vm-access', vm: m[1] })],
];

/**
 * What a key names, or undefined for a key that is no object of the format (a receiver refuses those). Every
 * field is checked: a handle from classify rebuilds exactly the key it came from (keyOf(classify(k)) === k).
 */
export function classify(key: string): KeyHandle | undefined {
  const claim = CLAIM_PATTERN.exec(key);
  if (claim) return { kind: 'claim', hash: claim[1] };
  const patterns: Array<[RegExp, (m: RegExpExecArray) => KeyHandle]> = key.startsWith('r2/') ? R2_PATTERNS : LEGACY_PATTERNS;
  for (const [re, make] of patterns) {
    const m = re.exec(key);
    if (!m) continue;
    const h = make(m);
    try {
      return keyOf(h) === key ? h : undefined;
    } catch {
      return undefined; // a part that does not validate (disk id, domain, prune name)
    }
  }
  return undefined;
}

/** The key a handle names (the inverse of classify). */
export function keyOf(h: KeyHandle): string {
  switch (h.kind) {
    case 'config':
      return r2.config(h.domain);
    case 'pack':
      return r2.pack(h.domain, h.id);
    case 'index':
      return r2.index(h.domain, h.id);
    case 'manifest':
      return r2.point(h.domain, h.dname, h.point);
    case 'table':
      return r2.segment(h.domain, h.dname, h.point, h.generation, h.segment);
    case 'pending':
      return r2.pending(h.domain, h.dname, h.point);
    case 'prune':
      return r2.prune(h.domain, h.name);
    case 'claim':
      return claims.claim(h.hash);
    case 'legacy-manifest':
      return layout.point(validateDiskId(h.disk), h.point);
    case 'legacy-table':
      return layout.segment(validateDiskId(h.disk), h.point, h.generation, h.segment);
    case 'legacy-chunk':
      return layout.chunk(validateDiskId(h.disk), h.writer, h.index);
    case 'legacy-pending':
      return layout.pending(validateDiskId(h.disk), h.point);
    case 'lease':
      return layout.lease(validateDiskId(h.disk));
    case 'encryption-marker':
      return layout.encryptionMarker(validateDiskId(h.disk));
    case 'vm-point':
      return vmLayout.point(validateDiskId(h.vm), h.point);
    case 'vm-partial':
      return vmLayout.partial(validateDiskId(h.vm), h.after, h.at);
    case 'vm-access':
      return vmLayout.access(validateDiskId(h.vm));
  }
}
