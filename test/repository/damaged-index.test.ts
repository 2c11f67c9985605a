// One damaged index object of an unencrypted domain (a checksum mismatch) costs the chunks only it locates, not the
// repository: recover, verify and export of every other disk still read byte-exact (they loaded every index object or
// none: one flipped byte in disk b's index made every disk unrecoverable). The disk whose chunks it located fails
// loudly, naming the index. Prune stays strict. (In an encrypted domain a failed authentication still fails every
// read: test/repository/safety.test.ts.)
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { json, lines, runCli } from '../helpers/cli.js';
import { fingerprint, fsStore, KiB, listFiles, randomData, snap, stopCodecWorkersAtEnd, tmpDir } from '../helpers/images.js';

stopCodecWorkersAtEnd(t);

t.test('a damaged index object: other disks restore and verify, its own disk fails naming it', async (t) => {
  const dir = tmpDir(t, 'damaged-index');
  const storeDir = path.join(dir, 'store');
  const a = path.join(dir, 'a.img');
  const b = path.join(dir, 'b.img');
  fs.writeFileSync(a, randomData(512 * KiB, 41));
  fs.writeFileSync(b, randomData(384 * KiB, 42));
  const indexRoot = path.join(storeDir, 'r2', 'plain', 'index');
  await snap(fsStore(storeDir), a, 'a', { chunkSize: 64 * KiB });
  const before = new Set(listFiles(indexRoot));
  await snap(fsStore(storeDir), b, 'b', { chunkSize: 64 * KiB });
  const bIndexes = listFiles(indexRoot).filter((f) => !before.has(f));
  t.equal(bIndexes.length, 1, "disk b's chunks are in one index object of their own");
  const victim = path.join(indexRoot, bIndexes[0]);
  const bytes = fs.readFileSync(victim);
  bytes[40] ^= 0x5a;
  fs.writeFileSync(victim, bytes);

  const outA = path.join(dir, 'a.out');
  const ra = await runCli(['recover', '--store', storeDir, '--disk', 'a', '--out', outA]);
  t.equal(ra.code, 0, `disk a recovers: ${ra.stderr}`);
  t.same(fingerprint(outA), fingerprint(a), 'byte-exact');
  const va = await runCli(['verify', '--store', storeDir, '--disk', 'a', '--json']);
  t.equal(va.code, 0, `disk a verifies: ${va.stderr}`);

  const outB = path.join(dir, 'b.out');
  const rb = await runCli(['recover', '--store', storeDir, '--disk', 'b', '--out', outB]);
  t.equal(rb.code, 1, 'disk b fails');
  t.equal(lines(rb.stderr).length, 1, rb.stderr);
  t.match(rb.stderr, new RegExp(`RNODE_MANIFEST_CORRUPT: chunk \\d+ .* is in no intact index .*${path.basename(victim)} is corrupt`));
  t.notOk(fs.existsSync(outB), 'and leaves no output');

  const prune = await runCli(['prune', '--store', storeDir, '--disk', 'a', '--keep', '1', '--json']);
  t.equal(prune.code, 1, 'prune refuses to run over an index it cannot read');
  t.match(json(prune), { error: { code: 'RNODE_MANIFEST_CORRUPT' } });
});
