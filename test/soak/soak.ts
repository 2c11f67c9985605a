// The fault soak: replicate, prune, recover and verify in a loop over several changing disks, with random store
// faults (5%), ws link cuts, SIGKILLs of the writer and of `rnode serve`, and a full tmpfs store; every point ever
// committed has the SHA-256 of its image recorded, and every kept point must restore to exactly that.
import { spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { isRnodeError } from '../../src/errors.js';
import { prune } from '../../src/jobs/prune-v2.js';
import { listPoints } from '../../src/repository/points.js';
import { replicate } from '../../src/jobs/replicate.js';
import { recover } from '../../src/jobs/restore.js';
import { verify } from '../../src/jobs/verify.js';
import { generateSampleDisk } from '../../src/sample/sample-disk.js';
import { openSource } from '../../src/source/index.js';
import { FsStore } from '../../src/store/fs/fs-store.js';
import type { ObjectStore } from '../../src/store/types.js';
import { FaultyStore } from '../../src/store/wrappers/faulty.js';
import { wrapStore } from '../../src/store/wrap.js';
import { cuttingProxy } from '../transport/helpers.js';
import { CLI, ensureBuilt, plainNode } from '../helpers/cli.js';

const KiB = 1024;
const MiB = 1024 * 1024;
const DISK = 4 * MiB;
const CHUNK = '64KiB';
const TOKEN = 'soak-token-0123456789abcdef';
/**
 * Prune's grace in the soak. The default (1 h) guards packs against writers running beside prune; here episodes
 * run one at a time, so a short grace is safe, and it makes prune really delete packs within minutes. With the
 * default nothing was ever deleted, and a 20-minute soak filled its 64 MiB tmpfs store (ENOSPC).
 */
const SOAK_GRACE_MS = 20_000;

export interface SoakCounts {
  seconds: number;
  runs: number;
  runsFailed: number;
  faultsInjected: number;
  writerKills: number;
  serveKills: number;
  serveKillsRiddenOut: number;
  linkCuts: number;
  serveStartFailures: number;
  fullDiskRefusals: number;
  prunes: number;
  packsDeleted: number;
  recovers: number;
  verifies: number;
  pointsCommitted: number;
  pointsVerified: number;
  badRestores: number;
  badVerifies: number;
  rssStartMiB: number;
  rssEndMiB: number;
  tmpfs: boolean;
  problems: string[];
  /** With problems: the last episodes, oldest first. */
  trail?: string[];
}

interface Site {
  name: string;
  dir: string;
  url: () => string;
  local: boolean;
}

const sha = (f: string) => crypto.createHash('sha256').update(fs.readFileSync(f)).digest('hex');
const rssMiB = () => Math.round(process.memoryUsage().rss / MiB);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** How long until the lease an RNODE_LEASE_HELD message names stops binding (1 s if it names no time, 15 s at most). */
export function leaseWaitMs(message: string, now = Date.now()): number {
  const until = Date.parse(/lease until (\S+?)\)/.exec(message)?.[1] ?? '');
  return Number.isFinite(until) ? Math.min(15_000, Math.max(0, until - now) + 100) : 1000;
}

export interface SoakOptions {
  minutes: number;
  seed?: number;
  log?: (l: string) => void;
  dir?: string;
  /** Only these episodes (names of `episodes` below); all of them by default. */
  episodes?: string[];
  /** Called once a killed `serve` has exited, with the port it held (a test takes the port to force a failed start). */
  onServeKilled?: (port: number) => Promise<void> | void;
}

export async function runSoak(opts: SoakOptions): Promise<SoakCounts> {
  ensureBuilt();
  const log = opts.log ?? (() => undefined);
  const rnd = { next: mulberry32(opts.seed ?? Date.now() % 100000) };
  // What the last episodes did (their picks, the writers' exits): printed with the problems, to retrace one.
  const trail: string[] = [];
  let picked: string[] = [];
  const pick = <T>(xs: T[]): T => {
    const x = xs[Math.floor(rnd.next() * xs.length)];
    picked.push(typeof x === 'object' && x !== null && 'name' in x ? String(x.name) : String(x));
    return x;
  };
  const root = opts.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'rnode-soak-'));
  cacheDir = path.join(root, 'cache');
  const c: SoakCounts = {
    seconds: 0,
    runs: 0,
    runsFailed: 0,
    faultsInjected: 0,
    writerKills: 0,
    serveKills: 0,
    serveKillsRiddenOut: 0,
    linkCuts: 0,
    serveStartFailures: 0,
    fullDiskRefusals: 0,
    prunes: 0,
    packsDeleted: 0,
    recovers: 0,
    verifies: 0,
    pointsCommitted: 0,
    pointsVerified: 0,
    badRestores: 0,
    badVerifies: 0,
    rssStartMiB: rssMiB(),
    rssEndMiB: 0,
    tmpfs: false,
    problems: [],
  };
  const children = new Set<ChildProcess>();
  const teardown: Array<() => Promise<void> | void> = [];
  const started = Date.now();
  const deadline = started + opts.minutes * 60_000;

  // Disks: small mixed images, changed between runs (a few 64 KiB blocks rewritten, one zeroed).
  const disks = ['d0', 'd1', 'd2'];
  const imgs = new Map<string, string>();
  for (const [i, d] of disks.entries()) {
    const f = path.join(root, `${d}.img`);
    await generateSampleDisk(f, { size: DISK, seed: 300 + i });
    imgs.set(d, f);
  }
  const mutate = (d: string) => {
    const fd = fs.openSync(imgs.get(d)!, 'r+');
    try {
      for (let k = 0; k < 1 + Math.floor(rnd.next() * 6); k++) {
        const block = crypto.randomBytes(64 * KiB);
        if (rnd.next() < 0.2) block.fill(0);
        fs.writeSync(fd, block, 0, block.length, Math.floor(rnd.next() * (DISK / (64 * KiB))) * 64 * KiB);
      }
    } finally {
      fs.closeSync(fd);
    }
  };

  // Sites: a local fs store, a node (`rnode serve`) behind a cutting proxy, and a small tmpfs store.
  const local: Site = { name: 'local', dir: path.join(root, 'store-local'), url: () => path.join(root, 'store-local'), local: true };
  const nodeDir = path.join(root, 'store-node');
  const tokenFile = path.join(root, 'token');
  fs.writeFileSync(tokenFile, TOKEN, { mode: 0o600 });
  let servePort = 0;
  let serve: ChildProcess | undefined;
  const startServeOnce = async (port: number) => {
    const child = spawn(...plainNode([CLI, 'serve', '--json', '--listen', `127.0.0.1:${port}`, '--store', nodeDir, '--token-file', tokenFile]), {
      stdio: ['ignore', 'pipe', 'ignore'],
      env: cleanEnv(),
    });
    children.add(child);
    child.on('exit', () => children.delete(child));
    try {
      const line = await new Promise<string>((resolve, reject) => {
        let out = '';
        const timer = setTimeout(() => reject(new Error('serve did not listen within 15 s')), 15_000);
        child.stdout!.on('data', (b) => {
          out += b;
          if (out.includes('\n')) {
            clearTimeout(timer);
            resolve(out.split('\n')[0]);
          }
        });
        child.on('exit', (code, sig) => {
          clearTimeout(timer);
          reject(new Error(`serve exited (${code ?? sig}) before listening`));
        });
      });
      servePort = Number(new URL((JSON.parse(line) as { listening: string }).listening).port);
      serve = child;
    } catch (err) {
      child.kill('SIGKILL');
      throw err;
    }
  };
  /**
   * A failed start (its port taken by another process in the meantime, say) is a soak event, not the end of the
   * run: counted, then retried on any free port (the proxy follows servePort). Only a serve that never starts is
   * a problem; the remote episodes then fail and try again.
   */
  const startServe = async () => {
    serve = undefined;
    for (let attempt = 0; attempt < 10; attempt++) {
      try {
        await startServeOnce(attempt === 0 ? servePort : 0);
        return;
      } catch (err) {
        c.serveStartFailures++;
        log(`soak: serve did not start on port ${attempt === 0 ? servePort : 0}: ${(err as Error).message}`);
        await sleep(100 * (attempt + 1));
      }
    }
    c.problems.push('serve did not start in 10 attempts');
  };
  await startServe();
  // Each new connection is cut after a random amount of traffic with probability 0.3.
  const proxy = await cuttingProxy(
    {
      teardown: (fn) => {
        teardown.push(fn);
      },
    },
    () => servePort,
    () => (rnd.next() < 0.3 ? 4 * KiB + Math.floor(rnd.next() * 2 * MiB) : undefined),
  );
  const remote: Site = { name: 'node', dir: nodeDir, url: () => `ws://127.0.0.1:${proxy.port}`, local: false };
  const tmpfsDir = path.join(root, 'store-tmpfs');
  fs.mkdirSync(tmpfsDir);
  c.tmpfs = tryMount(tmpfsDir, '1m');
  if (c.tmpfs)
    teardown.push(() => {
      try {
        execFileSync('umount', ['-l', tmpfsDir]);
      } catch {
        /* gone */
      }
    });
  const sites = [local, remote];

  /** sha256 of the image each committed point must restore to, by "site/disk/point". */
  const expected = new Map<string, string>();
  const fsFor = (s: Site) => new FsStore(s.dir, { fsync: false });
  /** New committed points of a disk (since the last look) hold the image as it is now: it does not change mid-episode. */
  const recordNew = async (s: Site, d: string) => {
    const h = sha(imgs.get(d)!);
    for (const m of await listPoints(fsFor(s), d)) {
      const k = `${s.name}/${d}/${m.point}`;
      if (!expected.has(k)) {
        expected.set(k, h);
        c.pointsCommitted++;
      }
    }
  };

  const cliReplicate = (s: Site, d: string, killAfterMs?: number) =>
    new Promise<{ code: number | null; killed: boolean; err: string }>((resolve) => {
      const args = [
        CLI,
        'replicate',
        '--source',
        imgs.get(d)!,
        '--target',
        s.url(),
        '--disk',
        d,
        '--chunk-size',
        CHUNK,
        '--json',
        ...(s.local ? [] : ['--token-file', tokenFile]),
      ];
      const child = spawn(...plainNode(args), { stdio: ['ignore', 'pipe', 'pipe'], env: cleanEnv() });
      children.add(child);
      let out = '';
      child.stdout!.on('data', (b) => {
        out += b;
      });
      let err = '';
      child.stderr!.on('data', (b) => {
        err += b;
      });
      let killed = false;
      const timer =
        killAfterMs !== undefined
          ? setTimeout(() => {
              killed = true;
              child.kill('SIGKILL');
            }, killAfterMs)
          : undefined;
      const hard = setTimeout(() => child.kill('SIGKILL'), 120_000);
      child.on('exit', (code) => {
        clearTimeout(timer);
        clearTimeout(hard);
        children.delete(child);
        const last = err.trim().split('\n').pop() ?? '';
        const point = /"point":(\d+)/.exec(out)?.[1];
        const outcome = killed && code === null ? 'killed' : code === 0 ? `point ${point}` : `exit ${code} ${/RNODE_[A-Z_]+/.exec(last)?.[0] ?? ''}`;
        picked.push(`cli ${s.name}/${d} ${outcome}`);
        resolve({ code, killed: killed && code === null, err: last });
      });
    });

  /** Replicates until a point is committed (each failed attempt resumes from its checkpoint). */
  const replicateUntilCommitted = async (s: Site, d: string) => {
    const errors: string[] = [];
    for (let attempt = 0; attempt < 8; attempt++) {
      c.runs++;
      const r = await cliReplicate(s, d);
      if (r.code === 0) return;
      errors.push(r.killed ? 'killed' : r.err);
      // Held by a live holder: this soak's own in-process run, whose lease release an injected fault refused. The
      // CLI does not wait for a lease; wait until the time its message names (the 5 s TTL plus the readers' skew
      // margin, 10 s in all: more than 8 quick attempts spaced by a fixed pause took on a slow CI machine).
      if (r.err.includes('RNODE_LEASE_HELD')) await sleep(leaseWaitMs(r.err));
      c.runsFailed++;
      if (r.code !== 1 && r.code !== null) c.problems.push(`replicate ${s.name}/${d} exit ${r.code}: ${r.err}`);
      // exitCode stays null for a process killed by a signal: look at both.
      if (!s.local && (!serve || serve.exitCode !== null || serve.signalCode !== null)) await startServe();
    }
    c.problems.push(`replicate ${s.name}/${d} never committed in 8 attempts: ${[...new Set(errors)].join(' | ')}`);
  };

  const episodes: Record<string, () => Promise<void>> = {
    // In-process replicate against a store failing 5% of calls (half of the time without the retry wrapper, so
    // runs fail and the next one resumes).
    faults: async () => {
      const d = pick(disks);
      const faulty = new FaultyStore(new FsStore(local.dir, { fsync: false }), { seed: Math.floor(rnd.next() * 1e9) });
      for (const m of ['put', 'get', 'head', 'list'] as const)
        faulty.addFault(m, { probability: 0.05, error: { code: 'RNODE_STORE_UNAVAILABLE', retryable: true, message: 'soak: injected fault' } });
      const store: ObjectStore = rnd.next() < 0.5 ? faulty : wrapStore(faulty, { retry: { baseDelayMs: 5, maxDelayMs: 50 } });
      for (let attempt = 0; attempt < 10; attempt++) {
        c.runs++;
        const src = await openSource(imgs.get(d)!);
        try {
          // Short chains, so points whose tables stand alone (and their resumes) are written under faults too.
          const maxChain = 2 + Math.floor(rnd.next() * 3);
          // Half the runs keep change hashes where the CLI writers keep theirs: hashes of points written through
          // faults and resumes (or none at all) must never make a later incremental miss a change.
          const changeHashDir = rnd.next() < 0.5 ? path.join(root, 'cache') : undefined;
          const done = await replicate({
            store,
            source: src,
            disk: d,
            chunkSize: 64 * KiB,
            maxChain,
            changeHashDir,
            lease: { holder: 'soak', ttlMs: 5000, waitMs: 10_000 },
          });
          picked.push(`in-process point ${done.point}`);
          break;
        } catch (err) {
          picked.push(`in-process ${(err as { code?: string }).code ?? 'failed'}`);
          c.runsFailed++;
          if (!isRnodeError(err)) c.problems.push(`faults ${d}: uncoded error ${(err as Error).message}`);
        } finally {
          await src.close();
        }
      }
      c.faultsInjected += faulty.firedCount;
      await recordNew(local, d);
    },
    // A writer process SIGKILLed at a random moment, then run again to completion.
    killWriter: async () => {
      const s = pick(sites);
      const d = pick(disks);
      c.runs++;
      const r = await cliReplicate(s, d, 50 + Math.floor(rnd.next() * 900));
      if (r.killed) c.writerKills++;
      await recordNew(s, d);
      await replicateUntilCommitted(s, d);
      await recordNew(s, d);
    },
    // `rnode serve` SIGKILLed while a writer sends to it (and the link cut at random by the proxy).
    killServe: async () => {
      const d = pick(disks);
      const cutsBefore = proxy.cuts;
      const run = cliReplicate(remote, d);
      await sleep(50 + Math.floor(rnd.next() * 700));
      const killed = serve;
      const exited =
        killed && killed.exitCode === null && killed.signalCode === null ? new Promise((r) => killed.once('exit', r)) : Promise.resolve();
      killed?.kill('SIGKILL');
      c.serveKills++;
      c.runs++;
      // Restarting before the killed process is gone would race it for its own port. The restart does not wait
      // for the writer: inside its reconnect budget it must ride the kill out on the new serve (before, the
      // writer of every serve kill failed and only the next run, resuming, was tested).
      await exited;
      await opts.onServeKilled?.(servePort);
      await startServe();
      const r = await run;
      if (r.code === 0) c.serveKillsRiddenOut++;
      else c.runsFailed++;
      await recordNew(remote, d);
      await replicateUntilCommitted(remote, d);
      await recordNew(remote, d);
      c.linkCuts += proxy.cuts - cutsBefore;
    },
    ws: async () => {
      const d = pick(disks);
      const cutsBefore = proxy.cuts;
      await replicateUntilCommitted(remote, d);
      await recordNew(remote, d);
      c.linkCuts += proxy.cuts - cutsBefore;
    },
    prune: async () => {
      const s = pick(sites);
      const d = pick(disks);
      const store = fsFor(s);
      if (!(await listPoints(store, d)).length) return;
      const r = await prune({
        store,
        disk: d,
        keep: 2 + Math.floor(rnd.next() * 3),
        lease: { holder: 'soak', ttlMs: 5000, waitMs: 10_000 },
        graceMs: SOAK_GRACE_MS,
      });
      c.prunes++;
      for (const m of r.domains) c.packsDeleted += m.packsDeleted;
      for (const p of r.deleted) expected.delete(`${s.name}/${d}/${p}`);
    },
    recover: async () => {
      const s = pick(sites);
      const d = pick(disks);
      const points = await listPoints(fsFor(s), d);
      if (!points.length) return;
      await checkPoint(s, d, pick(points).point);
    },
  };

  const checkPoint = async (s: Site, d: string, point: number) => {
    const want = expected.get(`${s.name}/${d}/${point}`);
    const out = path.join(root, `out-${s.name}-${d}-${point}.img`);
    c.recovers++;
    try {
      await recover({ store: fsFor(s), disk: d, point: String(point), out });
      const got = sha(out);
      if (!want) c.problems.push(`${s.name}/${d}/${point}: a point nobody recorded`);
      else if (got !== want) {
        c.badRestores++;
        c.problems.push(`${s.name}/${d}/${point}: restore differs from the image it was taken of`);
      } else c.pointsVerified++;
    } catch (err) {
      c.badRestores++;
      c.problems.push(`${s.name}/${d}/${point}: recover failed: ${(err as Error).message}`);
    } finally {
      fs.rmSync(out, { force: true });
    }
  };

  // Full disk: a 1 MiB tmpfs cannot hold a 4 MiB disk's first point; the run must fail with a code and commit
  // nothing; after the tmpfs grows, the next run commits (from the checkpoint) and restores byte-exact.
  const fullDisk = async () => {
    if (!c.tmpfs) return;
    const site: Site = { name: 'tmpfs', dir: tmpfsDir, url: () => tmpfsDir, local: true };
    const d = 'd0';
    c.runs++;
    const r = await cliReplicate(site, d);
    const committed = (await listPoints(fsFor(site), d)).length;
    if (r.code === 0) c.problems.push('full disk: replicate into a 1 MiB tmpfs succeeded');
    else if (!/RNODE_[A-Z_]+/.test(r.err)) c.problems.push(`full disk: no coded error: ${r.err}`);
    else c.fullDiskRefusals++;
    if (committed) c.problems.push('full disk: a point was committed');
    execFileSync('mount', ['-o', 'remount,size=64m', tmpfsDir]);
    await replicateUntilCommitted(site, d);
    await recordNew(site, d);
    sites.push(site);
  };

  try {
    const names = opts.episodes ?? Object.keys(episodes);
    for (const n of names) if (!episodes[n]) throw new Error(`soak: no episode ${n}`);
    let round = 0;
    let fullDone = false;
    while (Date.now() < deadline) {
      round++;
      for (const d of disks) if (rnd.next() < 0.5) mutate(d);
      const name = pick(names);
      picked = [];
      const t0 = Date.now();
      try {
        await episodes[name]();
      } catch (err) {
        // An episode's own step failing (a prune, a listing) is a problem to report with what led to it, not the end
        // of the soak: the end's restore of every kept point still runs.
        c.problems.push(`episode ${name} (${picked.join(', ')}) failed: ${(err as Error).message}`);
      }
      trail.push(`${round} ${name}(${picked.join(', ')}) ${((Date.now() - t0) / 1000).toFixed(1)} s`);
      if (trail.length > 40) trail.shift();
      // Any path that stalls (a wait on a budget or a lease, a hang) shows up here rather than as a slow soak.
      if (Date.now() - t0 > 30_000) log(`soak: episode ${name} took ${Math.round((Date.now() - t0) / 1000)} s`);
      // The full-disk episode once, about a third of the way in.
      if (!fullDone && Date.now() > started + (deadline - started) / 3) {
        fullDone = true;
        await fullDisk();
      }
      if (round % 10 === 0)
        log(
          `soak: ${Math.round((Date.now() - started) / 1000)} s, ${c.runs} runs, ${c.faultsInjected} faults, ${c.writerKills + c.serveKills} kills, ${c.linkCuts} cuts, ${c.pointsCommitted} points, rss ${rssMiB()} MiB`,
        );
    }
    if (!fullDone) await fullDisk();
    // The end: every kept point of every site restores to its image, and verify finds nothing.
    for (const s of sites) {
      for (const d of [...disks]) {
        const store = fsFor(s);
        const points = await listPoints(store, d);
        for (const m of points) await checkPoint(s, d, m.point);
        if (points.length) {
          c.verifies++;
          const v = await verify({ store, disk: d, point: 'all' });
          if (!v.ok) {
            c.badVerifies++;
            c.problems.push(`verify ${s.name}/${d}: ${v.problems[0]?.message}`);
          }
        }
      }
    }
  } finally {
    if (c.problems.length) c.trail = trail;
    for (const ch of children) ch.kill('SIGKILL');
    for (const fn of teardown.reverse()) await fn();
    c.seconds = Math.round((Date.now() - started) / 1000);
    c.rssEndMiB = rssMiB();
    if (!opts.dir) fs.rmSync(root, { recursive: true, force: true });
  }
  return c;
}

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function tryMount(dir: string, size: string): boolean {
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** The change-hash folder of the soak's writers (in its root), set when the soak starts. */
let cacheDir: string | undefined;

function cleanEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env, ...(cacheDir ? { RNODE_CACHE_DIR: cacheDir } : {}) };
  delete env.NODE_OPTIONS;
  delete env.NODE_V8_COVERAGE;
  delete env.RNODE_FAILPOINT;
  return env;
}

export function formatCounts(c: SoakCounts): string {
  return [
    `soak finished after ${c.seconds} s`,
    `  runs ${c.runs} (failed and resumed/retried: ${c.runsFailed}), prunes ${c.prunes} (packs deleted: ${c.packsDeleted}), recovers ${c.recovers}, verifies ${c.verifies}`,
    `  faults injected ${c.faultsInjected}, writer kills ${c.writerKills}, serve kills ${c.serveKills} (writer rode it out: ${c.serveKillsRiddenOut}), link cuts ${c.linkCuts}, serve start failures ${c.serveStartFailures}, full-disk refusals ${c.fullDiskRefusals}${c.tmpfs ? '' : ' (tmpfs unavailable: skipped)'}`,
    `  points committed ${c.pointsCommitted}, points verified byte-exact ${c.pointsVerified}, bad restores ${c.badRestores}, bad verifies ${c.badVerifies}`,
    `  RSS start ${c.rssStartMiB} MiB, end ${c.rssEndMiB} MiB`,
    ...c.problems.slice(0, 20).map((p) => `  problem: ${p}`),
    ...(c.trail ? ['  last episodes:', ...c.trail.map((l) => `    ${l}`)] : []),
  ].join('\n');
}
