// Peer streaming benchmark: replicate over ws:// on 127.0.0.1 to a receiving node (`rnode serve` in a child
// process, with a local fs store) next to replicate into a local fs store, same image, same run; and how close
// the token-bucket throttle (sender-side --bandwidth, node-side serve --bandwidth) holds its setting.
// Exported for bench/run.ts (benchWs); `node dist/bench/ws.js [image] [sizeMiB]` runs it alone.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { ObjectStore, ReplicateResult } from 'replication-node';
import { shebangFlags } from './lib/measure.js';
import type { RemoteStore } from '../dist/transport/index.js';

export interface WsBenchOptions {
  /** The disk image to replicate (read from page cache ideally; the caller warms it). */
  image: string;
  /** A scratch directory on the filesystem to measure (stores are created and removed in it). */
  workdir: string;
  /** Chunk size (default 1 MiB, the CLI default). */
  chunkSize?: number;
  /** Full replicate runs per contender, interleaved; the median counts (default 3). */
  repeat?: number;
  /** Throttle setting in bytes/s (default 40 MB/s); 0 skips the throttle measurements. */
  bandwidth?: number;
  /** How long each throttled transfer should take at the setting (default 4 s): sets its size. */
  throttleSeconds?: number;
  log?: (line: string) => void;
}

export interface ThrottleFigure {
  /** bytes/s asked for. */
  setting: number;
  /** Wire bytes/s while data flowed (slope between 10% and 90% of the bytes sent). */
  measured: number;
  /** (measured - setting) / setting, in percent. */
  errorPct: number;
  bytes: number;
  seconds: number;
  /** bytes / seconds of the whole replicate() call, setup and commit included. */
  endToEnd: number;
}

/** CPU seconds of one process over a run, user and system apart. */
export interface CpuSeconds {
  user: number;
  sys: number;
}

/**
 * Where the ws:// run's CPU went: the sender (this process, its workers included) and the receiving node (the
 * serve child), medians over the runs. If the run were CPU-bound, its two processes' CPU seconds spread over the
 * machine's cores would take as long as the run did: `ceilingMbPerSec` is that rate, `ofCeiling` the share of it
 * reached. Well under 1: the run waits on something other than CPU (a stall); near 1: only less CPU makes it faster.
 */
export interface WsCpuFigures {
  cores: number;
  sender: CpuSeconds;
  node: CpuSeconds;
  /** The sender's CPU seconds for the local-store runs, to compare (what ws costs the sender on top). */
  localSender: CpuSeconds;
  ceilingMbPerSec: number;
  ofCeiling: number;
  /**
   * The two main threads over the ws:// run (medians): seconds running, waiting to run (runnable while other tasks
   * held the cores: on a shared machine, its load) and asleep (waiting for data, credit or the disk). A low
   * ofCeiling with main threads mostly asleep is a stall; mostly waiting to run, the machine was busy.
   */
  senderMain: MainThreadSeconds;
  nodeMain: MainThreadSeconds;
  /**
   * The least a warm receiving node built on Node's sockets spends: a bare TCP transfer of the run's wire bytes
   * between two processes (bench/lib/tcp-floor.ts), medians, read by socket stream (as `ws` reads) and into one reused
   * buffer; each with the ceiling the run would have if the node spent only that (the sender as measured).
   */
  tcpFloor?: { stream: TcpFloorFigure; reused: TcpFloorFigure };
}

export interface TcpFloorFigure {
  receiver: CpuSeconds;
  /** Minor page faults of the receiving process over the transfer. */
  faults: number;
  ceilingMbPerSec: number;
}

export interface MainThreadSeconds {
  run: number;
  waitToRun: number;
  asleep: number;
}

export interface WsBenchResult {
  imageBytes: number;
  chunkSize: number;
  /** MB/s = 10^6 bytes of disk size per second of replicate() (in this process, process start excluded). */
  local: { seconds: number[]; mbPerSec: number };
  ws: { seconds: number[]; mbPerSec: number; wireBytes: number; reconnects: number };
  /** ws MB/s over local MB/s (issue 13's target: >= 0.8, both ends sharing the machine's cores). */
  ratio: number;
  /** The same over wss:// (a self-signed certificate the sender trusts as its CA); absent without the openssl CLI. */
  wss?: { seconds: number[]; mbPerSec: number; ratio: number };
  cpu: WsCpuFigures;
  /** Sender-side and node-side throttle: measured wire rate vs the setting (target within 5%). */
  throttle?: {
    sender: ThrottleFigure;
    node: ThrottleFigure;
  };
}

const DIST = new URL('../', import.meta.url); // dist/ when compiled to dist/bench/ws.js
const TCP_FLOOR = fileURLToPath(new URL('./lib/tcp-floor.js', import.meta.url));
const MB = 1e6;
/** What each receiving node takes before the measured run (other data: nothing of it is deduplicated). */
export const WARM_UP_BYTES = 128 * 1024 * 1024;

async function lib() {
  const core = (await import(new URL('index.js', DIST).href)) as typeof import('replication-node');
  const transport = (await import(new URL('transport/index.js', DIST).href)) as typeof import('../dist/transport/index.js');
  const flags = (await import(new URL('cli/store-flags.js', DIST).href)) as typeof import('../dist/cli/store-flags.js');
  const testing = (await import(new URL('testing.js', DIST).href)) as typeof import('replication-node/testing');
  return {
    ...core,
    ...transport,
    remoteReplicateOptions: flags.remoteReplicateOptions,
    generateSampleDisk: testing.generateSampleDisk,
    selfSignedCert: testing.selfSignedCert,
  };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** Clock ticks per second of /proc/<pid>/stat times (USER_HZ, 100 on nearly every Linux). */
let ticksPerSecond: number | undefined;
function userHz(): number {
  if (ticksPerSecond === undefined) {
    try {
      ticksPerSecond = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      ticksPerSecond = 100;
    }
  }
  return ticksPerSecond;
}

/** CPU seconds another process has used so far (all its threads), from /proc (zero where there is no /proc). */
export function processCpu(pid: number): CpuSeconds {
  try {
    // The command name (field 2) may hold spaces: count the fields after its closing parenthesis.
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { user: Number(f[11]) / userHz(), sys: Number(f[12]) / userHz() }; // utime, stime: fields 14 and 15
  } catch {
    return { user: 0, sys: 0 };
  }
}

/** Seconds a process's main thread has run and has waited to run, from /proc/<pid>/task/<pid>/schedstat (zeros without). */
export function mainThreadSched(pid: number): { run: number; waitToRun: number } {
  try {
    const [run, wait] = fs.readFileSync(`/proc/${pid}/task/${pid}/schedstat`, 'utf8').split(' ').map(Number);
    return { run: run / 1e9, waitToRun: wait / 1e9 };
  } catch {
    return { run: 0, waitToRun: 0 };
  }
}

function mainThreadOver(a: { run: number; waitToRun: number }, b: { run: number; waitToRun: number }, seconds: number): MainThreadSeconds {
  const run = b.run - a.run;
  const waitToRun = b.waitToRun - a.waitToRun;
  return { run, waitToRun, asleep: Math.max(0, seconds - run - waitToRun) };
}

/** CPU seconds this process (its worker threads included) used since `from` (process.cpuUsage()). */
function ownCpuSince(from: NodeJS.CpuUsage): CpuSeconds {
  const d = process.cpuUsage(from);
  return { user: d.user / 1e6, sys: d.system / 1e6 };
}

function cpuDiff(a: CpuSeconds, b: CpuSeconds): CpuSeconds {
  return { user: b.user - a.user, sys: b.sys - a.sys };
}

function medianCpu(xs: CpuSeconds[]): CpuSeconds {
  return { user: median(xs.map((x) => x.user)), sys: median(xs.map((x) => x.sys)) };
}

const total = (c: CpuSeconds) => c.user + c.sys;
const fmtCpu = (c: CpuSeconds) => `${total(c).toFixed(2)} s (user ${c.user.toFixed(2)}, sys ${c.sys.toFixed(2)})`;

/** `node dist/bin/rnode.js serve` on 127.0.0.1:0 with a local fs store; resolves with its ws:// URL. */
export async function startServe(storeDir: string, extra: string[] = []): Promise<{ child: ChildProcess; url: string; metrics?: string }> {
  const cli = fileURLToPath(new URL('bin/rnode.js', DIST));
  // RNODE_BENCH_WS_SERVE_NODE_ARGS: more node flags for the receiving node, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof".
  const nodeArgs = (process.env.RNODE_BENCH_WS_SERVE_NODE_ARGS ?? '').split(' ').filter(Boolean);
  const child = spawn(
    process.execPath,
    [...shebangFlags(cli), ...nodeArgs, cli, 'serve', '--listen', '127.0.0.1:0', '--store', storeDir, '--json', ...extra],
    { stdio: ['ignore', 'pipe', 'ignore'] },
  );
  const info = await new Promise<{ listening: string; metrics?: string }>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (b) => {
      out += b;
      if (out.includes('\n')) resolve(JSON.parse(out.split('\n')[0]));
    });
    child.on('exit', (c) => reject(new Error(`rnode serve exited with ${c} before listening`)));
  });
  return { child, url: info.listening, ...(info.metrics ? { metrics: info.metrics } : {}) };
}

export async function stopServe(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const done = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await done;
}

export async function benchWs(opts: WsBenchOptions): Promise<WsBenchResult> {
  const L = await lib();
  const log = opts.log ?? (() => undefined);
  const chunkSize = opts.chunkSize ?? 1024 * 1024;
  const repeat = opts.repeat ?? 3;
  const imageBytes = fs.statSync(opts.image).size;
  const dir = await fsp.mkdtemp(path.join(opts.workdir, 'ws-bench-'));
  try {
    const once = async (
      store: ObjectStore,
      remote?: object,
      nodePid?: number,
    ): Promise<{
      seconds: number;
      r: ReplicateResult;
      cpu: CpuSeconds;
      nodeCpu: CpuSeconds;
      senderMain: MainThreadSeconds;
      nodeMain: MainThreadSeconds;
    }> => {
      const source = await L.openSource(opts.image);
      try {
        const nodeAt = nodePid !== undefined ? processCpu(nodePid) : undefined;
        const nodeMainAt = mainThreadSched(nodePid ?? -1);
        const senderMainAt = mainThreadSched(process.pid);
        const cpuAt = process.cpuUsage();
        const t0 = performance.now();
        const r = await L.replicate({
          store,
          source,
          disk: 'bench',
          chunkSize,
          forceFull: true,
          checkpointRecords: 64,
          checkpointMillis: 2000,
          ...remote,
        });
        const seconds = (performance.now() - t0) / 1000;
        const cpu = ownCpuSince(cpuAt);
        const nodeCpu = nodeAt ? cpuDiff(nodeAt, processCpu(nodePid!)) : { user: 0, sys: 0 };
        const senderMain = mainThreadOver(senderMainAt, mainThreadSched(process.pid), seconds);
        const nodeMain = mainThreadOver(nodeMainAt, mainThreadSched(nodePid ?? -1), seconds);
        return { seconds, r, cpu, nodeCpu, senderMain, nodeMain };
      } finally {
        await source.close();
      }
    };
    /**
     * A full replicate to a fresh node (`rnode serve` with serveArgs, on its own store): the run's figures and what the
     * link counted. The sender uses what the CLI uses for ws(s):// targets (checkpoints, chunks in flight, pack size).
     */
    const overLink = async (nodeDir: string, serveArgs: string[] = [], remote?: { caFile: string }) => {
      const { child, url } = await startServe(nodeDir, serveArgs);
      try {
        const rs = await L.openStore(url, remote ? { remote } : {});
        await warmUp(rs);
        const { counters } = rs.backend as RemoteStore;
        const warmUpBytes = counters.bytesSent;
        const run = await once(rs, L.remoteReplicateOptions(Number(process.env.RNODE_BENCH_WS_CONCURRENCY ?? 0) || undefined, chunkSize), child.pid);
        await rs.close();
        // The measured run's own: the warm-up went over the same link before it.
        return { run, sentBytes: counters.bytesSent - warmUpBytes, connects: counters.connects };
      } finally {
        await stopServe(child);
        await fsp.rm(nodeDir, { recursive: true, force: true });
      }
    };
    // The node is warmed by one replicate of other data first, as the local contender's process is by its earlier runs
    // and a node in service by its earlier senders: its receive buffers and decode slots are in use, not faulted in
    // for the first time (~19 us of CPU per 4 KiB page here; a fresh node's first 512 MiB took 16,000-18,700 faults
    // against ~500 for the next ones, and 1.45-1.55 s against 1.20-1.24 s).
    const warmImage = path.join(dir, 'warm-up.img');
    await L.generateSampleDisk(warmImage, { size: WARM_UP_BYTES, seed: 7, holeEvery: 0 });
    const warmUp = async (store: ObjectStore) => {
      const source = await L.openSource(warmImage);
      try {
        await L.replicate({ store, source, disk: 'warm-up', chunkSize, forceFull: true, ...L.remoteReplicateOptions(undefined, chunkSize) });
      } finally {
        await source.close();
      }
    };
    const local: number[] = [];
    const wsSecs: number[] = [];
    const wssSecs: number[] = [];
    // wss:// needs a certificate: made by the openssl CLI (.ci/run installs it), else that contender is left out.
    let tls: { certFile: string; keyFile: string } | undefined;
    try {
      tls = L.selfSignedCert(dir);
    } catch (err) {
      log(`wss:// left out: no certificate (${(err as Error).message.split('\n')[0]})`);
    }
    const localCpu: CpuSeconds[] = [];
    const senderCpu: CpuSeconds[] = [];
    const nodeCpu: CpuSeconds[] = [];
    const senderMain: MainThreadSeconds[] = [];
    const nodeMain: MainThreadSeconds[] = [];
    const floors: Record<'stream' | 'reused', Array<{ receiver: CpuSeconds; faults: number }>> = { stream: [], reused: [] };
    let wireBytes = 0;
    let reconnects = 0;
    for (let i = 0; i < repeat; i++) {
      // A fresh store each time, so every run writes every chunk (a full point into an empty store).
      const localDir = path.join(dir, `local-${i}`);
      const ls = await L.openStore(localDir);
      const l = await once(ls);
      local.push(l.seconds);
      localCpu.push(l.cpu);
      await ls.close();
      await fsp.rm(localDir, { recursive: true, force: true });

      const { run, sentBytes, connects } = await overLink(path.join(dir, `node-${i}`));
      wsSecs.push(run.seconds);
      senderCpu.push(run.cpu);
      nodeCpu.push(run.nodeCpu);
      senderMain.push(run.senderMain);
      nodeMain.push(run.nodeMain);
      wireBytes = sentBytes;
      reconnects += connects - 1;
      for (const mode of ['stream', 'reused'] as const) floors[mode].push(tcpFloor(wireBytes, mode));
      if (tls) {
        const tlsArgs = ['--tls-cert', tls.certFile, '--tls-key', tls.keyFile];
        wssSecs.push((await overLink(path.join(dir, `tls-node-${i}`), tlsArgs, { caFile: tls.certFile })).run.seconds);
      }
      log(
        `run ${i + 1}/${repeat}: local ${(imageBytes / MB / local[i]).toFixed(0)} MB/s, ws:// ${(imageBytes / MB / wsSecs[i]).toFixed(0)} MB/s` +
          (tls ? `, wss:// ${(imageBytes / MB / wssSecs[i]).toFixed(0)} MB/s; ` : '; ') +
          `ws CPU: sender ${fmtCpu(senderCpu[i])}, node ${fmtCpu(nodeCpu[i])}; local sender ${fmtCpu(localCpu[i])}; load ${os.loadavg()[0].toFixed(1)}`,
      );
    }
    const localRate = imageBytes / MB / median(local);
    const wsRate = imageBytes / MB / median(wsSecs);
    const wssRate = wssSecs.length ? imageBytes / MB / median(wssSecs) : undefined;
    const result: WsBenchResult = {
      imageBytes,
      chunkSize,
      local: { seconds: local, mbPerSec: localRate },
      ws: { seconds: wsSecs, mbPerSec: wsRate, wireBytes, reconnects },
      ratio: wsRate / localRate,
      ...(wssRate !== undefined ? { wss: { seconds: wssSecs, mbPerSec: wssRate, ratio: wssRate / localRate } } : {}),
      cpu: {
        ...cpuFigures(imageBytes, wsRate, medianCpu(senderCpu), medianCpu(nodeCpu), medianCpu(localCpu)),
        senderMain: medianMain(senderMain),
        nodeMain: medianMain(nodeMain),
      },
    };
    const c = result.cpu;
    const floorFigure = (xs: Array<{ receiver: CpuSeconds; faults: number }>): TcpFloorFigure => {
      const receiver = medianCpu(xs.map((x) => x.receiver));
      return {
        receiver,
        faults: median(xs.map((x) => x.faults)),
        ceilingMbPerSec: imageBytes / MB / ((total(c.sender) + total(receiver)) / c.cores),
      };
    };
    c.tcpFloor = { stream: floorFigure(floors.stream), reused: floorFigure(floors.reused) };
    log(
      `ws:// CPU-bound ceiling: sender ${fmtCpu(c.sender)} + node ${fmtCpu(c.node)} over ${c.cores} cores -> ` +
        `${c.ceilingMbPerSec.toFixed(0)} MB/s; the run reached ${wsRate.toFixed(0)} MB/s = ${(c.ofCeiling * 100).toFixed(0)}% of it (${verdict(c)}); ` +
        `main threads over ${median(wsSecs).toFixed(2)} s: sender ${fmtMain(c.senderMain)}, node ${fmtMain(c.nodeMain)}; local sender ${fmtCpu(c.localSender)}`,
    );
    for (const [mode, f] of Object.entries(c.tcpFloor)) {
      log(
        `bare TCP of the ${(wireBytes / 2 ** 20).toFixed(0)} MiB sent, read by ${mode === 'stream' ? "Node's socket stream" : 'one reused buffer'}: ` +
          `receiver ${fmtCpu(f.receiver)}, ${f.faults} page faults; a node spending only that: ${f.ceilingMbPerSec.toFixed(0)} MB/s, ` +
          `${(f.ceilingMbPerSec / localRate).toFixed(2)}x of local`,
      );
    }

    const bandwidth = opts.bandwidth ?? 40 * MB;
    if (bandwidth > 0) {
      // Incompressible data, so wire bytes ~ disk bytes and the transfer lasts ~throttleSeconds at the setting.
      const tImage = path.join(dir, 'throttle.img');
      const tBytes = Math.ceil((bandwidth * (opts.throttleSeconds ?? 4)) / chunkSize) * chunkSize;
      const fh = await fsp.open(tImage, 'w');
      const block = Buffer.alloc(chunkSize);
      for (let off = 0; off < tBytes; off += chunkSize) {
        for (let j = 0; j < block.length; j += 4) block.writeUInt32LE((Math.random() * 2 ** 32) >>> 0, j);
        await fh.write(block, 0, block.length, off);
      }
      await fh.close();
      const measure = async (which: 'sender' | 'node') => {
        const nodeDir = path.join(dir, `throttle-${which}`);
        const serveArgs = which === 'node' ? ['--bandwidth', String(bandwidth), '--metrics', '127.0.0.1:0'] : [];
        const { child, url, metrics } = await startServe(nodeDir, serveArgs);
        try {
          const store = new L.RemoteStore({ url });
          // The sender's limit is the one every target takes (src/store/wrap.ts), as `replicate --bandwidth` applies it.
          const target = which === 'sender' ? L.wrapStore(store, { bandwidth }) : store;
          const source = await L.openSource(tImage);
          // Each throttle is measured where it acts: the sender's by the bytes it sends, the node's by the bytes it
          // has taken in (its /metrics). Counted at the sender, the node's rate read up to 1.11x: what the socket
          // buffers and the ws queue hold between the two grows and shrinks during the transfer.
          const counted =
            which === 'sender'
              ? async () => store.counters.bytesSent
              : async () => {
                  const body = await (await fetch(`http://${metrics}/metrics`)).text();
                  return Number(/^rnode_serve_received_bytes_total (\d+)$/m.exec(body)?.[1] ?? NaN);
                };
          // Samples of the bytes counted over time: the rate is the slope between 10% and 90% of the transfer, so the
          // setup round trips (listing, lease, commit) do not count against the throttle. The node counts a pack
          // once it has all of it: both ends of the slope are then pack completions, so whole packs are measured.
          const samples: Array<[number, number]> = [];
          let sampling = true;
          const sampler = (async () => {
            while (sampling) {
              const t = performance.now();
              samples.push([t, await counted()]);
              await new Promise((r) => setTimeout(r, 20));
            }
          })();
          const t0 = performance.now();
          await L.replicate({ store: target, source, disk: 'throttle', chunkSize, checkpointRecords: 64, checkpointMillis: 2000 });
          const seconds = (performance.now() - t0) / 1000;
          sampling = false;
          await sampler;
          samples.push([performance.now(), await counted()]);
          await source.close();
          const bytes = store.counters.bytesSent;
          await store.close();
          const total = samples[samples.length - 1][1];
          if (!(total > 0)) throw new Error(`the ${which} throttle measured no bytes`);
          const at = (f: number) => samples.find(([, b]) => b >= f * total)!;
          const [ta, ba] = at(0.1);
          const [tb, bb] = at(0.9);
          const measured = (bb - ba) / ((tb - ta) / 1000);
          return { setting: bandwidth, measured, errorPct: ((measured - bandwidth) / bandwidth) * 100, bytes, seconds, endToEnd: bytes / seconds };
        } finally {
          await stopServe(child);
        }
      };
      result.throttle = { sender: await measure('sender'), node: await measure('node') };
      log(
        `throttle at ${(bandwidth / MB).toFixed(1)} MB/s: sender ${(result.throttle.sender.measured / MB).toFixed(2)} MB/s ` +
          `(${result.throttle.sender.errorPct.toFixed(1)}%), node ${(result.throttle.node.measured / MB).toFixed(2)} MB/s (${result.throttle.node.errorPct.toFixed(1)}%)`,
      );
    }
    return result;
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
}

/**
 * One bare TCP transfer of `bytes` on 127.0.0.1 between two new processes (bench/lib/tcp-floor.ts): the receiving one's
 * CPU and page faults. Synchronous: nothing else of this bench runs meanwhile.
 */
function tcpFloor(bytes: number, mode: 'stream' | 'reused'): { receiver: CpuSeconds; faults: number } {
  const out = execFileSync(process.execPath, [TCP_FLOOR, String(bytes), mode], { encoding: 'utf8' });
  const r = JSON.parse(out.trim().split('\n').pop()!) as { receiver: { user: number; sys: number; faults: number } };
  return { receiver: { user: r.receiver.user, sys: r.receiver.sys }, faults: r.receiver.faults };
}

/** The ceiling: the run's CPU seconds (sender + node, medians) spread over the cores, as a disk rate. */
function cpuFigures(
  imageBytes: number,
  wsRate: number,
  sender: CpuSeconds,
  node: CpuSeconds,
  localSender: CpuSeconds,
): Omit<WsCpuFigures, 'senderMain' | 'nodeMain'> {
  const cores = os.availableParallelism();
  const ceilingMbPerSec = imageBytes / MB / ((total(sender) + total(node)) / cores);
  return { cores, sender, node, localSender, ceilingMbPerSec, ofCeiling: wsRate / ceilingMbPerSec };
}

function medianMain(xs: MainThreadSeconds[]): MainThreadSeconds {
  return { run: median(xs.map((x) => x.run)), waitToRun: median(xs.map((x) => x.waitToRun)), asleep: median(xs.map((x) => x.asleep)) };
}

const fmtMain = (m: MainThreadSeconds) => `ran ${m.run.toFixed(2)} s, waited to run ${m.waitToRun.toFixed(2)} s, asleep ${m.asleep.toFixed(2)} s`;

/** What held the run back: the CPU it used, other load on the cores, or waiting (a stall). */
function verdict(c: WsCpuFigures): string {
  if (c.ofCeiling >= 0.85) return 'CPU-bound';
  const waited = Math.max(c.senderMain.waitToRun, c.nodeMain.waitToRun);
  const slept = Math.min(c.senderMain.asleep, c.nodeMain.asleep);
  return waited > slept
    ? 'held back by other load on the cores: its main threads waited to run more than they slept'
    : 'stalled: both main threads asleep part of the run';
}

// Standalone: node dist/bench/ws.js [image] [sizeMiB]
// (RNODE_BENCH_REPEAT runs per contender, default 3; RNODE_BENCH_WS_BANDWIDTH=0 skips the throttle figures.)
if (process.argv[1] && pathToFileURL(process.argv[1]).href === import.meta.url) {
  const L = await lib();
  const workdir = process.env.RNODE_BENCH_DIR ?? os.tmpdir();
  let image = process.argv[2];
  let made: string | undefined;
  if (!image) {
    made = image = path.join(workdir, `ws-bench-image-${process.pid}.img`);
    await L.generateSampleDisk(image, { size: Number(process.argv[3] ?? 256) * 1024 * 1024, seed: 1, holeEvery: 0 });
  }
  try {
    const r = await benchWs({
      image,
      workdir,
      log: (l) => console.log(l),
      repeat: Number(process.env.RNODE_BENCH_REPEAT ?? 3),
      ...(process.env.RNODE_BENCH_WS_BANDWIDTH !== undefined ? { bandwidth: Number(process.env.RNODE_BENCH_WS_BANDWIDTH) } : {}),
    });
    console.log(JSON.stringify(r, null, 1));
  } finally {
    if (made) await fsp.rm(made, { force: true });
  }
}
