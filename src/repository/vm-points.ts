// VM points: what ties the disk points of one VM snapshot together. A VM point is written only after every
// selected disk committed its point, so a VM point never names a point that is not there; disk points of a
// run that did not finish are recorded as partial (they belong to no VM point). Keys come from vmLayout.
import { ErrorCodes, RnodeError, isRnodeError } from '../errors.js';
import { readClaim } from './claims.js';
import { domainName } from './domain.js';
import { EnvelopeKind, envelopeContext, openEnvelope, sealEnvelope } from './envelope.js';
import { PLAIN_DOMAIN, classify, seqFromKey, validateDiskId, vmLayout } from './names.js';
import type { EncryptionKey } from '../crypto/keys.js';
import type { ObjectStore } from '../store/types.js';

export type Consistency = 'application' | 'crash';

/**
 * A VM point of encrypted disks as stored: the VM point (disk ids, VMDK paths, the VM's config) sealed under the
 * disks' key, bound to the VM and the point's number; only the key id shows. VM points of encrypted disks were plain
 * JSON with a MAC, which kept them from being edited but left what they name readable in the bucket.
 */
interface SealedVmPoint {
  format: 'rnode-vm-point-sealed';
  version: 1;
  vm: string;
  seq: number;
  keyId: string;
  /** The VmPoint's JSON in a metadata envelope (envelope.ts), base64. */
  sealed: string;
}

export interface VmPointDisk {
  /** The device key in the VM (2000, 2001...). */
  key: number;
  /** The disk id its points are stored under, and the point of it that belongs to this VM point. */
  disk: string;
  point: number;
  label: string;
  fileName: string;
  capacityBytes: number;
  changeId?: string;
  /** VDDK's transport for the read (nbdssl, nbd, hotadd, san). */
  transport: string;
  /** Why the whole disk was read (first point, added, resized, CBT reset...). */
  fullReason?: string;
  rescanReason?: string;
}

export interface VmPoint {
  format: 'rnode-vm-point';
  version: 1;
  vm: string;
  vmName: string;
  seq: number;
  snapshot: { moref: string; name: string; createdAt: string };
  /** application: VMware Tools quiesced the guest; crash: as after a power cut. */
  consistency: Consistency;
  /** Why it is crash-consistent although quiesce was asked for. */
  consistencyReason?: string;
  disks: VmPointDisk[];
  /** Disks of the VM that are not in this point, and why (independent, RDM physical, not selected). */
  skipped: Array<{ key: number; label: string; reason: string }>;
  /** Disks of the previous VM point the VM no longer has; their points are kept. */
  removed: Array<{ key: number; disk: string; reason: string }>;
  /** The VM's configuration (VirtualMachineConfigInfo) at the snapshot, as vSphere returned it. */
  config: unknown;
  committedAt: string;
  /**
   * Encrypted disks: HMAC-SHA256 (hex) under the metadata subkey of the JSON text without this field, bound to the
   * VM and the point's number, so a VM point cannot be edited, replayed or moved without the key.
   */
  mac?: string;
}

function vmPointMac(p: VmPoint, key: EncryptionKey): string {
  const { mac: _mac, ...rest } = p;
  return key.metaMac({ kind: 'vm-point', disk: p.vm, point: p.seq }, Buffer.from(JSON.stringify(rest))).toString('hex');
}

export interface PartialVmRun {
  format: 'rnode-vm-partial';
  vm: string;
  snapshot: string;
  at: string;
  /** Disk points that committed in this run; they are in no VM point. */
  committed: Array<{ key: number; disk: string; point: number }>;
  failed: Array<{ key: number; disk: string; code: string; message: string }>;
}

function validateVm(vm: string): string {
  try {
    return validateDiskId(vm);
  } catch {
    throw new RnodeError(ErrorCodes.USAGE, `"${vm}" is not a VM MoRef (e.g. vm-42)`);
  }
}

export async function listVmPointSeqs(store: ObjectStore, vm: string): Promise<number[]> {
  const seqs: number[] = [];
  for await (const o of store.list(vmLayout.pointsPrefix(validateVm(vm)))) {
    const s = seqFromKey(o.key);
    if (s !== undefined) seqs.push(s);
  }
  return seqs.sort((a, b) => a - b);
}

/** With the disks' key, the VM point's MAC is checked (a missing one is a forgery: its disks are encrypted). */
export async function loadVmPoint(store: ObjectStore, vm: string, seq: number, encryption?: EncryptionKey): Promise<VmPoint> {
  const key = vmLayout.point(validateVm(vm), seq);
  let bytes: Buffer;
  try {
    bytes = await store.get(key);
  } catch (err) {
    if (isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) {
      throw new RnodeError(ErrorCodes.POINT_NOT_FOUND, `VM point ${seq} of ${vm} does not exist; list them with "rnode points --vm ${vm}"`);
    }
    throw err;
  }
  let p: VmPoint;
  try {
    p = JSON.parse(bytes.toString('utf8')) as VmPoint;
  } catch (err) {
    throw new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `VM point ${key} is not valid JSON; the store is damaged`, { cause: err });
  }
  // Sealed: authentic once opened. Else plain JSON, with a MAC where its disks are encrypted (an rnode before sealing).
  const sealed = (p as unknown as SealedVmPoint).format === 'rnode-vm-point-sealed';
  if (sealed) p = openSealedVmPoint(p as unknown as SealedVmPoint, key, vm, seq, encryption);
  if (p.format !== 'rnode-vm-point' || p.vm !== vm || p.seq !== seq || !Array.isArray(p.disks)) {
    throw new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `VM point ${key} does not describe point ${seq} of ${vm}; the store is damaged`);
  }
  if (p.version !== 1) throw new RnodeError(ErrorCodes.FORMAT_VERSION, `VM point ${key} has version ${p.version}; this rnode reads version 1`);
  if (encryption && !sealed && (typeof p.mac !== 'string' || p.mac !== vmPointMac(p, encryption))) {
    // Sealed with another key (or none) is a wrong key, as for a disk; forged only if its disks are the key's.
    await checkVmKey(
      store,
      vm,
      p.disks.map((d) => d.disk),
      encryption,
    );
    throw new RnodeError(
      ErrorCodes.METADATA_FORGED,
      `VM point ${key} ${p.mac === undefined ? 'is not authenticated although its disks are encrypted' : 'fails its MAC'}: it was modified, moved or forged; restore another VM point or from another store`,
      { details: { key } },
    );
  }
  return p;
}

function openSealedVmPoint(s: SealedVmPoint, key: string, vm: string, seq: number, encryption: EncryptionKey | undefined): VmPoint {
  if (s.vm !== vm || s.seq !== seq || typeof s.sealed !== 'string' || typeof s.keyId !== 'string') {
    throw new RnodeError(ErrorCodes.MANIFEST_CORRUPT, `VM point ${key} does not describe point ${seq} of ${vm}; the store is damaged`);
  }
  if (!encryption) {
    throw new RnodeError(
      ErrorCodes.KEY_REQUIRED,
      `the disks of VM ${vm} are encrypted (key id ${s.keyId}); pass their key with --encryption-key-file (agent jobs: encryption.key)`,
      { details: { vm, keyId: s.keyId } },
    );
  }
  if (s.keyId !== encryption.keyId) {
    throw new RnodeError(
      ErrorCodes.KEY_MISMATCH,
      `the key given (key id ${encryption.keyId}) is not the key the disks of VM ${vm} are encrypted with (key id ${s.keyId}); pass that key`,
      { details: { vm, keyId: s.keyId } },
    );
  }
  const body = openEnvelope(
    Buffer.from(s.sealed, 'base64'),
    EnvelopeKind.VM_POINT,
    envelopeContext.vmPoint(encryption.domain, vm, seq),
    key,
    encryption,
  );
  let p: VmPoint;
  try {
    p = JSON.parse(body.toString('utf8')) as VmPoint;
  } catch (err) {
    throw new RnodeError(ErrorCodes.METADATA_FORGED, `VM point ${key} holds no VM point; restore another VM point or from another store`, {
      cause: err,
    });
  }
  return p;
}

/**
 * Throws KEY_REQUIRED or KEY_MISMATCH when the VM's disks are not in the key's repository (encrypted and no key,
 * another key, or a key for unencrypted disks): their claims say which key they are encrypted with. VM point
 * records carry no key id, and a record sealed with another key would otherwise look forged.
 */
export async function checkVmKey(store: ObjectStore, vm: string, disks: string[], key: EncryptionKey | undefined): Promise<void> {
  for (const disk of new Set(disks)) {
    const claim = await readClaim(store, disk);
    if (!claim || claim.domain === domainName(key)) continue;
    if (!key) {
      throw new RnodeError(
        ErrorCodes.KEY_REQUIRED,
        `the disks of VM ${vm} are encrypted (key id ${claim.keyId}); pass their key with --encryption-key-file (agent jobs: encryption.key)`,
        { details: { vm, disk, keyId: claim.keyId } },
      );
    }
    if (claim.domain === PLAIN_DOMAIN) {
      throw new RnodeError(ErrorCodes.KEY_MISMATCH, `the disks of VM ${vm} are not encrypted; leave out the encryption key`, {
        details: { vm, disk },
      });
    }
    throw new RnodeError(
      ErrorCodes.KEY_MISMATCH,
      `the key given (key id ${key.keyId}) is not the key the disks of VM ${vm} are encrypted with (key id ${claim.keyId}); pass that key`,
      { details: { vm, disk, keyId: claim.keyId } },
    );
  }
}

/** checkVmKey for a VM point's disks; without a key, a VM point with a MAC (of encrypted disks) is KEY_REQUIRED too. */
export async function checkVmPointKey(store: ObjectStore, p: VmPoint, key: EncryptionKey | undefined): Promise<void> {
  await checkVmKey(
    store,
    p.vm,
    p.disks.map((d) => d.disk),
    key,
  );
  if (!key && p.mac !== undefined) {
    throw new RnodeError(
      ErrorCodes.KEY_REQUIRED,
      `VM point ${p.seq} of ${p.vm} is of encrypted disks; pass their key with --encryption-key-file (agent jobs: encryption.key)`,
      { details: { vm: p.vm } },
    );
  }
}

/**
 * The VM points (of every VM in the store) that use one of `points` of `disk`: what a retention of that disk alone
 * would leave without a disk. A VM point that cannot be read (damaged, or sealed under another key than the disk's)
 * is left out: it restores nothing of this disk either way.
 */
export async function vmPointsUsing(
  store: ObjectStore,
  disk: string,
  points: number[],
  encryption?: EncryptionKey,
): Promise<Array<{ vm: string; seq: number; point: number }>> {
  const wanted = new Set(points);
  const uses: Array<{ vm: string; seq: number; point: number }> = [];
  if (wanted.size === 0) return uses;
  for await (const o of store.list(vmLayout.vmsPrefix)) {
    const m = /^vms\/([^/]+)\/points\/(\d+)\.json$/.exec(o.key);
    if (!m) continue;
    const p = await loadVmPoint(store, m[1], Number(m[2]), encryption).catch(() => undefined);
    for (const d of p?.disks ?? []) if (d.disk === disk && wanted.has(d.point)) uses.push({ vm: p!.vm, seq: p!.seq, point: d.point });
  }
  return uses;
}

/**
 * The newest VM point whose record can be read, what a VM run plans from; a damaged record newer than it is named in
 * warnings. A damaged latest record stopped every later run of the VM for good (RNODE_MANIFEST_CORRUPT).
 */
export async function latestReadableVmPoint(
  store: ObjectStore,
  vm: string,
  encryption: EncryptionKey | undefined,
  warnings: string[],
): Promise<VmPoint | undefined> {
  const seqs = await listVmPointSeqs(store, vm);
  for (let i = seqs.length - 1; i >= 0; i--) {
    try {
      return await loadVmPoint(store, vm, seqs[i], encryption);
    } catch (err) {
      if (!isRnodeError(err, ErrorCodes.MANIFEST_CORRUPT)) throw err;
      warnings.push(
        `${err.message}: this run plans from the VM point before it; the next prune --vm deletes it once it is older than the VM points kept`,
      );
    }
  }
  return undefined;
}

/** A VM's VM points, with the records that cannot be read (damaged, forged) named apart: they hide no other point. */
export async function listVmPointsOf(
  store: ObjectStore,
  vm: string,
  encryption?: EncryptionKey,
): Promise<{ points: VmPoint[]; problems: Array<{ vmPoint: number; code: string; message: string }> }> {
  const points: VmPoint[] = [];
  const problems: Array<{ vmPoint: number; code: string; message: string }> = [];
  for (const s of await listVmPointSeqs(store, vm)) {
    try {
      points.push(await loadVmPoint(store, vm, s, encryption));
    } catch (err) {
      if (isRnodeError(err, ErrorCodes.POINT_NOT_FOUND)) continue; // deleted by a prune since it was listed
      if (!isRnodeError(err, ErrorCodes.MANIFEST_CORRUPT) && !isRnodeError(err, ErrorCodes.METADATA_FORGED)) throw err;
      problems.push({ vmPoint: s, code: err.code, message: err.message });
    }
  }
  return { points, problems };
}

/** "latest", undefined or a number → an existing VM point's number. */
export async function resolveVmPoint(store: ObjectStore, vm: string, which: string | undefined): Promise<number> {
  const seqs = await listVmPointSeqs(store, vm);
  if (seqs.length === 0) throw new RnodeError(ErrorCodes.DISK_NOT_FOUND, `VM ${vm} has no VM points in ${store.location}; check --vm and --store`);
  if (which === undefined || which === 'latest') return seqs[seqs.length - 1];
  // As for a disk's --point (resolvePoint): a word is the command line's mistake (exit 2), a number the store's answer.
  if (!/^\d+$/.test(which)) {
    throw new RnodeError(ErrorCodes.USAGE, `--point "${which}" is not a VM point number; pass a number from "rnode points --vm ${vm}" or "latest"`);
  }
  if (!seqs.includes(Number(which))) {
    throw new RnodeError(ErrorCodes.POINT_NOT_FOUND, `VM point ${which} of ${vm} does not exist; existing: ${seqs.join(', ')} (or "latest")`);
  }
  return Number(which);
}

/**
 * Writes the next VM point (seq = newest + 1, created only if absent). Called once every disk point of it has
 * committed: the VM point is the commit of the VM run.
 */
export async function commitVmPoint(
  store: ObjectStore,
  point: Omit<VmPoint, 'format' | 'version' | 'seq' | 'committedAt' | 'mac'>,
  encryption?: EncryptionKey,
): Promise<VmPoint> {
  const vm = validateVm(point.vm);
  for (let attempt = 0; ; attempt++) {
    const seqs = await listVmPointSeqs(store, vm);
    const seq = (seqs.at(-1) ?? 0) + 1;
    const full: VmPoint = { format: 'rnode-vm-point', version: 1, ...point, seq, committedAt: new Date().toISOString() };
    const stored: VmPoint | SealedVmPoint = encryption
      ? {
          format: 'rnode-vm-point-sealed',
          version: 1,
          vm,
          seq,
          keyId: encryption.keyId,
          sealed: sealEnvelope(
            EnvelopeKind.VM_POINT,
            envelopeContext.vmPoint(encryption.domain, vm, seq),
            Buffer.from(JSON.stringify(full)),
            encryption,
          ).toString('base64'),
        }
      : full;
    try {
      await store.put(vmLayout.point(vm, seq), Buffer.from(JSON.stringify(stored)), { ifNoneMatch: true });
      return full;
    } catch (err) {
      if (!isRnodeError(err, ErrorCodes.STORE_PRECONDITION) || attempt >= 3) throw err;
    }
  }
}

/**
 * Records disk points of a run that failed for another disk: they are in no VM point (the next run repairs that).
 * Of encrypted disks, sealed as a VM point is (it names disk ids and holds the disks' errors).
 */
export async function recordPartialVmRun(store: ObjectStore, run: Omit<PartialVmRun, 'format' | 'at'>, encryption?: EncryptionKey): Promise<string> {
  const vm = validateVm(run.vm);
  const after = (await listVmPointSeqs(store, vm)).at(-1) ?? 0;
  const key = vmLayout.partial(vm, after, Date.now());
  const record = Buffer.from(JSON.stringify({ format: 'rnode-vm-partial', ...run, at: new Date().toISOString() } satisfies PartialVmRun));
  const stored = encryption
    ? Buffer.from(
        JSON.stringify({
          format: 'rnode-vm-partial-sealed',
          keyId: encryption.keyId,
          sealed: sealEnvelope(EnvelopeKind.VM_POINT, envelopeContext.vmPartial(encryption.domain, key), record, encryption).toString('base64'),
        }),
      )
    : record;
  await store.put(key, stored);
  return key;
}

/** The partial runs of a VM; the sealed ones need their key (they are skipped without it, or with another). */
export async function listPartialVmRuns(store: ObjectStore, vm: string, encryption?: EncryptionKey): Promise<PartialVmRun[]> {
  const out: PartialVmRun[] = [];
  for await (const o of store.list(vmLayout.partialPrefix(validateVm(vm)))) {
    const r = JSON.parse((await store.get(o.key)).toString('utf8')) as
      PartialVmRun | { format: 'rnode-vm-partial-sealed'; keyId: string; sealed: string };
    if (r.format !== 'rnode-vm-partial-sealed') out.push(r);
    else if (encryption && r.keyId === encryption.keyId) {
      const body = openEnvelope(
        Buffer.from(r.sealed, 'base64'),
        EnvelopeKind.VM_POINT,
        envelopeContext.vmPartial(encryption.domain, o.key),
        o.key,
        encryption,
      );
      out.push(JSON.parse(body.toString('utf8')) as PartialVmRun);
    }
  }
  return out;
}

/** Deletes VM point records (not the disk points: the caller prunes those afterwards). */
export async function deleteVmPoints(store: ObjectStore, vm: string, seqs: number[]): Promise<void> {
  for (const s of [...seqs].sort((a, b) => a - b)) await store.delete(vmLayout.point(validateVm(vm), s));
}

/** Partial-run records made before VM point `upTo` was committed are obsolete once it is pruned away. */
export async function deletePartialRunsBefore(store: ObjectStore, vm: string, upTo: number): Promise<number> {
  let n = 0;
  for await (const o of store.list(vmLayout.partialPrefix(validateVm(vm)))) {
    const h = classify(o.key);
    if (h?.kind === 'vm-partial' && h.after < upTo) {
      await store.delete(o.key);
      n++;
    }
  }
  return n;
}
