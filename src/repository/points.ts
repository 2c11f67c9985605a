// Reading a disk's points and checkpoints, the one set of readers every job uses (replicate, recover, verify, export,
// prune, stats, check): list a disk's manifests, load one, resolve "latest" or a number, and for the v2 format list a
// domain's disks with their objects and learn a keyed disk's id. A disk's points are its legacy points
// (disks/<disk>/points/) and its repository v2 points (r2/<domain>/disks/<dname>/points/) in one sequence: v2 points
// continue the numbering. The domain is the key's (or `plain` without one), so an encrypted disk's v2 points are found
// with its key only (their names are keyed).
import { checkClaim, claimKey, readClaim, type DiskClaim } from './claims.js';
import type { EncryptionKey } from '../crypto/keys.js';
import { ErrorCodes, RnodeError, isRnodeError } from '../errors.js';
import { decodeManifest, type PointManifest } from '../format/manifest.js';
import type { ObjectStore } from '../store/types.js';
import { Domain, domainName } from './domain.js';
import { ENVELOPE_HEADER_BYTES } from './envelope.js';
import { PLAIN_DOMAIN, classify, layout, r2 } from './names.js';
import { decodeManifestV4, decodePendingV2, isV2Point, type V2PointManifest } from './point-format.js';

/** Sequence numbers of the disk's v2 points in the key's domain. */
export async function listV2PointSeqs(store: ObjectStore, disk: string, key?: EncryptionKey): Promise<number[]> {
  const domain = Domain.of(key);
  const seqs: number[] = [];
  for await (const o of store.list(r2.pointsPrefix(domain.name, domain.dname(disk)))) {
    const h = classify(o.key);
    if (h?.kind === 'manifest') seqs.push(h.point);
  }
  return seqs.sort((a, b) => a - b);
}

/** The disk's legacy points (disks/<disk>/points/), ascending; its v2 points are not among them. */
export async function listLegacyPointSeqs(store: ObjectStore, disk: string): Promise<number[]> {
  const seqs: number[] = [];
  for await (const o of store.list(layout.pointsPrefix(disk))) {
    const h = classify(o.key);
    if (h?.kind === 'legacy-manifest') seqs.push(h.point);
  }
  return seqs.sort((a, b) => a - b);
}

/**
 * Both formats' points of the disk in one sequence (refuseLegacyAfterUpgrade first: no number means two points); without
 * a key, as the disk's claim allows (refuseKeylessAgainstClaim). claimRead: the claim as a caller that needs it too
 * reads it (one read of it per run).
 */
export async function listPointSeqs(
  store: ObjectStore,
  disk: string,
  key?: EncryptionKey,
  claimRead?: Promise<DiskClaim | undefined>,
): Promise<number[]> {
  const [legacy, v2, claim] = await Promise.all([
    listLegacyPointSeqs(store, disk),
    listV2PointSeqs(store, disk, key),
    key ? undefined : (claimRead ?? readClaim(store, disk)),
  ]);
  refuseLegacyAfterUpgrade(disk, legacy, v2);
  if (!key) refuseKeylessAgainstClaim(store, disk, claim, v2);
  return [...new Set([...legacy, ...v2])].sort((a, b) => a - b);
}

/**
 * The disk's claim says whether it is encrypted, and a reader without the key may not take the store's word against
 * it: rnode's writers honour the claim, so unencrypted points of a disk claimed encrypted were put there by someone who
 * can write the store (or a peer with a receiving node's token), and a reader without the key restored them (exit 0).
 * Without the key, a disk claimed encrypted is KEY_REQUIRED, or METADATA_FORGED when unencrypted v2 points of its id
 * are there. A reader with the key reads the points its key authenticates, whatever the claim says (a replaced claim
 * is the writers' and `disks`' to name); legacy points, one namespace for every key, are checked as each is loaded
 * (refusePlainUnderClaim).
 */
function refuseKeylessAgainstClaim(store: ObjectStore, disk: string, claim: DiskClaim | undefined, v2: number[]): void {
  if (!claim) return;
  if (claim.domain !== PLAIN_DOMAIN && v2.length > 0) {
    throw new RnodeError(
      ErrorCodes.METADATA_FORGED,
      `disk ${disk} is encrypted (its claim ${claimKey(disk)} names key id ${claim.keyId}), but unencrypted point${v2.length > 1 ? 's' : ''} ` +
        `${v2.join(', ')} of its id ${v2.length > 1 ? 'are' : 'is'} in ${store.location} (${r2.pointsPrefix(PLAIN_DOMAIN, Domain.of(undefined).dname(disk))}): ` +
        `no rnode writer puts them there, so someone who can write the store (or a peer with the receiving node's token) did, ` +
        `and nothing was read. Delete them, check who can write the store, and read the disk with its key (--encryption-key-file)`,
      { details: { disk, keyId: claim.keyId, unencryptedPoints: v2 } },
    );
  }
  checkClaim(claim, undefined, disk);
}

/**
 * A legacy point that is not encrypted, loaded with a key: when the disk's claim names that key's repository, the point
 * was planted (see refuseKeylessAgainstClaim), and its chain would otherwise be refused with advice to leave out the key.
 */
async function refusePlainUnderClaim(store: ObjectStore, disk: string, key: EncryptionKey, where: string, seq: number): Promise<void> {
  const claim = await readClaim(store, disk);
  if (claim?.domain !== domainName(key)) return;
  throw new RnodeError(
    ErrorCodes.METADATA_FORGED,
    `point ${seq} of disk ${disk} (${where}) is not encrypted, but the disk is (its claim ${claimKey(disk)} names the key given, ` +
      `key id ${key.keyId}): no rnode writer puts it there, so someone who can write the store did. Delete it and check who ` +
      `can write the store; keep the key: the disk's encrypted points are intact`,
    { details: { disk, point: seq, key: where, keyId: key.keyId } },
  );
}

/**
 * Refuses a disk with a legacy point at or above its first v2 point. rnode never writes a legacy point once a disk
 * has v2 points, but an rnode from before v2 lists only the legacy ones and numbers its next point after them: that
 * point may take a v2 point's number, and a reader would silently show one of the two. Every reader and prune fail
 * on it, deleting nothing, until the old node is upgraded and its point is dealt with.
 */
export function refuseLegacyAfterUpgrade(disk: string, legacy: number[], v2: number[]): void {
  if (v2.length === 0) return;
  const upgradedAt = v2[0];
  const late = legacy.filter((s) => s >= upgradedAt);
  if (late.length === 0) return;
  throw new RnodeError(
    ErrorCodes.LEGACY_AFTER_UPGRADE,
    `disk ${disk} has legacy point${late.length > 1 ? 's' : ''} ${late.join(', ')} (${late.map((s) => layout.point(disk, s)).join(', ')}), ` +
      `written by an rnode older than repository v2 after the disk was upgraded to v2 at point ${upgradedAt}: ` +
      `upgrade rnode on every node that replicates this disk; restore ${late.length > 1 ? 'those points' : 'that point'} with the older rnode if needed, ` +
      `then delete ${late.length > 1 ? 'their manifests' : 'its manifest'} so the disk can be read and pruned again`,
    { details: { disk, legacyPoints: late, firstV2Point: upgradedAt } },
  );
}

/** A v2 point of the disk in the key's domain; POINT_NOT_FOUND when it has no such manifest. */
export async function loadV2Point(store: ObjectStore, disk: string, seq: number, key?: EncryptionKey): Promise<V2PointManifest> {
  const domain = Domain.of(key);
  let bytes: Buffer;
  try {
    bytes = await store.get(r2.point(domain.name, domain.dname(disk), seq));
  } catch (err) {
    if (isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) {
      throw new RnodeError(ErrorCodes.POINT_NOT_FOUND, `point ${seq} of disk ${disk} does not exist; list points with "rnode points"`);
    }
    throw err;
  }
  try {
    return decodeManifestV4(bytes, domain, disk, seq);
  } catch (err) {
    if (!isRnodeError(err, ErrorCodes.METADATA_FORGED)) throw err;
    throw await forgedNewest(store, disk, seq, key, err);
  }
}

/**
 * A newest manifest that does not open under the key: anyone who can write the store, or a peer with a receiving node's
 * token, can put one there, and every command on the disk stopped at it for good without saying what to do. The points
 * before it are intact: deleting it (when no rnode run wrote it) gives the disk back. Other points: the error as is.
 */
async function forgedNewest(store: ObjectStore, disk: string, seq: number, key: EncryptionKey | undefined, err: RnodeError): Promise<RnodeError> {
  const seqs = await listV2PointSeqs(store, disk, key).catch(() => []);
  if (seqs[seqs.length - 1] !== seq) return err;
  const where = String(err.details.key ?? r2.point(Domain.of(key).name, Domain.of(key).dname(disk), seq));
  return new RnodeError(
    ErrorCodes.METADATA_FORGED,
    `manifest ${where}, the newest point (${seq}) of disk ${disk}, does not open under the key (forged, replayed or ` +
      `damaged). If no rnode run of yours committed point ${seq}, it was planted (a peer with the receiving node's token, ` +
      `or anyone who can write the store, can put one there): delete it from the store (on the receiving node, for a ` +
      `ws:// store) and run the command again; the points before it are intact. Otherwise restore from another point or store`,
    { details: { ...err.details, key: where, point: seq, newest: true }, cause: err },
  );
}

export async function loadPoint(store: ObjectStore, disk: string, seq: number, key?: EncryptionKey): Promise<PointManifest> {
  try {
    return await loadV2Point(store, disk, seq, key);
  } catch (err) {
    if (!isRnodeError(err, ErrorCodes.POINT_NOT_FOUND)) throw err;
  }
  const where = layout.point(disk, seq);
  let bytes: Buffer;
  try {
    bytes = await store.get(where);
  } catch (err) {
    if (isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) {
      throw new RnodeError(ErrorCodes.POINT_NOT_FOUND, `point ${seq} of disk ${disk} does not exist; list points with "rnode points"`);
    }
    throw err;
  }
  const m = decodeManifest(bytes, where);
  if (m.point !== seq || m.disk !== disk) {
    throw new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `manifest ${where} names point ${m.point} of disk ${m.disk}; the store is damaged`);
  }
  if (key && !m.encryption) await refusePlainUnderClaim(store, disk, key, where, seq);
  return m;
}

export async function listPoints(store: ObjectStore, disk: string, key?: EncryptionKey): Promise<PointManifest[]> {
  const out: PointManifest[] = [];
  for (const s of await listPointSeqs(store, disk, key)) out.push(await loadPoint(store, disk, s, key));
  return out;
}

/** A point whose manifest could not be read (damaged, or forged): named in a listing, in place of its row. */
export interface UnreadablePoint {
  point: number;
  code: string;
  message: string;
}

/**
 * The points a person asked to see (rnode points): none found, for a disk whose claim names another repository than
 * the key's (an encrypted disk listed without its key, or with another one), is that error (KEY_REQUIRED or
 * KEY_MISMATCH), not an empty list: "no points" for a disk with points is the last thing to tell an operator. A
 * disk the store does not hold at all is DISK_NOT_FOUND. A manifest that is damaged or forged is named under
 * `problems` and hides no other point: the intact ones are what the operator restores from. (listPoints and the
 * readers that choose a point to restore from or write on still fail on it.)
 */
export async function listPointsOf(
  store: ObjectStore,
  disk: string,
  key?: EncryptionKey,
): Promise<{ points: PointManifest[]; problems: UnreadablePoint[] }> {
  const seqs = await listPointSeqs(store, disk, key);
  const points: PointManifest[] = [];
  const problems: UnreadablePoint[] = [];
  for (const s of seqs) {
    try {
      points.push(await loadPoint(store, disk, s, key));
    } catch (err) {
      if (isRnodeError(err, ErrorCodes.POINT_NOT_FOUND)) continue; // deleted by a prune since it was listed
      if (!isRnodeError(err, ErrorCodes.MANIFEST_CORRUPT) && !isRnodeError(err, ErrorCodes.METADATA_FORGED)) throw err;
      problems.push({ point: s, code: err.code, message: err.message });
    }
  }
  if (seqs.length > 0) return { points, problems };
  // A claimed disk without points is one whose first replicate has not committed yet; an unclaimed one is not in the
  // store (a typo, or the wrong store): an empty list would tell a caller the disk is there with nothing to recover.
  const claim = await readClaim(store, disk);
  if (!claim) await explainNoPoints(store, disk, key);
  checkClaim(claim, key, disk);
  return { points, problems };
}

/** "latest", undefined or a point number → an existing point's number. */
export async function resolvePoint(store: ObjectStore, disk: string, which: string | undefined, key?: EncryptionKey): Promise<number> {
  const seqs = await listPointSeqs(store, disk, key);
  if (seqs.length === 0) await explainNoPoints(store, disk, key);
  if (which === undefined || which === 'latest') return seqs[seqs.length - 1];
  if (!/^\d+$/.test(which)) {
    throw new RnodeError(ErrorCodes.USAGE, `--point "${which}" is not a point number; pass a number from "rnode points" or "latest"`);
  }
  const n = Number(which);
  if (!seqs.includes(n)) {
    throw new RnodeError(
      ErrorCodes.POINT_NOT_FOUND,
      `point ${which} of disk ${disk} does not exist; existing points: ${seqs.join(', ')} (or "latest")`,
    );
  }
  return n;
}

/** The point and its ancestors, newest first, each checked to be a consistent delta of the next. */
export async function loadChain(store: ObjectStore, disk: string, seq: number, key?: EncryptionKey): Promise<PointManifest[]> {
  return chainFrom(store, await loadPoint(store, disk, seq, key), key);
}

/** A v2 point and its ancestors, newest first (a chain never mixes formats, so all of them are v2). */
export async function loadV2Chain(store: ObjectStore, disk: string, seq: number, key?: EncryptionKey): Promise<V2PointManifest[]> {
  const chain = await chainFrom(store, await loadV2Point(store, disk, seq, key), key);
  if (!chain.every(isV2Point)) throw new RnodeError(ErrorCodes.INTERNAL, `the chain of v2 point ${seq} of disk ${disk} holds a legacy point`);
  return chain;
}

/** Manifests fetched ahead while a chain is walked, at most. */
const CHAIN_LOOKAHEAD = 8;
/** Points of a chain found rebased while it is walked, at most (each a retention that ran meanwhile). */
const MAX_REBASES_SEEN = 4;

/** A point already loaded and its ancestors, newest first (see loadChain). */
export async function chainFrom(store: ObjectStore, first: PointManifest, key: EncryptionKey | undefined): Promise<PointManifest[]> {
  const chain: PointManifest[] = [];
  const disk = first.disk;
  // A parent is nearly always the point just before (a gap only where prune deleted points): the manifests below it
  // are fetched ahead, so a chain costs a few round trips on a cloud store rather than one per point. The window
  // doubles from one as the chain goes on: a short chain fetches few manifests in vain below its first point.
  const ahead = new Map<number, Promise<PointManifest>>();
  const fetch = (seq: number): Promise<PointManifest> => {
    let p = ahead.get(seq);
    if (!p) {
      p = loadPoint(store, disk, seq, key);
      p.catch(() => {}); // one fetched ahead in vain (below the chain's first point) is not an unhandled failure
      ahead.set(seq, p);
    }
    return p;
  };
  let m: PointManifest | undefined = first;
  let rebases = 0;
  while (m) {
    chain.push(m);
    if (m.parent === null) break;
    if (m.parent >= m.point)
      throw new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `point ${m.point} names a later parent ${m.parent}; the store is damaged`);
    const window = Math.min(CHAIN_LOOKAHEAD, 2 ** (chain.length - 1));
    for (let s = m.parent; s > Math.max(0, m.parent - window); s--) void fetch(s);
    for (const s of ahead.keys()) if (s > m.parent) ahead.delete(s);
    const child: PointManifest = m;
    const parent: PointManifest | undefined = await fetch(m.parent).catch(async (err: unknown) => {
      if (!isRnodeError(err, ErrorCodes.POINT_NOT_FOUND)) throw err;
      // Retention deletes a kept point's ancestors once it has rebased it (a table of its own, no parent): the point
      // read before that names a parent that is gone by now. Read again, it is whole; only a point that still names
      // the missing parent is damage.
      const again = rebases < MAX_REBASES_SEEN ? await loadPoint(store, disk, child.point, key).catch(() => undefined) : undefined;
      if (again && again.createdAt === child.createdAt && again.parent !== child.parent) {
        rebases++;
        chain.pop();
        m = again;
        return undefined;
      }
      throw new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `point ${child.point} needs point ${child.parent}, which is missing; the store is damaged`);
    });
    if (!parent) continue;
    if (parent.diskSize !== m.diskSize || parent.chunkSize !== m.chunkSize) {
      throw new RnodeError(
        ErrorCodes.MANIFEST_CORRUPT,
        `point ${m.point} and its parent ${parent.point} disagree on disk geometry; the store is damaged`,
      );
    }
    // A chain never mixes formats: the first v2 point of a disk stands alone.
    if (isV2Point(m) !== isV2Point(parent)) {
      throw new RnodeError(
        ErrorCodes.MANIFEST_CORRUPT,
        `point ${m.point} and its parent ${parent.point} are of different repository formats; the store is damaged`,
      );
    }
    m = parent;
  }
  return chain;
}

/**
 * Throws the reason a disk shows no points with this key (or none): an encrypted disk's v2 names are keyed, so a
 * wrong or missing key finds nothing. KEY_MISMATCH when the disk is unencrypted but a key was given, or when the store
 * holds other encrypted repositories; KEY_REQUIRED when no key was given and it holds encrypted ones; else
 * DISK_NOT_FOUND.
 */
/** True when the store holds an encrypted repository other than the key's own (one listed object is enough). */
async function holdsOtherEncrypted(store: ObjectStore, key: EncryptionKey | undefined): Promise<boolean> {
  const own = Domain.of(key).name;
  for await (const o of store.list(r2.sealedDomainsPrefix)) {
    const h = classify(o.key);
    if (h && 'domain' in h && h.domain !== own && h.domain !== PLAIN_DOMAIN) return true;
  }
  return false;
}

export async function explainNoPoints(store: ObjectStore, disk: string, key: EncryptionKey | undefined): Promise<never> {
  const claim = await readClaim(store, disk);
  checkClaim(claim, key, disk);
  const otherEncrypted = await holdsOtherEncrypted(store, key);
  // A disk with v2 points has a claim (written before its first commit): without one, the id is mostly not in the
  // store (a typo). Builds between repository v2 and claims wrote encrypted disks without one: only their key finds them.
  if (!claim) {
    throw new RnodeError(
      ErrorCodes.DISK_NOT_FOUND,
      `disk ${disk} has no committed points in ${store.location}; check --disk and --store ("rnode disks --store ${store.location}" lists its disks)` +
        (otherEncrypted
          ? `; the store also holds encrypted disks ${key ? 'of other keys ' : ''}that are named only with their key (one written before disk claims has no claim): pass its key with --encryption-key-file`
          : ''),
      { details: { disk } },
    );
  }
  if (key && (await listV2PointSeqs(store, disk, undefined)).length > 0) {
    throw new RnodeError(ErrorCodes.KEY_MISMATCH, `disk ${disk} is not encrypted; leave out the encryption key`, { details: { disk } });
  }
  if (key && otherEncrypted) {
    throw new RnodeError(
      ErrorCodes.KEY_MISMATCH,
      `disk ${disk} has no points in the repository of the key given (key id ${key.keyId}); the store holds other encrypted repositories: pass the disk's key`,
      { details: { disk, keyId: key.keyId } },
    );
  }
  if (!key && otherEncrypted) {
    throw new RnodeError(
      ErrorCodes.KEY_REQUIRED,
      `disk ${disk} has no points readable without a key, and the store holds encrypted repositories; pass its key with --encryption-key-file (agent jobs: encryption.key)`,
      { details: { disk } },
    );
  }
  throw new RnodeError(ErrorCodes.DISK_NOT_FOUND, `disk ${disk} has no committed points in ${store.location}; check --disk and --store`);
}

// ---- A v2 domain's disks, as prune, stats and check walk them ----

/** A table segment object as its key shows it (of a committed point, or of one being written). */
export interface V2SegmentObject {
  key: string;
  point: number;
  generation: number;
  segment: number;
}

/** One disk of a domain as its keys show it. */
export interface V2DiskObjects {
  dname: string;
  points: number[];
  pending: number[];
  segments: V2SegmentObject[];
}

/** A disk's table segments and checkpoints that no point needs any more (staleDiskObjects). */
export interface StaleDiskObjects {
  segments: string[];
  checkpoints: string[];
}

/**
 * What of a disk no point needs, given the segment keys its committed manifests name: segments of point numbers up to
 * the latest committed one that no manifest names (a deleted point's, a rebased point's old generation, a dead
 * attempt's), and checkpoints of committed points. Objects of a later point are a writer's (running, or crashed and
 * resumable): never stale.
 */
export function staleDiskObjects(domain: string, d: V2DiskObjects, named: Set<string>): StaleDiskObjects {
  const latest = d.points.length ? d.points[d.points.length - 1] : -1;
  return {
    segments: d.segments.filter((s) => s.point <= latest && !named.has(s.key)).map((s) => s.key),
    checkpoints: d.pending.filter((p) => p <= latest).map((p) => r2.pending(domain, d.dname, p)),
  };
}

/** The domains a store holds (one listing of r2/). */
export async function listDomains(store: ObjectStore): Promise<string[]> {
  const found = new Set<string>();
  for await (const o of store.list(r2.prefix)) {
    const h = classify(o.key);
    if (h && 'domain' in h) found.add(h.domain);
  }
  return [...found].sort();
}

/**
 * Refuses a key that opens none of a store's encrypted repositories (`domains`: those the store holds): check,
 * stats, disks and prune would otherwise report success over only what needs no key.
 */
export function checkKeyOpensOne(location: string, domains: string[], key: EncryptionKey | undefined): void {
  const sealed = domains.filter((d) => d !== PLAIN_DOMAIN);
  if (!key || sealed.length === 0 || sealed.includes(key.domain)) return;
  throw new RnodeError(
    ErrorCodes.KEY_MISMATCH,
    `no repository in ${location} is encrypted with the key given (key id ${key.keyId}); its encrypted repositories (${sealed.join(', ')}) need the key their points were written with`,
    { details: { keyId: key.keyId } },
  );
}

/** Disk ids with legacy points (one listing of disks/). */
export async function listLegacyDisks(store: ObjectStore): Promise<string[]> {
  const found = new Set<string>();
  for await (const o of store.list(layout.disksPrefix)) {
    const h = classify(o.key);
    if (h?.kind === 'legacy-manifest') found.add(h.disk);
  }
  return [...found].sort();
}

/** Every disk of a domain with its objects, from one listing of r2/<domain>/disks/. */
export async function listV2Disks(store: ObjectStore, domain: string): Promise<Map<string, V2DiskObjects>> {
  return collectV2Disks(store, r2.disksPrefix(domain), domain);
}

/** One disk's objects in the key's domain, from one listing of its prefix. */
export async function listV2Disk(store: ObjectStore, disk: string, key?: EncryptionKey): Promise<V2DiskObjects> {
  const domain = Domain.of(key);
  const dname = domain.dname(disk);
  return (await collectV2Disks(store, r2.diskPrefix(domain.name, dname), domain.name)).get(dname) ?? { dname, points: [], pending: [], segments: [] };
}

async function collectV2Disks(store: ObjectStore, prefix: string, domain: string): Promise<Map<string, V2DiskObjects>> {
  const disks = new Map<string, V2DiskObjects>();
  for await (const o of store.list(prefix)) {
    const h = classify(o.key);
    if (!h || !('dname' in h) || h.domain !== domain) continue;
    let d = disks.get(h.dname);
    if (!d) disks.set(h.dname, (d = { dname: h.dname, points: [], pending: [], segments: [] }));
    if (h.kind === 'manifest') d.points.push(h.point);
    else if (h.kind === 'pending') d.pending.push(h.point);
    else if (h.kind === 'table') d.segments.push({ key: o.key, point: h.point, generation: h.generation, segment: h.segment });
  }
  for (const d of disks.values()) {
    d.points.sort((a, b) => a - b);
    d.pending.sort((a, b) => a - b);
  }
  return disks;
}

/**
 * The disk id behind a disk name listed in the key's domain. `plain`: the name. Encrypted (names are keyed, one-way):
 * read from the newest manifest (else checkpoint) and checked twice, so a manifest moved under another disk's name
 * is refused: here the name must be the keyed name of the id it holds (METADATA_FORGED otherwise), and whoever reads
 * the object next opens it under that id (its envelope binds the id). undefined when the disk has neither (only the
 * tables of a first checkpoint in flight), or only checkpoints that do not name their disk.
 */
export async function v2DiskId(store: ObjectStore, d: V2DiskObjects, key?: EncryptionKey): Promise<string | undefined> {
  if (!key) return d.dname;
  const domain = Domain.of(key);
  const candidates = [
    ...[...d.points].reverse().map((p) => ({ what: r2.point(domain.name, d.dname, p), checkpoint: false })),
    ...[...d.pending].reverse().map((p) => ({ what: r2.pending(domain.name, d.dname, p), checkpoint: true })),
  ];
  for (const { what, checkpoint } of candidates) {
    let bytes: Buffer;
    try {
      bytes = await store.get(what);
    } catch (err) {
      if (isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) continue;
      throw err;
    }
    const body = key.peekMetadataUnauthenticated(bytes.subarray(ENVELOPE_HEADER_BYTES));
    let disk: unknown;
    try {
      disk = JSON.parse(body?.toString('utf8') ?? '').disk;
    } catch {
      disk = undefined;
    }
    if (typeof disk === 'string' && keyedNameOf(domain, disk) === d.dname) return disk;
    // A checkpoint need not name its disk; a manifest always does.
    if (disk === undefined && checkpoint) continue;
    throw new RnodeError(
      ErrorCodes.METADATA_FORGED,
      `${what} does not belong to its disk name (moved, forged, or sealed with another key); run "rnode check"`,
      { details: { key: what } },
    );
  }
  return undefined;
}

function keyedNameOf(domain: Domain, disk: string): string | undefined {
  try {
    return domain.dname(disk);
  } catch {
    return undefined; // not a valid disk id: no disk's name
  }
}

/** The checkpoint of a point being written to the disk (authenticated in an encrypted domain), or undefined if none. */
export async function loadV2Checkpoint(store: ObjectStore, disk: string, seq: number, key?: EncryptionKey): Promise<unknown> {
  const domain = Domain.of(key);
  let bytes: Buffer;
  try {
    bytes = await store.get(r2.pending(domain.name, domain.dname(disk), seq));
  } catch (err) {
    if (isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) return undefined;
    throw err;
  }
  return decodePendingV2(bytes, domain, disk, seq);
}
