// The floors of an incremental scan in Node on this machine: a process that only reads the image in 1 MiB chunks and
// hashes each, with no repository, no pipeline and nothing written. An incremental from a raw source cannot be faster;
// how these compare with `xxhsum -H2` (one C process, no start-up to speak of) is the most an incremental can reach.
// - "xxh3" (the default): the main thread loads rnode's native module and hands runs of 64 chunks to its changeHashes
//   (pread and XXH3-128 on the libuv pool, N runs at once), as an incremental with change hashes does.
// - "blake3": worker threads pread the chunks and take each one's keyed BLAKE3, as rnode's codec workers compare chunk
//   ids when the node holds no change hashes of the parent.
// usage: node scan-floor.js IMAGE N [xxh3|blake3]   (N: runs in flight for xxh3, worker threads for blake3)
import fs from 'node:fs';
import { createRequire } from 'node:module';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';

const CHUNK = 1024 * 1024;
const RUN = 64;

interface Share {
  file: string;
  from: number;
  to: number;
}

type Hasher = { newKeyed(key: Buffer): { update(b: Buffer): { digestBuffer(): Buffer } } };

const require = createRequire(import.meta.url);

/** The same binding rnode loads (src/native/blake.ts), without the package's libc probe. */
function blake(): Hasher {
  try {
    return (require(`@napi-rs/blake-hash-linux-${process.arch}-gnu`) as { Blake3Hasher: Hasher }).Blake3Hasher;
  } catch {
    return (require('@napi-rs/blake-hash') as { Blake3Hasher: Hasher }).Blake3Hasher;
  }
}

async function xxh3Floor(file: string, runs: number): Promise<void> {
  const { changeHashes } = await import('replication-node/testing');
  const fd = fs.openSync(file, 'r');
  const chunks = Math.ceil(fs.fstatSync(fd).size / CHUNK);
  let next = 0;
  const lane = async () => {
    while (next < chunks) {
      const first = next;
      const n = Math.min(RUN, chunks - first);
      next += n;
      const run = new Float64Array(2 * n);
      for (let i = 0; i < n; i++) run.set([(first + i) * CHUNK, CHUNK], 2 * i);
      await changeHashes(fd, run, 7n, new Uint8Array(16 * n));
    }
  };
  await Promise.all(Array.from({ length: runs }, lane));
  fs.closeSync(fd);
}

if (isMainThread) {
  const [file, n, mode] = process.argv.slice(2);
  const threads = Number(n); // worker threads for blake3, runs in flight for xxh3
  if (mode !== 'blake3') await xxh3Floor(file, threads);
  else {
    const chunks = Math.ceil(fs.statSync(file).size / CHUNK);
    await Promise.all(
      Array.from({ length: threads }, (_, k) => {
        const share: Share = { file, from: Math.floor((k * chunks) / threads), to: Math.floor(((k + 1) * chunks) / threads) };
        const w = new Worker(new URL(import.meta.url), { workerData: share });
        return new Promise<void>((resolve, reject) => {
          w.once('message', () => resolve());
          w.once('error', reject);
        });
      }),
    );
  }
} else {
  const { file, from, to } = workerData as Share;
  const Blake3Hasher = blake();
  const key = Buffer.alloc(32, 7);
  const buf = Buffer.allocUnsafeSlow(CHUNK);
  const fd = fs.openSync(file, 'r');
  for (let i = from; i < to; i++) {
    const got = fs.readSync(fd, buf, 0, CHUNK, i * CHUNK);
    Blake3Hasher.newKeyed(key).update(buf.subarray(0, got)).digestBuffer();
  }
  fs.closeSync(fd);
  parentPort!.postMessage('done');
}
