// The CPU work of a chunk (xxh64, BLAKE3, LZ4 encode or decode-and-check) on a few lanes: worker threads, and in a
// process that runs one job also its main thread (inline-lane.ts). Chunk buffers are SharedArrayBuffers: lanes read
// and write them in place.
// What the workers do with each message is codec-ops.ts; the thread itself is codec-worker.ts.
// Workers also bound native memory: the LZ4 library keeps per-thread heaps, so few threads means few heaps.
import os from 'node:os';
import v8 from 'node:v8';
import { Worker } from 'node:worker_threads';
import { cwdGoneError } from '../errors.js';
import { CHUNK_HEADER_BYTES } from '../format/chunk.js';
import { payloadOverhead } from '../format/codecs.js';
import { SEAL_OVERHEAD } from '../format/seal.js';
import { ADDON_PATH, lz4Block } from '../native/index.js';
import { retuneAfterNewIsolate } from '../v8-tuning.js';
import { PLAIN_ID_KEY } from '../repository/domain.js';
import type { CodecWorkerData } from './codec-worker.js';
import { InlineLane, type LaneReply } from './inline-lane.js';

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

/** What a worker found of a run of chunks (ScanState per chunk), and what reading and hashing them cost (CPU ms). */
export interface ScanReply {
  states: Uint8Array;
  readMs: number;
  hashMs: number;
  /** Set when a read came back short: the position of that chunk in the run, and the bytes it got. */
  short?: number;
  got?: number;
  /** Each chunk's change hash at 16 x its position, when the run asked for them. */
  changes?: Uint8Array;
}

/** What the 'seal:*' ops need beyond a plain encode/decode: the key id and the chunk's AAD fields (format/seal.ts). */
export type SealedFields = Record<string, string | number | bigint>;

// The worker entry beside this module: codec-worker.js in dist/, codec-worker.ts where the test runner loads the
// TypeScript sources through tsx. In the bundled CLI (scripts/bundle.mjs), the bundled worker: the bundle defines
// RNODE_BUNDLED_WORKER as its path from dist/pipeline/, where this module's import.meta.url points there too.
declare const RNODE_BUNDLED_WORKER: string | undefined;
const FROM_SOURCES = new URL(import.meta.url).pathname.endsWith('.ts');
const WORKER_URL = new URL(
  typeof RNODE_BUNDLED_WORKER === 'string' ? RNODE_BUNDLED_WORKER : `./codec-worker${FROM_SOURCES ? '.ts' : '.js'}`,
  import.meta.url,
);

/**
 * What a worker runs: the entry itself, or under the test runner a bootstrap that registers tsx's module hooks before
 * it loads the entry. On Node 20, tsx registers its hooks on the main thread only, and a worker does not inherit them.
 */
const WORKER_ENTRY: { entry: URL | string; eval: boolean } = FROM_SOURCES
  ? {
      entry: `import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))}).then((m) => m.register()).then(() => import(${JSON.stringify(WORKER_URL.href)}))`,
      eval: true,
    }
  : { entry: WORKER_URL, eval: false };

/**
 * How many more ops in flight the main thread's lane counts as having: it also runs the job, so with an equal share
 * it fell behind the worker and held up the run (a full replicate of the bench image: 0.95x the wall time of two
 * workers with this handicap, no faster with none; CPU 0.88-0.91x either way).
 */
const INLINE_HANDICAP = 2;

/**
 * Deferred worker threads start once the main thread's lane has this many ops waiting: a job whose chunks turned
 * out to need encoding after all (an incremental that changed more than its job expected).
 */
const START_DEFERRED_AT_LOAD = 4;

interface Pending {
  resolve: (v: any) => void;
  reject: (e: Error) => void;
  worker: number;
}

export class CodecWorkers {
  /** The lanes: worker threads, and with `inline` the main thread's lane first. */
  private readonly workers: Array<Worker | InlineLane> = [];
  /** Lanes that can take work now: a worker thread once it has loaded its modules. */
  private readonly live: boolean[] = [];
  private readonly load: number[] = [];
  /** One per lane: resolves once it can take work (a worker thread once it has loaded its modules, or died). */
  private readonly started: Promise<void>[] = [];
  private readonly pending = new Map<number, Pending>();
  /** Workers whose death fail() has handled (an error and then an exit both report it). */
  private readonly failed = new WeakSet<Worker>();
  /** Set once a worker could not start because the current folder is gone (see fail()). */
  private cannotStart: Error | undefined;
  /** What every worker must hold (encryption keys, see chunk-codec.ts), replayed to replacement workers. */
  private readonly setup = new Map<string, { msg: Record<string, unknown>; users: number }>();
  private nextId = 0;

  private readonly workerData: CodecWorkerData;
  private closed = false;
  /** With `deferWorkers`, resolves when start() has spawned the worker threads. */
  private spawned: Promise<void> = Promise.resolve();
  private spawnDeferred?: () => void;
  /** close() waiting for the ops in flight to settle: called (once) when none is left. */
  private onIdle?: () => void;
  private idle?: Promise<void>;

  /**
   * size lanes. portableHash: xxh64 from xxhash-wasm even where the addon has it (the tests check both give the same
   * digests). inline: one of the lanes is this thread (inline-lane.ts), where liblz4 is loaded: for a process that
   * runs one job, not for one that serves others while it runs. deferWorkers (with inline): the worker threads start
   * only at start(), or once the main thread's lane falls behind; until then that lane takes every op.
   */
  constructor(
    readonly size = defaultWorkers(),
    opts: { portableHash?: boolean; inline?: boolean; deferWorkers?: boolean } = {},
  ) {
    this.workerData = {
      portableHash: opts.portableHash === true,
      gcEvery: 8 * 1024 * 1024,
      // The plain domain's chunk-id key is public (src/repository/domain.ts): every worker holds it from the start.
      plainIdKey: new Uint8Array(PLAIN_ID_KEY),
      addonPath: ADDON_PATH,
    };
    // Isolates created after this flag expose gc(), which workers decoding through lz4-napi need (codec-worker.ts).
    // Not otherwise: a flag set before the workers start makes them compile node's built-ins without its code cache.
    if (!lz4Block) v8.setFlagsFromString('--expose-gc');
    const inline = opts.inline === true && !opts.portableHash && InlineLane.available;
    if (inline) {
      this.load.push(0);
      this.workers.push(new InlineLane((m) => this.onMessage(m)));
      this.started.push(Promise.resolve());
      this.live.push(true);
    }
    if (inline && opts.deferWorkers === true && size > 1) {
      this.spawned = new Promise<void>((r) => {
        this.spawnDeferred = r;
      });
    } else {
      this.spawnWorkers();
    }
  }

  /**
   * Starts worker threads deferred by the constructor (a no-op otherwise, and once closed). A worker thread costs a
   * node start of its own (~90 ms of CPU): a job that finds it has few chunks to encode (an incremental compared by
   * change hashes) never starts one; a job that has many starts them as soon as it knows.
   */
  start(): void {
    if (!this.spawnDeferred || this.closed) return;
    this.spawnDeferred();
    this.spawnDeferred = undefined;
    this.spawnWorkers();
  }

  private spawnWorkers(): void {
    for (let i = this.workers.length; i < this.size; i++) {
      this.load.push(0);
      this.live.push(false);
      this.workers.push(this.spawn(i));
    }
  }

  /** Worker threads started (deferred ones count once start() or the main thread's load has started them). */
  get threads(): number {
    return this.workers.filter((w) => !(w instanceof InlineLane)).length;
  }

  /** Ops the main thread's lane has handled (0 without one). */
  get inlineOps(): number {
    const lane = this.workers[0];
    return lane instanceof InlineLane ? lane.handled : 0;
  }

  private spawn(i: number): Worker {
    // From dist/ a worker needs no module hooks: a test runner's (inherited through NODE_OPTIONS) cost each
    // worker ~0.9 s of start-up, and an agent's first run under test that much. From src/ they compile it.
    const w = new Worker(WORKER_ENTRY.entry, {
      eval: WORKER_ENTRY.eval,
      workerData: this.workerData,
      ...(FROM_SOURCES ? {} : { execArgv: [], env: workerEnv() }),
    });
    for (const s of this.setup.values()) w.postMessage(s.msg); // keys of running jobs, before any chunk
    // Its isolate, as it starts, sets back a V8 flag the process tuned (src/v8-tuning.ts).
    w.once('online', retuneAfterNewIsolate);
    w.once('exit', retuneAfterNewIsolate);
    let started!: () => void;
    this.started[i] = new Promise<void>((r) => {
      started = r;
    });
    this.live[i] = false;
    w.on('message', (m) => {
      if (!m?.ready) return this.onMessage(m);
      this.live[i] = true;
      started();
      if (!this.load[i]) w.unref();
    });
    w.on('error', (err) => {
      started();
      if (cwdGone(err)) this.cannotStart ??= cwdGoneError(err);
      this.fail(i, w, this.cannotStart ?? err);
    });
    w.on('exit', (code) => {
      started();
      this.fail(i, w, new Error(`codec worker exited with code ${code}`));
    });
    // Idle workers never keep the process alive once started (a run may wait for a starting one: see ready()).
    return w;
  }

  /**
   * Resolves once every worker has loaded its modules (deferred ones: once started and loaded). A chunk sent before
   * waits on a worker still starting while the others run ahead: a run's first chunk got its id 300-500 ms after it
   * was read, behind ten later chunks.
   */
  async ready(): Promise<void> {
    await this.spawned;
    await Promise.all(this.started);
  }

  /**
   * Resolves once some lane can take work (or a worker died trying). Work goes only to lanes that can take it (see
   * send), so a run may start then: no chunk waits behind a worker still starting.
   */
  async anyReady(): Promise<void> {
    await Promise.race(this.started);
  }

  /**
   * Hashes plain (a view of a SharedArrayBuffer) and writes the stored payload into out at CHUNK_HEADER_BYTES
   * (out must be a SharedArrayBuffer view with room for the worst case).
   */
  encode(
    plain: Uint8Array,
    out: Uint8Array,
    codec: number,
    unchangedIf?: { xxh64: bigint; strong: Uint8Array },
    sealed?: SealedFields,
  ): Promise<EncodeResult> {
    return this.send({
      op: sealed ? 'seal:encode' : 'encode',
      ...buffers(plain, out),
      codec,
      ...(unchangedIf ? { unchangedIf: { xxh64: unchangedIf.xxh64, strong: new Uint8Array(unchangedIf.strong) } } : {}),
      ...sealed,
    }).then((r) => ({ ...r, strong: Buffer.from(r.strong) }));
  }

  /** Decodes payload (a SharedArrayBuffer view) into out and returns the digests to check. */
  decode(payload: Uint8Array, codec: number, plainLength: number, out: Uint8Array, sealed?: SealedFields): Promise<DecodeCheck> {
    return this.send({
      op: sealed ? 'seal:decode' : 'decode',
      ...buffers(payload, out),
      codec,
      plainLength,
      ...sealed,
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
  idEncodeBlob(plain: Uint8Array, out: Uint8Array, codec: number, f: IdEncodeFields): Promise<IdEncoded> {
    return this.send({ op: 'blob:id-encode', ...idEncodeMessage(plain, out, codec, f) }).then((r) => ({ ...r, id: Buffer.from(r.chunkId) }));
  }

  /**
   * idEncodeBlob of a chunk the worker first reads into plain itself: length bytes of fd (lent by the source, valid
   * until this settles) at position. `got` is what the read returned: short of length, nothing else was done; `zero`
   * when the chunk reads as zeros (nothing was encoded).
   */
  readIdEncodeBlob(
    fd: number,
    position: number,
    plain: Uint8Array,
    out: Uint8Array,
    codec: number,
    f: IdEncodeFields,
  ): Promise<{ got: number; readMs: number } & ({ id?: undefined; zero?: true } | (IdEncoded & { zero?: undefined }))> {
    return this.send({ op: 'blob:read-id-encode', fd, position, ...idEncodeMessage(plain, out, codec, f) }).then((r) =>
      r.chunkId ? { ...r, id: Buffer.from(r.chunkId) } : { got: r.got, readMs: r.readMs, ...(r.zero ? { zero: true } : {}) },
    );
  }

  /** Repository v2: encodes (and with keyId seals) plain as the blob of chunkId into out at 0. */
  encodeBlob(plain: Uint8Array, out: Uint8Array, codec: number, chunkId: Uint8Array, keyId?: string): Promise<EncodedBlob> {
    return this.send({
      op: 'blob:encode',
      ...buffers(plain, out),
      codec,
      chunkId: new Uint8Array(chunkId),
      ...(keyId ? { key: keyId } : {}),
    });
  }

  /** Repository v2: checks, opens and decodes a blob into out; resolves to the id of the plaintext it decoded to. */
  decodeBlob(
    blob: Uint8Array,
    out: Uint8Array,
    f: { codec: number; plainLength: number; chunkId: Uint8Array; idName: string; keyId?: string; payloadXxh64?: bigint },
  ): Promise<{ id: Buffer; payloadXxh64: bigint }> {
    return this.send({
      op: 'blob:decode',
      ...buffers(blob, out),
      codec: f.codec,
      plainLength: f.plainLength,
      chunkId: new Uint8Array(f.chunkId),
      idName: f.idName,
      ...(f.keyId ? { key: f.keyId } : {}),
      ...(f.payloadXxh64 !== undefined ? { payloadXxh64: f.payloadXxh64 } : {}),
    }).then((r) => ({ id: Buffer.from(r.chunkId), payloadXxh64: r.payloadXxh64 }));
  }

  /**
   * Repository v2, plain blobs only: decodes the blobs at the given places of pack (a SharedArrayBuffer view) one
   * after the other into out (room for the largest plainLength), in one trip. Resolves to each blob's plaintext id
   * and payload xxh64 as computed, up to the first blob that does not decode (`failed` its index, `error` why).
   */
  decodeBlobs(
    pack: Uint8Array,
    blobs: Array<{ offset: number; length: number; codec: number; plainLength: number }>,
    out: Uint8Array,
    idName: string,
  ): Promise<{ results: Array<{ id: Buffer; payloadXxh64: bigint }>; failed?: number; error?: string }> {
    return this.send({
      op: 'blob:decode-many',
      in: shared(pack),
      out: shared(out),
      outOff: out.byteOffset,
      outCap: out.byteLength,
      idName,
      blobs: blobs.map((b) => ({ offset: pack.byteOffset + b.offset, length: b.length, codec: b.codec, plainLength: b.plainLength })),
    }).then((r: { chunkIds: Uint8Array; payloadXxh64s: bigint[]; failed?: number; reason?: string }) => ({
      results: r.payloadXxh64s.map((payloadXxh64, i) => ({ id: Buffer.from(r.chunkIds.subarray(32 * i, 32 * i + 32)), payloadXxh64 })),
      ...(r.failed !== undefined ? { failed: r.failed, error: r.reason } : {}),
    }));
  }

  /**
   * blob:scan (codec-ops.ts): chunks read from fd (lent by the source, valid until this settles) on a worker and
   * compared there with their parents; chunks holds (offset, length, ScanParent) per chunk.
   */
  scanChunks(fd: number, idName: string, chunks: Float64Array, parentIds: Uint8Array, changeSeed?: bigint): Promise<ScanReply> {
    return this.send({ op: 'blob:scan', fd, idName, chunks, parentIds, ...(changeSeed !== undefined ? { changeSeed } : {}) });
  }

  /** Gives msg to every worker (now and respawned) until as many release(id) calls as retain(id) calls. */
  retainSetup(id: string, msg: Record<string, unknown>): void {
    const s = this.setup.get(id);
    if (s) {
      s.users++;
      return;
    }
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
    if (this.cannotStart) return Promise.reject(this.cannotStart);
    if (this.spawnDeferred && this.load[0] >= START_DEFERRED_AT_LOAD) this.start();
    const id = this.nextId++;
    // The least loaded lane that can take work now (while none can, the least loaded of all).
    const anyLive = this.live.includes(true);
    const weight = (j: number) => this.load[j] + (this.workers[j] instanceof InlineLane ? INLINE_HANDICAP : 0);
    let i = -1;
    for (let j = 0; j < this.workers.length; j++) if ((this.live[j] || !anyLive) && (i < 0 || weight(j) < weight(i))) i = j;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, worker: i });
      if (this.load[i]++ === 0) this.workers[i].ref();
      this.workers[i].postMessage({ ...msg, id });
    });
  }

  private onMessage(m: LaneReply): void {
    const p = this.pending.get(m.id);
    if (!p) return;
    this.pending.delete(m.id);
    if (--this.load[p.worker] === 0) this.workers[p.worker].unref();
    if (m.error !== undefined) p.reject(new Error(m.error));
    else p.resolve(m);
    if (this.pending.size === 0) this.onIdle?.();
  }

  /**
   * A dead worker fails what it held and is replaced, so later chunks never wait on it forever. One that could not
   * start because the process's current folder was removed is not: no worker can start in this process again, and
   * replacing it at once failed in a loop that kept a core busy for good (an agent's); every op fails with why.
   */
  private fail(worker: number, w: Worker, err: Error): void {
    if (this.workers[worker] !== w || this.failed.has(w)) return; // already replaced, or being replaced
    this.failed.add(w);
    this.live[worker] = false;
    for (const [id, p] of this.pending) {
      if (p.worker === worker) {
        this.pending.delete(id);
        p.reject(err);
      }
    }
    this.load[worker] = 0;
    if (this.pending.size === 0) this.onIdle?.();
    if (!this.closed && !this.cannotStart) this.workers[worker] = this.spawn(worker);
  }

  /**
   * Stops the workers once each has started and the ops in flight have settled (at most 10 s): a worker terminated
   * while it loads the addon makes the addon's module init fail inside a dying isolate, which aborts the whole process
   * (seen: a recover that failed on its key file while its workers started exited by SIGABRT with a native stack
   * instead of its one line); one terminated with a native read in flight can abort it as the read completes.
   */
  async close(): Promise<void> {
    this.closed = true;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      // The workers spawned (deferred ones never started have nothing to wait for), and what they run.
      Promise.all([...this.started, this.settled()]),
      new Promise<void>((r) => {
        timer = setTimeout(r, 10_000);
        timer.unref();
      }),
    ]);
    clearTimeout(timer);
    await Promise.all(this.workers.map((w) => w.terminate()));
    if (instance === this) instance = undefined;
  }

  /**
   * Resolves once no op is in flight, nor sent by what the last ones' settling ran: a caller's next step (an encode's
   * decode) is an op sent after close() that it still waits for. Calls at once share each wait.
   */
  private async settled(): Promise<void> {
    while (this.pending.size > 0) {
      await (this.idle ??= new Promise<void>((resolve) => {
        this.onIdle = () => {
          this.idle = this.onIdle = undefined;
          resolve();
        };
      }));
      await new Promise<void>((r) => setImmediate(r)); // the settled ops' continuations run first
    }
  }
}

/** What blob:id-encode needs beside the buffers: the domain's id key, the seal's key, and what makes encoding moot. */
export interface IdEncodeFields {
  idName: string;
  keyId?: string;
  parentId?: Uint8Array;
  known?: Int32Array;
  /** Also the chunk's change hash, xxh3 under this seed (where the thread has libxxhash). */
  changeSeed?: bigint;
}

/** A chunk's id (and change hash, when asked), and its blob unless the chunk is its parent's or the filter says the domain may hold it (`skipped`). */
export type IdEncoded = { id: Buffer; hashMs: number; change?: Uint8Array } & ({ skipped: true } | ({ skipped?: undefined } & EncodedBlob));

/** The message fields of blob:id-encode (blob:read-id-encode adds the read). */
function idEncodeMessage(plain: Uint8Array, out: Uint8Array, codec: number, f: IdEncodeFields): Record<string, unknown> {
  return {
    ...buffers(plain, out),
    codec,
    idName: f.idName,
    ...(f.keyId ? { key: f.keyId } : {}),
    ...(f.parentId ? { parentId: new Uint8Array(f.parentId) } : {}),
    ...(f.known ? { known: f.known } : {}),
    ...(f.changeSeed !== undefined ? { changeSeed: f.changeSeed } : {}),
  };
}

/** An op's buffer fields: the bytes it reads (in) and the room it writes (out), as shared memory, offset and length. */
function buffers(input: Uint8Array, out: Uint8Array): Record<string, unknown> {
  return {
    in: shared(input),
    inOff: input.byteOffset,
    len: input.byteLength,
    out: shared(out),
    outOff: out.byteOffset,
    outCap: out.byteLength,
  };
}

function shared(v: Uint8Array): SharedArrayBuffer {
  if (!(v.buffer instanceof SharedArrayBuffer)) throw new TypeError('codec workers need SharedArrayBuffer-backed buffers');
  return v.buffer;
}

/** The process's environment without NODE_OPTIONS, whose --import hooks a compiled worker does not need. */
function workerEnv(): NodeJS.ProcessEnv {
  const { NODE_OPTIONS: _, ...env } = process.env;
  return env;
}

function defaultWorkers(): number {
  return Math.max(1, Math.min(4, os.availableParallelism()));
}

let instance: CodecWorkers | undefined;

/** Node starts no worker thread once the process's current folder was removed: it fails with uv_cwd's ENOENT. */
function cwdGone(err: unknown): boolean {
  return (err as NodeJS.ErrnoException)?.syscall === 'uv_cwd';
}

/** The process-wide workers, started on first use (opts apply then: see the constructor). */
export function codecWorkers(opts: { inline?: boolean; deferWorkers?: boolean } = {}): CodecWorkers {
  instance ??= new CodecWorkers(defaultWorkers(), opts);
  return instance;
}

/** Worst-case stored object size for a chunk of `chunkSize` bytes. */
export function maxObjectBytes(chunkSize: number): number {
  return CHUNK_HEADER_BYTES + chunkSize + payloadOverhead(chunkSize) + SEAL_OVERHEAD;
}
