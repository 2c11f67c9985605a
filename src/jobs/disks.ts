// The disks a store holds, each with its number of points and its latest one: what an operator at the recovery
// site reads first, holding only the store. An encrypted repository's disk names are keyed (one-way), so its disks
// are listed with its key only; without it they are counted, never guessed.
import type { EncryptionKey } from '../crypto/keys.js';
import { ErrorCodes, RnodeError, isRnodeError } from '../errors.js';
import type { PointEncryption } from '../format/manifest.js';
import { PLAIN_DOMAIN } from '../repository/names.js';
import { checkKeyOpensOne, listDomains, listLegacyDisks, listLegacyPointSeqs, listV2Disks, loadPoint, v2DiskId } from '../repository/points.js';
import type { ObjectStore } from '../store/types.js';

export interface DiskSummary {
  disk: string;
  /** Committed points (legacy and repository v2 together). */
  points: number;
  latest: number;
  createdAt: string;
  diskSize: number;
  encryption?: PointEncryption;
}

export interface DiskList {
  disks: DiskSummary[];
  /** Encrypted repositories whose disks need another key (or one): how many disks each holds. */
  unlisted: { domain: string; disks: number }[];
  /** Disks whose latest point could not be read (damaged, forged): named, so one does not hide the others. */
  problems: { disk: string; code: string; message: string }[];
}

export async function listDisks(store: ObjectStore, key?: EncryptionKey): Promise<DiskList> {
  const found = new Map<string, { seqs: Set<number>; key?: EncryptionKey }>();
  const unlisted: DiskList['unlisted'] = [];
  const problems: DiskList['problems'] = [];
  const domains = await listDomains(store);
  checkKeyOpensOne(store.location, domains, key);
  for (const domain of domains) {
    const disks = [...(await listV2Disks(store, domain)).values()].filter((d) => d.points.length > 0);
    if (disks.length === 0) continue;
    const k = domain === PLAIN_DOMAIN ? undefined : domain === key?.domain ? key : null;
    if (k === null) {
      unlisted.push({ domain, disks: disks.length });
      continue;
    }
    for (const d of disks) {
      let id: string | undefined;
      try {
        id = await v2DiskId(store, d, k);
      } catch (err) {
        if (!(err instanceof RnodeError)) throw err;
        problems.push({ disk: `${domain}/${d.dname}`, code: err.code, message: err.message });
        continue;
      }
      if (id !== undefined) found.set(id, { seqs: new Set(d.points), key: k });
    }
  }
  // Legacy points share the disk's numbering; an encrypted legacy point is read with the key given (if any).
  for (const id of await listLegacyDisks(store)) {
    const seqs = await listLegacyPointSeqs(store, id);
    const f = found.get(id) ?? { seqs: new Set<number>(), key };
    for (const s of seqs) f.seqs.add(s);
    if (f.seqs.size > 0) found.set(id, f);
  }
  const disks: DiskSummary[] = [];
  for (const [disk, f] of [...found].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    const latest = Math.max(...f.seqs);
    let m;
    try {
      m = await loadPoint(store, disk, latest, f.key);
    } catch (err) {
      // A legacy point sealed with another key: counted like the disks of another repository.
      if (isRnodeError(err, ErrorCodes.KEY_REQUIRED) || isRnodeError(err, ErrorCodes.KEY_MISMATCH)) {
        const legacy = unlisted.find((u) => u.domain === 'legacy');
        if (legacy) legacy.disks++;
        else unlisted.push({ domain: 'legacy', disks: 1 });
        continue;
      }
      if (!(err instanceof RnodeError)) throw err;
      problems.push({ disk, code: err.code, message: err.message });
      continue;
    }
    disks.push({
      disk,
      points: f.seqs.size,
      latest,
      createdAt: m.createdAt,
      diskSize: m.diskSize,
      ...(m.encryption ? { encryption: m.encryption } : {}),
    });
  }
  return { disks, unlisted, problems };
}
