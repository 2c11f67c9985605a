// Pack buffers are recycled from one run to the next (src/repository/pack.ts takePackBuffer): a long-lived agent
// that left each run's buffers to the GC had its RSS follow GC timing instead of its load (issue 10, item 7). A
// buffer is reused only after its put resolved: a failed put's bytes may still be held by the store (a ws send queued
// past a timeout), and wiping them for the next pack would change what the store sends.
import t from 'tap';
import path from 'node:path';
import { FsStore } from '../../src/store/index.js';
import type { PutOptions } from '../../src/store/index.js';
import { isZero } from '../../src/native/index.js';
import { takePackBuffer, recyclePackBuffer } from '../../src/repository/pack.js';
import { MiB, snap, tmpDir, writeRandomImage } from '../helpers/images.js';

const isPack = (key: string) => key.includes('/packs/');

/** An fs store that notes the memory each pack put came from, and can fail pack puts while keeping their bytes. */
class NotingStore extends FsStore {
  readonly packMemory = new Set<ArrayBufferLike>();
  kept: Buffer | undefined;
  keptAtPut: Buffer | undefined;
  failPacks = false;
  override async put(key: string, data: Uint8Array, opts?: PutOptions) {
    if (isPack(key)) {
      this.packMemory.add(data.buffer);
      if (this.failPacks) {
        this.kept = Buffer.from(data.buffer, data.byteOffset, data.byteLength); // held, not copied
        this.keptAtPut = Buffer.from(data);
        throw new Error('injected: the put failed, the store still holds the bytes');
      }
    }
    return super.put(key, data, opts);
  }
}

t.test("a run's pack buffers serve the next run's packs", async (t) => {
  const dir = tmpDir(t, 'pack-buffers');
  const store = new NotingStore(path.join(dir, 'store'), { fsync: false });
  const a = path.join(dir, 'a.img');
  const b = path.join(dir, 'b.img');
  writeRandomImage(a, 3 * MiB, 1);
  writeRandomImage(b, 3 * MiB, 2);
  // Small packs: several per run, so each run fills every pack buffer it has.
  await snap(store, a, 'a', { chunkSize: 64 * 1024, packSize: 256 * 1024 });
  const first = new Set(store.packMemory);
  t.ok(first.size >= 2, `the first run built its packs in ${first.size} buffers`);
  store.packMemory.clear();
  await snap(store, b, 'b', { chunkSize: 64 * 1024, packSize: 256 * 1024 });
  const reused = [...store.packMemory].filter((m) => first.has(m));
  t.ok(reused.length >= 1, `the second run built its packs in the first run's buffers (${reused.length} of ${store.packMemory.size})`);
  const idle = takePackBuffer(256 * 1024);
  t.ok(store.packMemory.has(idle.buffer), 'an idle buffer of the last run is handed out next');
  t.ok(isZero(idle), 'wiped: none of its packs is left in it');
  recyclePackBuffer(idle);
});

t.test("a failed put's buffer is not wiped or handed out again", async (t) => {
  const dir = tmpDir(t, 'pack-buffers-fail');
  const store = new NotingStore(path.join(dir, 'store'), { fsync: false });
  const a = path.join(dir, 'a.img');
  writeRandomImage(a, 2 * MiB, 3);
  store.failPacks = true;
  await t.rejects(snap(store, a, 'a', { chunkSize: 64 * 1024, packSize: 256 * 1024 }), /injected/);
  t.ok(store.kept, 'a pack put failed');
  const next = Array.from({ length: 4 }, () => takePackBuffer(256 * 1024));
  t.ok(
    next.every((n) => n.buffer !== store.kept!.buffer),
    'later packs get other buffers',
  );
  t.ok(store.kept!.equals(store.keptAtPut!), 'the bytes the store holds are left as the put saw them');
  for (const n of next) recyclePackBuffer(n);
});
