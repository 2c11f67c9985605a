// Reading committed points: list a disk's manifests, load one, resolve "latest" or a number.
import { ErrorCodes, RnodeError, isRnodeError } from '../errors.js';
import { layout, seqFromKey } from '../format/layout.js';
import { decodeManifest, type PointManifest } from '../format/manifest.js';
import type { ObjectStore } from '../store/types.js';

export async function listPointSeqs(store: ObjectStore, disk: string): Promise<number[]> {
  const seqs: number[] = [];
  for await (const o of store.list(layout.pointsPrefix(disk))) {
    const s = seqFromKey(o.key);
    if (s !== undefined) seqs.push(s);
  }
  return seqs.sort((a, b) => a - b);
}

export async function loadPoint(store: ObjectStore, disk: string, seq: number): Promise<PointManifest> {
  const key = layout.point(disk, seq);
  let bytes: Buffer;
  try {
    bytes = await store.get(key);
  } catch (err) {
    if (isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) {
      throw new RnodeError(ErrorCodes.POINT_NOT_FOUND, `point ${seq} of disk ${disk} does not exist; list points with "rnode points"`);
    }
    throw err;
  }
  const m = decodeManifest(bytes, key);
  if (m.point !== seq || m.disk !== disk) {
    throw new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `manifest ${key} names point ${m.point} of disk ${m.disk}; the store is damaged`);
  }
  return m;
}

export async function listPoints(store: ObjectStore, disk: string): Promise<PointManifest[]> {
  const out: PointManifest[] = [];
  for (const s of await listPointSeqs(store, disk)) out.push(await loadPoint(store, disk, s));
  return out;
}

/** "latest", undefined or a point number → an existing point's number. */
export async function resolvePoint(store: ObjectStore, disk: string, which: string | undefined): Promise<number> {
  const seqs = await listPointSeqs(store, disk);
  if (seqs.length === 0) {
    throw new RnodeError(ErrorCodes.DISK_NOT_FOUND, `disk ${disk} has no committed points in ${store.location}; check --disk and --store`);
  }
  if (which === undefined || which === 'latest') return seqs[seqs.length - 1];
  if (!/^\d+$/.test(which)) {
    throw new RnodeError(ErrorCodes.USAGE, `--point "${which}" is not a point number; pass a number from "rnode points" or "latest"`);
  }
  const n = Number(which);
  if (!seqs.includes(n)) {
    throw new RnodeError(ErrorCodes.POINT_NOT_FOUND,
      `point ${which} of disk ${disk} does not exist; existing points: ${seqs.join(', ')} (or "latest")`);
  }
  return n;
}

/** The point and its ancestors, newest first, each checked to be a consistent delta of the next. */
export async function loadChain(store: ObjectStore, disk: string, seq: number): Promise<PointManifest[]> {
  const chain: PointManifest[] = [];
  let m: PointManifest | undefined = await loadPoint(store, disk, seq);
  while (m) {
    chain.push(m);
    if (m.parent === null) break;
    if (m.parent >= m.point) throw new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `point ${m.point} names a later parent ${m.parent}; the store is damaged`);
    const parent: PointManifest = await loadPoint(store, disk, m.parent).catch((err) => {
      if (isRnodeError(err, ErrorCodes.POINT_NOT_FOUND)) {
        throw new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `point ${m!.point} needs point ${m!.parent}, which is missing; the store is damaged`);
      }
      throw err;
    });
    if (parent.diskSize !== m.diskSize || parent.chunkSize !== m.chunkSize) {
      throw new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `point ${m.point} and its parent ${parent.point} disagree on disk geometry; the store is damaged`);
    }
    m = parent;
  }
  return chain;
}
