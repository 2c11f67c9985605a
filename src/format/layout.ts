// Where everything lives in a store. One disk's objects share the prefix disks/<disk>/:
//   points/<seq>.json          committed point manifests (written last, atomically)
//   tables/<seq>/g<gen>-<n>    chunk-table segments of point <seq> (generation bumps when prune rebases it)
//   chunks/<seq>/<index>       chunk objects written by point <seq>
//   pending/<seq>.json         checkpoint of a point being written (resume after a crash or a cut)
//   lease.json                 the one-writer-per-disk lease
//   encryption.json            the disk's encryption marker: written (authenticated) before its first authenticated
//                              encrypted point, so key-less writers and down-versioned points are refused
import { ErrorCodes, RnodeError } from '../errors.js';

const DISK_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export function validateDiskId(disk: string): string {
  if (!DISK_ID.test(disk)) {
    throw new RnodeError(ErrorCodes.BAD_DISK_ID,
      `disk id "${disk}" is not valid: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit (pass --disk)`);
  }
  return disk;
}

const pad = (n: number, w: number) => String(n).padStart(w, '0');

export const layout = {
  diskPrefix: (disk: string) => `disks/${disk}/`,
  pointsPrefix: (disk: string) => `disks/${disk}/points/`,
  point: (disk: string, seq: number) => `disks/${disk}/points/${pad(seq, 10)}.json`,
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

/** Sequence number from a points/ or pending/ key, or undefined for anything else. */
export function seqFromKey(key: string): number | undefined {
  const m = /\/(\d{10})\.json$/.exec(key);
  return m ? Number(m[1]) : undefined;
}

/** Chunk object key → {writer, index}, or undefined. */
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
