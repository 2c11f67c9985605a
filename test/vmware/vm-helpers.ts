// Shared by the VM tests: deterministic data, a 3-disk VM, and a VM point restore checked against the snapshot.
import type { Test } from 'tap';
import { createCipheriv, createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { EncryptionKey } from '../../src/crypto/keys.js';
import { recoverVm } from '../../src/jobs/vm.js';
import { loadVmPoint } from '../../src/repository/vm-points.js';
import { KiB, MiB, fingerprintOf, snapshotFingerprints, type VmwareEnv } from './harness.js';

export function randomData(length: number, seed: number): Buffer {
  const key = createHash('sha256').update(`rnode-vm-${seed}`).digest().subarray(0, 16);
  return createCipheriv('aes-128-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(length));
}

export const THREE = [
  { key: 2000, size: 8 * MiB },
  { key: 2001, size: 4 * MiB },
  { key: 2002, size: 6 * MiB + 512 },
];

export function fill(env: VmwareEnv, vm: string, seed: number): void {
  const has = (k: number) => env.sim.vms.get(vm)!.disks.some((d) => d.key === k);
  env.sim.writeToVmDisk(vm, 2000, 0, randomData(2 * MiB, seed));
  env.sim.writeToVmDisk(vm, 2001, 1 * MiB, randomData(1 * MiB, seed + 1));
  if (has(2002)) env.sim.writeToVmDisk(vm, 2002, 6 * MiB - 64 * KiB, randomData(64 * KiB + 512, seed + 2));
}

/** Restores a VM point with recoverVm and compares every disk with the snapshot the sim froze. */
export async function expectVmRestore(t: Test, env: VmwareEnv, vm: string, seq: number, encryption?: EncryptionKey): Promise<void> {
  const p = await loadVmPoint(env.store, vm, seq, encryption);
  const out = path.join(env.dir, `restore-${vm}-${seq}`);
  const r = await recoverVm({ store: env.store, vm, point: String(seq), outDir: out, encryption });
  const want = snapshotFingerprints(env, p.snapshot.moref);
  for (const d of r.disks)
    t.equal(fingerprintOf(d.out), want.get(d.key), `VM point ${seq}: disk ${d.key} restores byte-exact as snapshot ${p.snapshot.moref} saw it`);
  t.equal(JSON.parse(fs.readFileSync(r.configFile, 'utf8')).seq, seq, 'the VM point is written beside the disks');
  fs.rmSync(out, { recursive: true });
}
