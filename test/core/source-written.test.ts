// A raw file written while a replicate reads it (a running VM's image): the point holds each chunk as it was read,
// which may be no state the disk was ever in. It was made with exit 0 and not a word; it is still made, and says so.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { KiB, fsStore, randomData, snap, stopCodecWorkersAtEnd, tmpDir } from '../helpers/images.js';

stopCodecWorkersAtEnd(t);

t.test('a file written during the run: sourceChangedWhileRead; one left alone: not', async (t) => {
  const dir = tmpDir(t, 'source-written');
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, randomData(1024 * KiB, 91));
  const store = fsStore(path.join(dir, 'store'));
  const quiet = await snap(store, img, 'd', { chunkSize: 64 * KiB });
  t.equal(quiet.sourceChangedWhileRead, undefined, 'a file nothing wrote');

  let written = false;
  const busy = await snap(store, img, 'd', {
    chunkSize: 64 * KiB,
    // The first progress report comes while the scan reads: a writer changes the file then.
    onProgress: () => {
      if (written) return;
      written = true;
      const fd = fs.openSync(img, 'r+');
      fs.writeSync(fd, Buffer.from('written meanwhile'), 0, 17, 512 * KiB);
      fs.closeSync(fd);
      fs.utimesSync(img, new Date(), new Date(Date.now() + 5000));
    },
  });
  t.ok(written, 'the file was written during the run');
  t.equal(busy.sourceChangedWhileRead, true, 'the point says its source was written while it was read');
});
