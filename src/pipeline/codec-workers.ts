// The CPU work of a chunk (xxh64, BLAKE3, LZ4 encode or decode-and-check) on a few worker threads, so the
// main thread only moves data. Chunk buffers are SharedArrayBuffers: workers read and write them in place.
// Encrypted chunks (keyed BLAKE3, AES-256-GCM seal or open) are the separate 'seal:*' ops of seal-kernel.cjs.
// Workers also bound native memory: the LZ4 library keeps per-thread heaps, so few threads means few heaps.
import { createRequire } from 'node:module';
import os from 'node:os';
import v8 from 'node:v8';
import { Worker } from 'node:worker_threads';
import { STRONG_DIGEST_BYTES } from '../format/checksum.js';
import { CHUNK_HEADER_BYTES } from '../format/chunk.js';
import { Codec, KERNEL_PATH, payloadOverhead } from '../format/codecs.js';
import { SEAL_KERNEL_PATH, SEAL_OVERHEAD } from '../format/seal.js';
import { ADDON_PATH } from '../native/index.js';
import { PLAIN_ID_KEY } from '../repository/domain.js';

export interface EncodeResult {
  /** True when the digests matched `unchangedIf`: nothing was encoded. */
  unchanged?: boolean;
  xxh64: bigint;
  strong: Buffer;
  codec: number;
  payloadLength: number;
  payloadXxh64: bigint;
  /** Worker CPU time spent on the plaintext digests, on compressing (with the payload digest), and on sealing. */
  hashMs: number;
  packMs: number;
  sealMs?: number;
}

export interface DecodeCheck {
  /** The plaintext's xxh64 and BLAKE3-128 as computed by the worker. */
  xxh64: bigint;
  strong: Buffer;
  /** Payload xxh64 as computed. */
  payloadXxh64: bigint;
  plainLength: number;
}

/** A blob encoded into an object buffer at 0, and what its compression and sealing cost (worker CPU ms). */
export interface EncodedBlob {
  codec: number;
  payloadLength: number;
  payloadXxh64: bigint;
  packMs: number;
  sealMs: number;
}

/** What the 'seal:*' ops need beyond a plain encode/decode: the key id and the chunk's AAD fields (seal-kernel.cjs). */
export type SealedFields = Record<string, string | number | bigint>;

// Plain JS as a string: runs the same from src/ under the test loader and from dist/.
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
// LZ4 results live outside the JS heap, invisible to the GC's accounting: collect every few dozen MiB so
// native memory stays bounded instead of growing until the heap happens to fill.
const collect = globalThis.gc ?? (() => {});
let produced = 0;
const track = (n) => { produced += n; if (produced > workerData.gcEvery) { produced = 0; collect(); } };
const { blake3 } = require(workerData.blake);
const native = require(workerData.native);
// liblz4 when the system has it; lz4-napi is loaded only where it does not.
const block = native.lz4Info().version ? { compress: native.lz4CompressBlock, decompress: native.lz4DecompressBlock } : undefined;
const kernel = require(workerData.kernel).makeKernel({ ...(block ? {} : require(workerData.lz4)), block, copy: native.copyBytes, zero: native.zeroBytes }, track);
// The addon hashes chunk slots in place; xxhash-wasm (same digests, see test/native.test.ts) copies each input into
// wasm memory first, which cost more than the hash, and compiles at start, which delayed the first chunks. It
// stays the portable fallback.
(native.xxh64 && !workerData.portableHash ? Promise.resolve({ h64Raw: native.xxh64 }) : require(workerData.xxhash)()).then(({ h64Raw }) => {
  // Stage times in thread CPU time where the addon can read it: a preempted worker's wall time is not its cost.
  const cpu = native.threadCpuMs ?? (() => performance.now());
  const HDR = ${CHUNK_HEADER_BYTES};
  // Encrypted chunks: 'seal:*' ops, all in src/format/seal-kernel.cjs.
  const sealed = require(workerData.seal).makeSealedOps({ kernel, h64Raw, Blake3Hasher: require(workerData.blake).Blake3Hasher, headerBytes: HDR, cpu,
    idKeys: [['plain', Buffer.from(workerData.plainIdKey)]] });
  // One message per event-loop turn: native buffers are freed by finalizers that run between turns, and a
  // port drains its whole queue in one turn, so handling messages directly would let garbage pile up.
  const queue = [];
  let scheduled = false;
  const pump = () => {
    scheduled = false;
    const m = queue.shift();
    if (m) handle(m);
    if (queue.length && !scheduled) { scheduled = true; setImmediate(pump); }
  };
  parentPort.on('message', (m) => {
    queue.push(m);
    if (!scheduled) { scheduled = true; setImmediate(pump); }
  });
  parentPort.postMessage({ ready: true });
  const handle = (m) => {
    try {
      if (m.op.startsWith('seal:') || m.op.startsWith('blob:')) {
        const reply = sealed.handle(m);
        if (m.id !== undefined) parentPort.postMessage({ id: m.id, ...reply });
      } else if (m.op === 'encode') {
        const plain = Buffer.from(m.in, m.inOff, m.len);
        const out = Buffer.from(m.out, m.outOff, m.outCap);
        // Each reply says what its hashing and packing cost: the pipeline's per-stage counters.
        const t0 = cpu();
        const xxh64 = h64Raw(plain);
        const strong = new Uint8Array(blake3(plain).subarray(0, ${STRONG_DIGEST_BYTES}));
        const t1 = cpu();
        // Same content as the previous point (both digests): skip the compressor, the chunk is not stored.
        if (m.unchangedIf && m.unchangedIf.xxh64 === xxh64 && Buffer.from(m.unchangedIf.strong).equals(strong)) {
          parentPort.postMessage({ id: m.id, xxh64, strong, unchanged: true, hashMs: t1 - t0, packMs: 0 });
          return;
        }
        const r = kernel.encodeInto(plain, m.codec, out, HDR);
        // A raw payload is the plaintext: its digest is already known.
        const payloadXxh64 = r.codec === ${Codec.NONE} ? xxh64 : h64Raw(out.subarray(HDR, HDR + r.length));
        parentPort.postMessage({ id: m.id, xxh64, strong, codec: r.codec, payloadLength: r.length, payloadXxh64, hashMs: t1 - t0, packMs: cpu() - t1 });
      } else if (m.op === 'decode') {
        // m.in holds the payload; the plaintext goes to m.out.
        const payload = Buffer.from(m.in, m.inOff, m.len);
        const payloadXxh64 = h64Raw(payload);
        const out = Buffer.from(m.out, m.outOff, m.outCap);
        kernel.decodeInto(m.codec, payload, m.plainLength, out);
        const plain = out.subarray(0, m.plainLength);
        const strong = new Uint8Array(blake3(plain).subarray(0, ${STRONG_DIGEST_BYTES}));
        parentPort.postMessage({ id: m.id, xxh64: h64Raw(plain), strong, payloadXxh64, plainLength: m.plainLength });
      }
    } catch (err) {
      parentPort.postMessage({ id: m.id, error: String((err && err.message) || err) });
    }
  };
});
`;

interface Pending {
  resolve: (v: any) => void;
  reject: (e: Error) => void;
  worker: number;
}

export class CodecWorkers {
  private readonly workers: Worker[] = [];
  private readonly load: number[] = [];
  /** One per worker: resolves once it has loaded its modules (or died). */
  private readonly started: Promise<void>[] = [];
  private readonly pending = new Map<number, Pending>();
  /** What every worker must hold (encryption keys, see chunk-codec.ts), replayed to replacement workers. */
  private readonly setup = new Map<string, { msg: Record<string, unknown>; users: number }>();
  private nextId = 0;

  private readonly workerData: Record<string, unknown>;
  private closed = false;

  /** portableHash: xxh64 from xxhash-wasm even where the addon has it (the tests check both give the same digests). */
  constructor(readonly size = defaultWorkers(), opts: { portableHash?: boolean } = {}) {
    const require = createRequire(import.meta.url);
    this.workerData = {
      portableHash: opts.portableHash === true,
      blake: require.resolve('@napi-rs/blake-hash'), lz4: require.resolve('lz4-napi'), xxhash: require.resolve('xxhash-wasm'),
      kernel: KERNEL_PATH, seal: SEAL_KERNEL_PATH, native: ADDON_PATH,
      gcEvery: 8 * 1024 * 1024,
      // The plain domain's chunk-id key is public (src/repository/domain.ts): every worker holds it from the start.
      plainIdKey: new Uint8Array(PLAIN_ID_KEY),
    };
    // Isolates created after this flag expose gc(); the workers use it (see WORKER_SOURCE).
    v8.setFlagsFromString('--expose-gc');
    for (let i = 0; i < size; i++) {
      this.workers.push(this.spawn(i));
      this.load.push(0);
    }
  }

  private spawn(i: number): Worker {
    const w = new Worker(WORKER_SOURCE, { eval: true, workerData: this.workerData });
    for (const s of this.setup.values()) w.postMessage(s.msg); // keys of running jobs, before any chunk
    let started!: () => void;
    this.started[i] = new Promise<void>((r) => { started = r; });
    w.on('message', (m) => {
      if (!m?.ready) return this.onMessage(m);
      started();
      if (!this.load[i]) w.unref();
    });
    w.on('error', (err) => { started(); this.fail(i, w, err); });
    w.on('exit', (code) => { started(); this.fail(i, w, new Error(`codec worker exited with code ${code}`)); });
    // Idle workers never keep the process alive once started (a run may wait for a starting one: see ready()).
    return w;
  }

  /**
   * Resolves once every worker has loaded its modules. A chunk sent before waits on a worker still starting while
   * the others run ahead: a run's first chunk got its id 300-500 ms after it was read, behind ten later chunks.
   */
  async ready(): Promise<void> {
    await Promise.all(this.started);
  }

  /**
   * Hashes plain (a view of a SharedArrayBuffer) and writes the stored payload into out at CHUNK_HEADER_BYTES
   * (out must be a SharedArrayBuffer view with room for the worst case).
   */
  encode(plain: Uint8Array, out: Uint8Array, codec: number, unchangedIf?: { xxh64: bigint; strong: Uint8Array },
      sealed?: SealedFields): Promise<EncodeResult> {
    return this.send({
      op: sealed ? 'seal:encode' : 'encode', in: shared(plain), inOff: plain.byteOffset, len: plain.byteLength,
      out: shared(out), outOff: out.byteOffset, outCap: out.byteLength, codec,
      ...(unchangedIf ? { unchangedIf: { xxh64: unchangedIf.xxh64, strong: new Uint8Array(unchangedIf.strong) } } : {}), ...sealed,
    }).then((r) => ({ ...r, strong: Buffer.from(r.strong) }));
  }

  /** Decodes payload (a SharedArrayBuffer view) into out and returns the digests to check. */
  decode(payload: Uint8Array, codec: number, plainLength: number, out: Uint8Array, sealed?: SealedFields): Promise<DecodeCheck> {
    return this.send({
      op: sealed ? 'seal:decode' : 'decode', in: shared(payload), inOff: payload.byteOffset, len: payload.byteLength, codec, plainLength,
      out: shared(out), outOff: out.byteOffset, outCap: out.byteLength, ...sealed,
    }).then((r) => ({ ...r, strong: Buffer.from(r.strong) }));
  }

  /** xxh64 of a payload as stored (a SharedArrayBuffer view): how encrypted chunks are checked without their key. */
  storedDigest(payload: Uint8Array): Promise<bigint> {
    return this.send({ op: 'seal:stored', in: shared(payload), inOff: payload.byteOffset, len: payload.byteLength }).then((r) => r.payloadXxh64);
  }

  /**
   * Repository v2, one trip per chunk: the keyed 32-byte chunk id of plain (id key registered as idName), and its blob
   * encoded (with keyId, sealed) into out at 0 in the same trip, unless the id is parentId or `known` (an IdFilter's
   * words) may hold it: then `skipped`, and encodeBlob does it if the caller stores the chunk after all.
   */
  idEncodeBlob(plain: Uint8Array, out: Uint8Array, codec: number, f: { idName: string; keyId?: string; parentId?: Uint8Array; known?: Int32Array }):
      Promise<{ id: Buffer; hashMs: number } & ({ skipped: true } | { skipped?: undefined } & EncodedBlob)> {
    return this.send({
      op: 'blob:id-encode', in: shared(plain), inOff: plain.byteOffset, len: plain.byteLength,
      out: shared(out), outOff: out.byteOffset, outCap: out.byteLength, codec, idName: f.idName, ...(f.keyId ? { key: f.keyId } : {}),
      ...(f.parentId ? { parentId: new Uint8Array(f.parentId) } : {}), ...(f.known ? { known: f.known } : {}),
    }).then((r) => ({ ...r, id: Buffer.from(r.chunkId) }));
  }

  /** Repository v2: encodes (and with keyId seals) plain as the blob of chunkId into out at 0. */
  encodeBlob(plain: Uint8Array, out: Uint8Array, codec: number, chunkId: Uint8Array, keyId?: string): Promise<EncodedBlob> {
    return this.send({
      op: 'blob:encode', in: shared(plain), inOff: plain.byteOffset, len: plain.byteLength,
      out: shared(out), outOff: out.byteOffset, outCap: out.byteLength, codec, chunkId: new Uint8Array(chunkId), ...(keyId ? { key: keyId } : {}),
    });
  }

  /** Repository v2: checks, opens and decodes a blob into out; resolves to the id of the plaintext it decoded to. */
  decodeBlob(blob: Uint8Array, out: Uint8Array, f: { codec: number; plainLength: number; chunkId: Uint8Array; idName: string; keyId?: string; payloadXxh64?: bigint }):
      Promise<{ id: Buffer; payloadXxh64: bigint }> {
    return this.send({
      op: 'blob:decode', in: shared(blob), inOff: blob.byteOffset, len: blob.byteLength, out: shared(out), outOff: out.byteOffset, outCap: out.byteLength,
      codec: f.codec, plainLength: f.plainLength, chunkId: new Uint8Array(f.chunkId), idName: f.idName,
      ...(f.keyId ? { key: f.keyId } : {}), ...(f.payloadXxh64 !== undefined ? { payloadXxh64: f.payloadXxh64 } : {}),
    }).then((r) => ({ id: Buffer.from(r.chunkId), payloadXxh64: r.payloadXxh64 }));
  }

  /**
   * Repository v2, plain blobs only: decodes the blobs at the given places of pack (a SharedArrayBuffer view) one
   * after the other into out (room for the largest plainLength), in one trip. Resolves to each blob's plaintext id
   * and payload xxh64 as computed, up to the first blob that does not decode (`failed` its index, `error` why).
   */
  decodeBlobs(pack: Uint8Array, blobs: Array<{ offset: number; length: number; codec: number; plainLength: number }>, out: Uint8Array, idName: string):
      Promise<{ results: Array<{ id: Buffer; payloadXxh64: bigint }>; failed?: number; error?: string }> {
    return this.send({
      op: 'blob:decode-many', in: shared(pack), out: shared(out), outOff: out.byteOffset, outCap: out.byteLength, idName,
      blobs: blobs.map((b) => ({ offset: pack.byteOffset + b.offset, length: b.length, codec: b.codec, plainLength: b.plainLength })),
    }).then((r: { chunkIds: Uint8Array; payloadXxh64s: bigint[]; failed?: number; reason?: string }) => ({
      results: r.payloadXxh64s.map((payloadXxh64, i) => ({ id: Buffer.from(r.chunkIds.subarray(32 * i, 32 * i + 32)), payloadXxh64 })),
      ...(r.failed !== undefined ? { failed: r.failed, error: r.reason } : {}),
    }));
  }

  /** Gives msg to every worker (now and respawned) until as many release(id) calls as retain(id) calls. */
  retainSetup(id: string, msg: Record<string, unknown>): void {
    const s = this.setup.get(id);
    if (s) { s.users++; return; }
    this.setup.set(id, { msg, users: 1 });
    for (const w of this.workers) w.postMessage(msg);
  }

  /** Drops a setup message once its last user is done; undo is posted to every worker. */
  releaseSetup(id: string, undo: Record<string, unknown>): void {
    const s = this.setup.get(id);
    if (!s || --s.users > 0) return;
    this.setup.delete(id);
    for (const w of this.workers) w.postMessage(undo);
  }

  private send(msg: Record<string, unknown>): Promise<any> {
    const id = this.nextId++;
    let i = 0;
    for (let j = 1; j < this.workers.length; j++) if (this.load[j] < this.load[i]) i = j;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, worker: i });
      if (this.load[i]++ === 0) this.workers[i].ref();
      this.workers[i].postMessage({ ...msg, id });
    });
  }

  private onMessage(m: { id: number; error?: string }): void {
    const p = this.pending.get(m.id);
    if (!p) return;
    this.pending.delete(m.id);
    if (--this.load[p.worker] === 0) this.workers[p.worker].unref();
    if (m.error !== undefined) p.reject(new Error(m.error));
    else p.resolve(m);
  }

  /** A dead worker fails what it held and is replaced, so later chunks never wait on it forever. */
  private fail(worker: number, w: Worker, err: Error): void {
    if (this.workers[worker] !== w) return; // already replaced
    for (const [id, p] of this.pending) {
      if (p.worker === worker) { this.pending.delete(id); p.reject(err); }
    }
    this.load[worker] = 0;
    if (!this.closed) this.workers[worker] = this.spawn(worker);
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(this.workers.map((w) => w.terminate()));
    if (instance === this) instance = undefined;
  }
}

function shared(v: Uint8Array): SharedArrayBuffer {
  if (!(v.buffer instanceof SharedArrayBuffer)) throw new TypeError('codec workers need SharedArrayBuffer-backed buffers');
  return v.buffer;
}

function defaultWorkers(): number {
  return Math.max(1, Math.min(4, os.availableParallelism()));
}

let instance: CodecWorkers | undefined;

/** The process-wide workers, started on first use. */
export function codecWorkers(): CodecWorkers {
  instance ??= new CodecWorkers();
  return instance;
}

/** Worst-case stored object size for a chunk of `chunkSize` bytes. */
export function maxObjectBytes(chunkSize: number): number {
  return CHUNK_HEADER_BYTES + chunkSize + payloadOverhead(chunkSize) + SEAL_OVERHEAD;
}
