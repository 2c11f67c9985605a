// The floor of an incremental scan with cryptographic chunk ids, in Node on this machine: a process that only starts
// worker threads, which pread the image in 1 MiB chunks and take each chunk's keyed BLAKE3, as rnode's codec workers
// do, with no repository, no pipeline and nothing written. An incremental from a raw source cannot be faster; how it
// compares with `xxhsum -H2` (a non-cryptographic hash in one C process) is the most the incremental can reach.
// With "read", the workers only read (no hash at all): what a Node process pays to start and read the image, the
// floor under any chunk id, cryptographic or not.
// usage: node scan-floor.js IMAGE THREADS [read]
import fs from 'node:fs';
import { createRequire } from 'node:module';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';

const CHUNK = 1024 * 1024;

interface Share {
  file: string;
  from: number;
  to: number;
  hash: boolean;
}

type Hasher = { newKeyed(key: Buffer): { update(b: Buffer): { digestBuffer(): Buffer } } };

/** The same binding rnode loads (src/native/blake.ts), without the package's libc probe. */
function blake(): Hasher {
  const require = createRequire(import.meta.url);
  try {
    return (require(`@napi-rs/blake-hash-linux-${process.arch}-gnu`) as { Blake3Hasher: Hasher }).Blake3Hasher;
  } catch {
    return (require('@napi-rs/blake-hash') as { Blake3Hasher: Hasher }).Blake3Hasher;
  }
}

if (isMainThread) {
  const [file, threadsArg, mode] = process.argv.slice(2);
  const threads = Number(threadsArg);
  const chunks = Math.ceil(fs.statSync(file).size / CHUNK);
  await Promise.all(
    Array.from({ length: threads }, (_, k) => {
      const share: Share = {
        file,
        from: Math.floor((k * chunks) / threads),
        to: Math.floor(((k + 1) * chunks) / threads),
        hash: mode !== 'read',
      };
      const w = new Worker(new URL(import.meta.url), { workerData: share });
      return new Promise<void>((resolve, reject) => {
        w.once('message', () => resolve());
        w.once('error', reject);
      });
    }),
  );
} else {
  const { file, from, to, hash } = workerData as Share;
  // The read-only floor loads no hasher: its start is part of what it measures.
  const Blake3Hasher = hash ? blake() : undefined;
  const key = Buffer.alloc(32, 7);
  const buf = Buffer.allocUnsafeSlow(CHUNK);
  const fd = fs.openSync(file, 'r');
  for (let i = from; i < to; i++) {
    const got = fs.readSync(fd, buf, 0, CHUNK, i * CHUNK);
    if (Blake3Hasher) Blake3Hasher.newKeyed(key).update(buf.subarray(0, got)).digestBuffer();
  }
  fs.closeSync(fd);
  parentPort!.postMessage('done');
}
