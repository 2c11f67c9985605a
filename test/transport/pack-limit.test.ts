// Issue #14 (second point): the sender's pack size was not capped at the receiving node's object limit, so
// `replicate --pack-size 16MiB` to a node started with a small `--window` failed on its first pack ("exceeds what the
// receiving node takes in one session"). Now packs are made to fit the node's welcome.maxObject: the run commits,
// every pack the node stored is within its limit, and the disk restores byte-exact. Packs of many small blobs close
// before their trailer would take them past the limit.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { EncryptionKey } from '../../src/crypto/keys.js';
import { PackBuilder } from '../../src/repository/pack.js';
import { json, runCli } from '../helpers/cli.js';
import { MiB, packFiles, randomData, tmpDir } from '../helpers/images.js';
import { startNode } from './helpers.js';

t.test('replicate --pack-size 16MiB to a node whose window takes 2 MiB objects commits, with packs that fit', async (t) => {
  const dir = tmpDir(t, 'ws-pack-limit');
  const { url, server, storeDir } = await startNode(t, dir, { windowBytes: 2 * MiB });
  t.ok(server.maxObjectBytes < 2 * MiB, `the node takes objects of at most ${server.maxObjectBytes} bytes`);
  const image = path.join(dir, 'disk.img');
  fs.writeFileSync(image, randomData(6 * MiB, 14));
  const r = await runCli(['replicate', '--source', image, '--target', url, '--disk', 'd', '--chunk-size', '64KiB', '--pack-size', '16MiB', '--json']);
  t.equal(r.code, 0, `replicate commits: ${r.stderr}`);
  const sizes = packFiles(storeDir).map((f) => fs.statSync(f).size);
  t.ok(sizes.length >= 4, `the 6 MiB of data went in ${sizes.length} packs`);
  t.ok(
    sizes.every((s) => s <= server.maxObjectBytes),
    `every pack is within the node's limit (largest ${Math.max(...sizes)} bytes)`,
  );
  t.equal(json(r).packsWritten, sizes.length);
  const out = path.join(dir, 'out.img');
  const rec = await runCli(['recover', '--store', url, '--disk', 'd', '--out', out, '--json']);
  t.equal(rec.code, 0, `recover: ${rec.stderr}`);
  t.ok(fs.readFileSync(out).equals(fs.readFileSync(image)), 'the disk restores byte-exact through the node');
});

for (const key of [undefined, EncryptionKey.fromBytes(randomData(32, 3))]) {
  t.test(`a pack of many small blobs closes before its trailer takes it past the limit (${key ? 'sealed' : 'plain'})`, async (t) => {
    const limit = 256 * 1024;
    const blob = randomData(40, 1);
    const meta = { id: Buffer.alloc(32, 7), plainLength: 64 * 1024, codec: 1 };
    const sizes: number[] = [];
    let b = new PackBuilder('plain', 16 * MiB, key);
    for (let i = 0; i < 10_000; i++) {
      if (b.wouldOverflow(blob.length, limit)) {
        sizes.push(b.finish().length);
        b = new PackBuilder('plain', 16 * MiB, key);
      }
      b.add(blob, meta);
    }
    t.ok(sizes.length >= 3, `10000 blobs of 40 bytes made ${sizes.length} full packs, far below the 16 MiB target`);
    t.ok(
      sizes.every((s) => s <= limit && s > limit - 200),
      `each within ${limit} bytes and about that size (${sizes.join(', ')})`,
    );
  });
}
