// Faults while serving: a corrupted chunk object gives EIO on exactly its range (qemu-io reads each range) and
// is logged with its chunk, offset and object, while the rest of the disk reads fine; a store that fails a few
// times is retried (the client sees no error); a store that stays down past the fetch timeout gives EIO, and
// reads work again once it is back.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { ErrorCodes, RnodeError } from '../../src/errors.js';
import { codecWorkers } from '../../src/pipeline/codec-workers.js';
import type { ObjectStore } from '../../src/store/index.js';
import { wrapStore } from '../../src/store/wrap.js';
import { FaultyStore } from '../../src/store/wrappers/faulty.js';
import { startExport } from '../../src/export/export.js';
import { Cmd, encodeRequest } from '../../src/source/nbd/protocol.js';
import { blobPlace, fsStore, snap, tmpDir } from '../helpers/images.js';
import { CHUNK, compare, haveTools, KiB, makeDisk, MiB, Raw, run, serveExport, unixUrl } from './helpers.js';

t.setTimeout(180_000);
t.teardown(() => codecWorkers().close());

/** qemu-io `read` of each range, in one run: true where the read succeeded. */
async function readRanges(url: string, ranges: Array<[number, number]>): Promise<boolean[]> {
  const out: boolean[] = [];
  // One qemu-io per range: its output does not say which command failed when several do.
  for (const [o, l] of ranges) {
    const r = await run('qemu-io', ['-r', '-f', 'raw', '-c', `read ${o} ${l}`, url]);
    out.push(r.code === 0 && !/failed|error/i.test(r.stdout + r.stderr));
  }
  return out;
}

t.test('a corrupted chunk: EIO on exactly its range, logged; the rest reads fine', { skip: !haveTools && 'tools missing' }, async (t) => {
  const dir = tmpDir(t, 'export-corrupt');
  const storeDir = path.join(dir, 'store');
  const store = fsStore(storeDir);
  const image = path.join(dir, 'disk.img');
  makeDisk(image);
  await snap(store, image, 'vm', { chunkSize: CHUNK, lease: false });
  const bad = 3;
  // Repository v2: a byte flipped inside the chunk's blob in its pack.
  const place = await blobPlace(storeDir, 'vm', 1, bad);
  const b = fs.readFileSync(place.file);
  b[place.offset + place.length - 100] ^= 0xff;
  fs.writeFileSync(place.file, b);
  const logs: Array<{ event: string; fields: Record<string, unknown> }> = [];
  const exp = await serveExport(t, dir, { store, disk: 'vm', log: (event, fields) => logs.push({ event, fields }) });
  const url = unixUrl(exp.socket, 'vm');

  const ranges: Array<[number, number]> = [];
  for (let i = 0; i < 8; i++) ranges.push([i * CHUNK, CHUNK]);
  ranges.push([bad * CHUNK + 4 * KiB, 512], [bad * CHUNK - 512, 1024], [(bad + 1) * CHUNK, 512], [bad * CHUNK - 512, 512]);
  const ok = await readRanges(url, ranges);
  t.same(ok, [true, true, true, false, true, true, true, true, false, false, true, true], 'only reads that touch the corrupted chunk fail');
  t.same(
    await readRanges(url, [
      [2 * MiB, MiB],
      [4 * MiB, 4 * MiB],
    ]),
    [true, true],
    'the rest of the disk reads fine',
  );
  t.not((await compare(image, url)).code, 0, 'a whole-disk compare does not pass over the bad chunk');

  const failed = logs.find((l) => l.event === 'chunk-read-failed');
  t.ok(failed, 'the failure is logged');
  t.match(failed?.fields, { chunk: bad, offset: bad * CHUNK, code: ErrorCodes.CHUNK_CORRUPT });
  // The object named is the pack that holds the blob (it named a legacy chunk object that does not exist).
  t.equal(failed?.fields.key, path.relative(storeDir, place.file), 'the key is the pack read');
  t.match(String((failed?.fields as { message?: string })?.message), place.packId, 'the message names the pack');
  t.ok(exp.stats().chunkErrors >= 1, 'counted');
});

/** A store whose chunk reads fail (retryably) a number of times, or hang while `down`. */
function flakyStore(inner: ObjectStore, failFirst: number): ObjectStore & { down: boolean; failures: number } {
  const seen = new Map<string, number>();
  const s = {
    location: inner.location,
    capabilities: inner.capabilities,
    down: false,
    failures: 0,
    put: inner.put.bind(inner),
    head: inner.head.bind(inner),
    list: inner.list.bind(inner),
    delete: inner.delete.bind(inner),
    close: inner.close.bind(inner),
    async get(key: string, range?: Parameters<ObjectStore['get']>[1]) {
      if (key.includes('/packs/')) {
        if (s.down) await new Promise((r) => setTimeout(r, 60_000).unref());
        const n = seen.get(key) ?? 0;
        seen.set(key, n + 1);
        if (n < failFirst) {
          s.failures++;
          throw new RnodeError(ErrorCodes.STORE_UNAVAILABLE, 'connection reset (injected)', { retryable: true });
        }
      }
      return inner.get(key, range);
    },
  };
  return s;
}

t.test(
  'transient store errors are retried; a store down past the timeout gives EIO, then recovers',
  { skip: !haveTools && 'tools missing' },
  async (t) => {
    const dir = tmpDir(t, 'export-flaky');
    const image = path.join(dir, 'disk.img');
    makeDisk(image);
    const raw = fsStore(path.join(dir, 'store'));
    await snap(raw, image, 'vm', { chunkSize: CHUNK, lease: false });
    const flaky = flakyStore(raw, 2);
    const store = wrapStore(flaky, { retry: { baseDelayMs: 2, maxDelayMs: 10 } });
    const exp = await serveExport(t, dir, { store, disk: 'vm', fetchTimeoutMs: 1500 });
    const url = unixUrl(exp.socket, 'vm');
    const r = await compare(image, url);
    t.equal(r.code, 0, `every chunk failed twice and was retried: the disk is identical (${r.stderr.trim()})`);
    t.ok(flaky.failures > 0, `${flaky.failures} injected failures`);

    const exp2 = await serveExport(t, dir, { store, disk: 'vm', fetchTimeoutMs: 1000, tag: 'down' });
    const url2 = unixUrl(exp2.socket, 'vm');
    flaky.down = true;
    const started = Date.now();
    t.same(await readRanges(url2, [[0, 4096]]), [false], 'store down: EIO');
    t.ok(Date.now() - started < 20_000, 'after the fetch timeout, not a hang');
    flaky.down = false;
    t.same(
      await readRanges(url2, [
        [0, 4096],
        [MiB, 4096],
      ]),
      [true, true],
      'store back: reads work again',
    );
  },
);

// Regression: the stop waited for every request still waiting on the store. A store that stopped answering held a
// SIGTERM'd export for as long as its reads took to give up (chunk fetches 120 s, table segments the store's whole
// retry schedule: minutes), and a writable export's overlay flush waited behind a write reading its block.
t.test('a stop while a read waits on a store that does not answer: the export stops at once', async (t) => {
  const dir = tmpDir(t, 'export-stop-hung');
  const image = path.join(dir, 'disk.img');
  makeDisk(image);
  const raw = fsStore(path.join(dir, 'store'));
  await snap(raw, image, 'vm', { chunkSize: CHUNK, lease: false });
  const store = new FaultyStore(raw).addFault('get', { hang: true, times: Infinity, match: (k) => k.includes('/packs/') });
  t.teardown(() => store.close()); // releases the hung reads, after the test
  const socket = path.join(dir, 'e.sock');
  const exp = await startExport({ store, disk: 'vm', socket, writable: true, overlay: path.join(dir, 'vm.overlay') });
  const c = new Raw(socket);
  t.teardown(() => c.close());
  await c.open('vm');
  // A read, and a partial-block write that must read its block from the store first: both wait on it.
  c.send(encodeRequest(Cmd.READ, 0, 1n, 0, 4096));
  c.send(Buffer.concat([encodeRequest(Cmd.WRITE, 0, 2n, MiB + 512, 512), Buffer.alloc(512, 7)]));
  while (store.firedCount < 2) await new Promise((r) => setTimeout(r, 20));
  const stopped = await Promise.race([exp.close().then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 20_000).unref())]);
  t.ok(stopped, 'close() returned while the store still did not answer');
});
