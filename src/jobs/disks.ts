// The disks a store holds, each with its number of points and its latest one: what an operator at the recovery
// site reads first, holding only the store. An encrypted repository's disk names are keyed (one-way), so its disks
// are listed with its key only; without it they are counted, never guessed.
import pLimit from 'p-limit';
import type { EncryptionKey } from '../crypto/keys.js';
import { ErrorCodes, RnodeError } from '../errors.js';
import type { PointEncryption } from '../format/manifest.js';
import { PLAIN_DOMAIN } from '../repository/names.js';
import {
  checkKeyOpensOne,
  listDomains,
  listLegacyDisks,
  listLegacyPointSeqs,
  listV2Disks,
  loadPoint,
  refuseLegacyAfterUpgrade,
  v2DiskId,
} from '../repository/points.js';
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

// Each disk costs a get or two: a store with a thousand disks at an object store's 20 ms a get took 22 s one by one.
const DISK_READS_IN_FLIGHT = 16;

/** The value, or the RnodeError it failed with (other errors are thrown): one disk's problem does not stop the list. */
async function settled<T>(p: Promise<T>): Promise<T | RnodeError> {
  try {
    return await p;
  } catch (err) {
    if (err instanceof RnodeError) return err;
    throw err;
  }
}

export async function listDisks(store: ObjectStore, key?: EncryptionKey): Promise<DiskList> {
  const limit = pLimit(DISK_READS_IN_FLIGHT);
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
    const ids = await Promise.all(disks.map((d) => limit(() => settled(v2DiskId(store, d, k)))));
    disks.forEach((d, i) => {
      const id = ids[i];
      if (id instanceof RnodeError) {
        problems.push({ disk: `${domain}/${d.dname}`, code: id.code, message: id.message });
        return;
      }
      if (id === undefined) return;
      // One id in the plain and the key's repository: a claim deleted or replaced, then a key-less writer. The
      // encrypted disk is the one its claim was written for: it is listed, and the conflict named, hiding neither.
      const other = found.get(id);
      if (other) {
        const plainSeqs = [...(k ? other.seqs : d.points)].sort((a, b) => a - b);
        problems.push({
          disk: id,
          code: ErrorCodes.METADATA_FORGED,
          message:
            `disk ${id} has unencrypted points (${plainSeqs.join(', ')}) beside its points encrypted with the key given ` +
            `(key id ${key!.keyId}): its claim was deleted or replaced and a writer without the key wrote them; the encrypted ` +
            'points are listed. Check who can write the store before trusting the unencrypted ones',
        });
        if (!k) return;
      }
      found.set(id, { seqs: new Set(d.points), key: k });
    });
  }
  // Legacy points share the disk's numbering; an encrypted legacy point is read with the key given (if any).
  const legacyDisks = await listLegacyDisks(store);
  const legacySeqs = await Promise.all(legacyDisks.map((id) => limit(() => listLegacyPointSeqs(store, id))));
  for (const [i, id] of legacyDisks.entries()) {
    const seqs = legacySeqs[i];
    const f = found.get(id) ?? { seqs: new Set<number>(), key };
    try {
      refuseLegacyAfterUpgrade(
        id,
        seqs,
        [...f.seqs].sort((a, b) => a - b),
      );
    } catch (err) {
      if (!(err instanceof RnodeError)) throw err;
      problems.push({ disk: id, code: err.code, message: err.message });
      found.delete(id);
      continue;
    }
    for (const s of seqs) f.seqs.add(s);
    if (f.seqs.size > 0) found.set(id, f);
  }
  const disks: DiskSummary[] = [];
  const sorted = [...found].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  const latests = await Promise.all(sorted.map(([disk, f]) => limit(() => settled(loadPoint(store, disk, Math.max(...f.seqs), f.key)))));
  for (const [i, [disk, f]] of sorted.entries()) {
    const latest = Math.max(...f.seqs);
    const m = latests[i];
    if (m instanceof RnodeError) {
      const err = m;
      // A legacy point sealed with another key: counted like the disks of another repository.
      if (err.code === ErrorCodes.KEY_REQUIRED || err.code === ErrorCodes.KEY_MISMATCH) {
        const legacy = unlisted.find((u) => u.domain === 'legacy');
        if (legacy) legacy.disks++;
        else unlisted.push({ domain: 'legacy', disks: 1 });
        continue;
      }
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
