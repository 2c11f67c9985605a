// A 1-byte change at a chunk boundary: the last byte of chunk k, then the first byte of chunk k+1, each in its
// own incremental. Each incremental stores exactly one changed chunk (the right one), and every point restores
// byte-exact. Also: a change reverted to the old bytes is one more change, and random and text chunks alike.
import t from 'tap';
import { loadPoint } from '../../src/repository/points.js';
import { tableEntries } from '../../src/repository/view.js';
import fs from 'node:fs';
import path from 'node:path';
import {
  KiB,
  MiB,
  expectRestore,
  fingerprint,
  fsStore,
  randomData,
  snap,
  textData,
  tmpDir,
  writeAt,
  stopCodecWorkersAtEnd,
} from '../helpers/images.js';

stopCodecWorkersAtEnd(t);

const CHUNK = 64 * KiB;

function flip(file: string, offset: number): void {
  const fd = fs.openSync(file, 'r');
  const b = Buffer.alloc(1);
  fs.readSync(fd, b, 0, 1, offset);
  fs.closeSync(fd);
  writeAt(file, offset, Buffer.from([b[0] ^ 0x01]));
}

for (const kind of ['random', 'text'] as const) {
  t.test(`1-byte changes at the boundary of chunks 5 and 6 (${kind} data)`, async (t) => {
    const dir = tmpDir(t, 'boundary');
    const img = path.join(dir, 'disk.img');
    const store = fsStore(path.join(dir, 'store'));
    const size = MiB + 1000;
    fs.writeFileSync(img, kind === 'random' ? randomData(size, 3) : textData(size, 3));
    const fps = [fingerprint(img)];
    const storeDir = path.join(dir, 'store');
    const p1 = await snap(store, img, 'b', { chunkSize: CHUNK });
    t.equal(p1.chunksChanged, Math.ceil(size / CHUNK));

    const k = 5;
    const cases: Array<[string, number, number]> = [
      ['last byte of chunk k', (k + 1) * CHUNK - 1, k],
      ['first byte of chunk k+1', (k + 1) * CHUNK, k + 1],
      ['first byte of the partial last chunk', 16 * CHUNK, 16],
      ['last byte of the disk', size - 1, 16],
      ['first byte of the disk', 0, 0],
      ['the last byte of chunk k again, back to its first value', (k + 1) * CHUNK - 1, k],
    ];
    let seq = 1;
    for (const [what, offset, chunk] of cases) {
      flip(img, offset);
      fps.push(fingerprint(img));
      const r = await snap(store, img, 'b');
      seq++;
      t.equal(r.point, seq, `${what}: point ${seq}`);
      t.equal(r.full, false, `${what}: incremental`);
      t.equal(r.chunksChanged, 1, `${what}: exactly one changed chunk`);
      const records = [];
      for await (const e of tableEntries(fsStore(storeDir), await loadPoint(fsStore(storeDir), 'b', seq))) records.push(e.index);
      t.same(records, [chunk], `${what}: the one chunk record written is chunk ${chunk}`);
      t.ok(r.bytesWritten < 2 * CHUNK, `${what}: about one chunk written (${r.bytesWritten} bytes)`);
    }
    for (let i = 0; i < fps.length; i++) await expectRestore(t, store, 'b', i + 1, fps[i], dir);
  });
}
