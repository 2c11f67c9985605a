// Shared by the stats/check CLI tests: a store written by replicate with two clones of one image in the plain
// repository and one encrypted disk.
import type { Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { MiB, randomData, textData, tmpDir } from './images.js';
import { runCli } from './cli.js';

export const SIZE = 2 * MiB;

export function packFiles(storeDir: string, domain: string): string[] {
  const root = path.join(storeDir, 'r2', domain, 'packs');
  if (!fs.existsSync(root)) return [];
  return fs.readdirSync(root).flatMap((xx) => fs.readdirSync(path.join(root, xx)).map((f) => path.join(root, xx, f)));
}

export async function setup(t: Test) {
  const dir = tmpDir(t, 'check-stats');
  const storeDir = path.join(dir, 'store');
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, Buffer.concat([randomData(MiB, 1), textData(SIZE - MiB, 2)]));
  const keyFile = path.join(dir, 'k.key');
  fs.writeFileSync(keyFile, randomData(32, 9).toString('hex'), { mode: 0o600 });
  for (const disk of ['a', 'b']) {
    const r = await runCli(['replicate', '--source', img, '--target', storeDir, '--disk', disk, '--chunk-size', '64KiB', '--json']);
    t.equal(r.code, 0, `replicate ${disk}: ${r.stderr}`);
  }
  const e = await runCli(['replicate', '--source', img, '--target', storeDir, '--disk', 'e', '--chunk-size', '64KiB', '--encryption-key-file', keyFile, '--json']);
  t.equal(e.code, 0, `replicate e (encrypted): ${e.stderr}`);
  return { dir, storeDir, img, keyFile };
}

