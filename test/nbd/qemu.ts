// Helpers for the NBD tests: qcow2 images with persistent dirty bitmaps (qemu-img, qemu-io), a qemu-nbd export
// on a unix socket in a temp dir (killed in teardown), raw snapshots of an image and its dirty ranges.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createCipheriv, createHash } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export const KiB = 1024;
export const MiB = 1024 * 1024;
/** qemu's default dirty bitmap granularity for qcow2 (the cluster size). */
export const GRANULE = 64 * KiB;

interface Teardown { teardown(fn: () => void | Promise<void>): void }

export function tmpDir(t: Teardown, tag = 'nbd'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `rnode-${tag}-`));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export function qemuImg(...args: string[]): string {
  return execFileSync('qemu-img', args, { encoding: 'utf8' });
}

export function createImage(file: string, size: number, bitmaps: string[] = []): void {
  qemuImg('create', '-q', '-f', 'qcow2', file, String(size));
  for (const b of bitmaps) qemuImg('bitmap', '--add', file, b);
}

export function addBitmap(file: string, name: string): void {
  qemuImg('bitmap', '--add', file, name);
}

/** Deterministic incompressible bytes (AES-CTR keystream of the seed). */
export function randomData(length: number, seed: number): Buffer {
  const key = createHash('sha256').update(`rnode-nbd-${seed}`).digest().subarray(0, 16);
  return createCipheriv('aes-128-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(length));
}

export interface Write { offset: number; length: number; seed: number }

/** Writes random data through qemu (so the image's enabled bitmaps record it); the image must not be exported. */
export function qemuWrite(file: string, writes: Write[], scratch: string): void {
  const cmds: string[] = [];
  writes.forEach((w, i) => {
    const src = path.join(scratch, `w${i}-${w.seed}.bin`);
    fs.writeFileSync(src, randomData(w.length, w.seed));
    cmds.push('-c', `write -q -s ${src} ${w.offset} ${w.length}`);
  });
  execFileSync('qemu-io', ['-f', 'qcow2', ...cmds, file]);
}

/** The bitmap-granular ranges a set of writes dirties, merged and sorted. */
export function dirtyRanges(writes: Write[], granule = GRANULE): Array<{ offset: number; length: number }> {
  const cells = new Set<number>();
  for (const w of writes) {
    for (let c = Math.floor(w.offset / granule); c <= Math.floor((w.offset + w.length - 1) / granule); c++) cells.add(c);
  }
  const sorted = [...cells].sort((a, b) => a - b);
  const out: Array<{ offset: number; length: number }> = [];
  for (const c of sorted) {
    const last = out[out.length - 1];
    if (last && last.offset + last.length === c * granule) last.length += granule;
    else out.push({ offset: c * granule, length: granule });
  }
  return out;
}

/** `qemu-img convert -O raw`: what the disk holds right now, byte for byte. */
export function rawSnapshot(file: string, out: string): string {
  qemuImg('convert', '-f', 'qcow2', '-O', 'raw', file, out);
  return out;
}

export function sha256File(file: string): string {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

export interface Export {
  socket: string;
  /** nbd+unix URL of the default export with the given extra query (e.g. 'bitmap=b0&checkpoint=b1'). */
  url(query?: string): string;
  stop(): Promise<void>;
}

/** Starts `qemu-nbd -r -t` on a unix socket in dir, exporting the given bitmaps; stopped in teardown at the latest. */
export async function startExport(t: Teardown, dir: string, file: string, bitmaps: string[] = []): Promise<Export> {
  const socket = path.join(dir, `nbd-${Date.now()}-${Math.random().toString(36).slice(2, 8)}.sock`);
  // -e: qemu-nbd serves one client at a time by default; the tests open several sources (and nbdinfo) at once.
  const args = ['-r', '-t', '-e', '8', '-f', 'qcow2', `--socket=${socket}`, ...bitmaps.flatMap((b) => ['-B', b]), file];
  const child = spawn('qemu-nbd', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d) => { stderr += d; });
  const stop = () => stopChild(child);
  t.teardown(stop);
  const deadline = Date.now() + 10_000;
  while (!(await canConnect(socket))) {
    if (child.exitCode !== null) throw new Error(`qemu-nbd ${args.join(' ')} exited: ${stderr}`);
    if (Date.now() > deadline) throw new Error(`qemu-nbd did not listen on ${socket} within 10 s: ${stderr}`);
    await new Promise((r) => setTimeout(r, 25));
  }
  return { socket, url: (query) => `nbd+unix:///?socket=${socket}${query ? `&${query}` : ''}`, stop };
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(t);
}

function canConnect(socket: string): Promise<boolean> {
  if (!fs.existsSync(socket)) return Promise.resolve(false);
  return new Promise((resolve) => {
    const s = net.createConnection({ path: socket });
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}

/** `nbdinfo --map[=context]` as extents with their type bits, or undefined when nbdinfo is not installed. */
export function nbdinfoMap(url: string, context?: string): Array<{ offset: number; length: number; type: number }> | undefined {
  let out: string;
  try {
    out = execFileSync('nbdinfo', [context ? `--map=${context}` : '--map', url], { encoding: 'utf8', timeout: 20_000 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  return out.trim().split('\n').filter(Boolean).map((line) => {
    const [offset, length, type] = line.trim().split(/\s+/).map(Number);
    return { offset, length, type };
  });
}

/** Merges adjacent extents (as a BlockSource yields them). */
export function merge(extents: Array<{ offset: number; length: number }>): Array<{ offset: number; length: number }> {
  const out: Array<{ offset: number; length: number }> = [];
  for (const e of extents) {
    const last = out[out.length - 1];
    if (last && last.offset + last.length === e.offset) last.length += e.length;
    else out.push({ offset: e.offset, length: e.length });
  }
  return out;
}

export async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

/** A Buffer on shared memory, like the pipeline's read slots. */
export function sharedBuffer(size: number): Buffer {
  return Buffer.from(new SharedArrayBuffer(size));
}
