// A codec worker thread (started by codec-workers.ts): loads the hash and LZ4 implementations once, then handles the
// main thread's messages (codec-ops.ts) one per event-loop turn, replying to each with its id.
import fs from 'node:fs';
import { createRequire } from 'node:module';
import { parentPort, workerData } from 'node:worker_threads';
import { makeKernel, type KernelDeps } from '../format/codec-kernel.js';
import { loadBlake } from '../native/blake.js';
import { errorText, makeCodecOps, type OpMessage } from './codec-ops.js';

/** What codec-workers.ts gives every worker. */
export interface CodecWorkerData {
  /** xxh64 from xxhash-wasm even where the addon has it. */
  portableHash: boolean;
  /** Native bytes lz4-napi may leave for the GC before the worker collects. */
  gcEvery: number;
  /** The plain domain's chunk-id key (public: src/repository/domain.ts). */
  plainIdKey: Uint8Array;
  /** The rnode_native addon file src/native found: loaded by path, which spares each thread that search. */
  addonPath: string;
}

/** The addon functions a worker calls (src/native/index.ts describes them). */
interface WorkerAddon {
  copyBytes(src: Uint8Array, dst: Uint8Array): void;
  zeroBytes(dst: Uint8Array): void;
  isZero(buf: Uint8Array): boolean;
  lz4Info(): { version?: string };
  lz4CompressBlock(src: Uint8Array, dst: Uint8Array): number;
  lz4DecompressBlock(src: Uint8Array, dst: Uint8Array): number;
  xxh64?: (data: Uint8Array) => bigint;
  xxh3Info?: () => { version?: string };
  xxh3?: (data: Uint8Array, seed: bigint, out: Uint8Array) => void;
  threadCpuMs?: () => number;
  glibc?: boolean;
}

const data = workerData as CodecWorkerData;
const port = parentPort!;
const require = createRequire(import.meta.url);
const addon = require(data.addonPath) as WorkerAddon;
// By require, not import (an ESM import of a CommonJS package scans its source for exports, ~10 ms per thread), and
// without the package's libc probe (blake.ts).
const { blake3, Blake3Hasher } = loadBlake(addon.glibc === true);

// lz4-napi's results (where the system has no liblz4) live outside the JS heap, invisible to the GC's accounting:
// collect every few MiB so native memory stays bounded instead of growing until the heap happens to fill
// (codec-workers.ts exposes gc() then; liblz4 writes into the chunk slots and leaves nothing to collect).
const collect = (globalThis as { gc?: () => void }).gc ?? (() => {});
let produced = 0;
const track = (n: number) => {
  produced += n;
  if (produced > data.gcEvery) {
    produced = 0;
    collect();
  }
};

// liblz4 when the system has it; lz4-napi is loaded only where it does not.
const block = addon.lz4Info().version ? { compress: addon.lz4CompressBlock, decompress: addon.lz4DecompressBlock } : undefined;
const kernel = makeKernel({ ...(block ? {} : (require('lz4-napi') as KernelDeps)), block, copy: addon.copyBytes, zero: addon.zeroBytes }, track);

// The addon hashes chunk slots in place; xxhash-wasm (same digests, see test/native.test.ts) copies each input into
// wasm memory first, which cost more than the hash, and compiles at start, which delayed the first chunks. It stays
// the portable fallback.
const h64Raw =
  addon.xxh64 && !data.portableHash
    ? addon.xxh64
    : (await (require('xxhash-wasm') as () => Promise<{ h64Raw: (data: Uint8Array) => bigint }>)()).h64Raw;

const ops = makeCodecOps({
  kernel,
  h64Raw,
  blake3,
  Blake3Hasher,
  // Stage times in thread CPU time where the addon can read it: a preempted worker's wall time is not its cost.
  cpu: addon.threadCpuMs ?? (() => performance.now()),
  idKeys: [['plain', Buffer.from(data.plainIdKey)]],
  readSync: (fd, buf, offset, length, position) => fs.readSync(fd, buf, offset, length, position),
  isZero: addon.isZero,
  xxh3: addon.xxh3Info?.().version ? addon.xxh3 : undefined,
});

// Each message leaves a few hundred bytes of garbage in old space, and a busy worker that never fills its old
// generation is never collected by V8: an agent's two workers grew from 5.5 to 9.5 MiB of heap each in 12 minutes
// (two full collections in that time, both at start-up). A full collection of a heap this small takes 5-20 ms, so
// one every few thousand messages (GiBs of 1 MiB chunks) costs well under 1% of a worker.
const COLLECT_EVERY_MESSAGES = 4096;
let handled = 0;

function handle(m: OpMessage): void {
  if (++handled % COLLECT_EVERY_MESSAGES === 0) collect();
  try {
    const reply = ops.handle(m);
    if (m.id !== undefined) port.postMessage({ id: m.id, ...reply });
  } catch (err) {
    port.postMessage({ id: m.id, error: errorText(err) });
  }
}

// One message per event-loop turn: native buffers are freed by finalizers that run between turns, and a port
// drains its whole queue in one turn, so handling messages directly would let garbage pile up.
const queue: OpMessage[] = [];
let scheduled = false;
const pump = () => {
  scheduled = false;
  const m = queue.shift();
  if (m) handle(m);
  if (queue.length && !scheduled) {
    scheduled = true;
    setImmediate(pump);
  }
};
port.on('message', (m: OpMessage) => {
  queue.push(m);
  if (!scheduled) {
    scheduled = true;
    setImmediate(pump);
  }
});
port.postMessage({ ready: true });
