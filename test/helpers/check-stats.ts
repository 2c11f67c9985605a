// Shared by the stats/check CLI tests: a store written by replicate with two clones of one image in the plain
// repository and one encrypted disk. The store is written once per test file through the library (the CLI's
// replicate is covered by test/core/cli.test.ts); a test that damages or prunes it works on its own copy.
import type { Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { readKeyFile } from '../../src/crypto/keys.js';
import { fsStore, KiB, MiB, randomData, snap, textData, tmpDir } from './images.js';

export const SIZE = 2 * MiB;

export interface CheckStatsStore {
  dir: string;
  storeDir: string;
  img: string;
  keyFile: string;
}

export function packFiles(storeDir: string, domain: string): string[] {
  const root = path.join(storeDir, 'r2', domain, 'packs');
  if (!fs.existsSync(root)) return [];
  return fs.readdirSync(root).flatMap((xx) => fs.readdirSync(path.join(root, xx)).map((f) => path.join(root, xx, f)));
}

/** Writes the store: disks a and b (one image, so b dedups fully against a) and the encrypted disk e. */
export async function setup(t: Pick<Test, 'teardown'>): Promise<CheckStatsStore> {
  const dir = tmpDir(t, 'check-stats');
  const storeDir = path.join(dir, 'store');
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, Buffer.concat([randomData(MiB, 1), textData(SIZE - MiB, 2)]));
  const keyFile = path.join(dir, 'k.key');
  fs.writeFileSync(keyFile, randomData(32, 9).toString('hex'), { mode: 0o600 });
  const store = fsStore(storeDir);
  for (const disk of ['a', 'b']) await snap(store, img, disk, { chunkSize: 64 * KiB });
  await snap(store, img, 'e', { chunkSize: 64 * KiB, encryption: readKeyFile(keyFile) });
  return { dir, storeDir, img, keyFile };
}

/** A copy of the store (with its image and key file) in a fresh folder, for a test that changes it. */
export function copyOf(t: Pick<Test, 'teardown'>, base: CheckStatsStore): CheckStatsStore {
  const dir = tmpDir(t, 'check-stats');
  fs.cpSync(base.dir, dir, { recursive: true });
  const moved = (p: string) => path.join(dir, path.relative(base.dir, p));
  return { dir, storeDir: moved(base.storeDir), img: moved(base.img), keyFile: moved(base.keyFile) };
}
