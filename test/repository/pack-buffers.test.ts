// A finished run's pack buffers give their pages back at once (src/jobs/replicate/packs.ts releaseBuffers), not
// when a GC finds them: a long-running agent's RSS followed GC timing (issue 10, item 7). A buffer whose put failed
// is left alone: the store may still hold it (a ws send queued past a timeout), and its bytes must stay as sent.
// A repack reads its source packs into one buffer, given back when it ends (src/jobs/prune-v2.ts repack).
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { pruneStore } from '../../src/jobs/prune-v2.js';
import { isZero } from '../../src/native/index.js';
import { FsStore } from '../../src/store/index.js';
import type { ByteRange, PutOptions } from '../../src/store/index.js';
import { MiB, expectRestore, fingerprint, snap, tmpDir, writeRandomImage } from '../helpers/images.js';

/** An fs store that keeps a view of every pack it was given (the caller's memory, not a copy), and can fail them. */
class NotingStore extends FsStore {
  readonly packs: { view: Buffer; copy: Buffer }[] = [];
  /** The buffer each get of a pack was asked to read into (undefined: none given). */
  readonly packReads: (Uint8Array | undefined)[] = [];
  failPacks = false;
  override async get(key: string, range?: ByteRange, into?: Uint8Array) {
    if (key.includes('/packs/')) this.packReads.push(into);
    return super.get(key, range, into);
  }
  override async put(key: string, data: Uint8Array, opts?: PutOptions) {
    if (key.includes('/packs/')) {
      this.packs.push({ view: Buffer.from(data.buffer, data.byteOffset, data.byteLength), copy: Buffer.from(data) });
      if (this.failPacks) throw new Error('injected: the put failed, the store still holds the bytes');
    }
    return super.put(key, data, opts);
  }
}

t.test("a finished run's pack buffers are discarded: their pages read as zero", async (t) => {
  const dir = tmpDir(t, 'pack-buffers');
  const store = new NotingStore(path.join(dir, 'store'), { fsync: false });
  const img = path.join(dir, 'a.img');
  writeRandomImage(img, 3 * MiB, 1);
  // Small packs: several per run, so each of the run's pack buffers is used.
  await snap(store, img, 'a', { chunkSize: 64 * 1024, packSize: 256 * 1024 });
  t.ok(store.packs.length >= 3, `${store.packs.length} packs put`);
  const last = store.packs[store.packs.length - 1];
  t.ok(isZero(last.view), 'the last pack buffer was discarded when the run ended');
  t.ok(
    store.packs.every((p) => !p.copy.every((x) => x === 0)),
    'every pack was put with its bytes',
  );
});

t.test("a failed put's buffer keeps the bytes the store was given", async (t) => {
  const dir = tmpDir(t, 'pack-buffers-fail');
  const store = new NotingStore(path.join(dir, 'store'), { fsync: false });
  const img = path.join(dir, 'a.img');
  writeRandomImage(img, 2 * MiB, 3);
  store.failPacks = true;
  await t.rejects(snap(store, img, 'a', { chunkSize: 64 * 1024, packSize: 256 * 1024 }), /injected/);
  t.ok(store.packs.length >= 1, 'a pack put failed');
  t.ok(
    store.packs.every((p) => p.view.equals(p.copy)),
    'the memory of every failed put still holds what the store was given',
  );
});

t.test('a repack reads its source packs into one buffer, discarded when it ends', async (t) => {
  const dir = tmpDir(t, 'pack-buffers-repack');
  const store = new NotingStore(path.join(dir, 'store'), { fsync: false });
  const img = path.join(dir, 'a.img');
  writeRandomImage(img, 2 * MiB, 5);
  await snap(store, img, 'a', { chunkSize: 64 * 1024, packSize: 256 * 1024 });
  // Every other chunk rewritten: once the first point goes, each of its packs is half unused.
  const fd = fs.openSync(img, 'r+');
  for (let i = 0; i < 32; i += 2) fs.writeSync(fd, crypto.randomBytes(64 * 1024), 0, 64 * 1024, i * 64 * 1024);
  fs.closeSync(fd);
  await snap(store, img, 'a', { chunkSize: 64 * 1024, packSize: 256 * 1024 });
  const want = fingerprint(img);
  const r = await pruneStore({ store, disk: 'a', keep: 1, maxUnused: 0.3 });
  const d = r.domains[0];
  t.ok(d.packsRepacked >= 2, `${d.packsRepacked} packs repacked`);
  const reads = store.packReads;
  t.equal(reads.length, d.packsRepacked, 'one get per source pack');
  t.ok(
    reads.every((b) => b !== undefined && b.buffer === reads[0]!.buffer),
    'every source pack was read into the same buffer',
  );
  t.ok(reads[0] !== undefined && isZero(reads[0]), 'that buffer was discarded when the repack ended');
  await expectRestore(t, store, 'a', 'latest', want, dir, 'the kept point restores byte-exact from the repacked blobs');
});
