// Helpers for the export tests: disk images with data, allocated zeros and holes; an export started in this
// process on a unix socket (closed with the test); the real NBD clients (qemu-img, qemu-io, nbdinfo, nbdcopy)
// run asynchronously, since the server they talk to shares this event loop.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { startExport, type ExportOptions, type RunningExport } from '../../src/export/index.js';
import { encodeClientFlags, encodeGo, encodeOption, FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES, Opt, Rep } from '../../src/source/nbd/protocol.js';
import type { FsStore } from '../../src/store/index.js';
import { fsStore, randomData, snap, textData, tmpDir, writeAt, writeHoleImage } from '../helpers/images.js';

export const KiB = 1024;
export const MiB = 1024 * 1024;
export const CHUNK = 64 * KiB;
/** Not a multiple of the chunk size (a short last chunk), but of 4 KiB, which qemu's NBD client wants. */
export const SIZE = 8 * MiB + 20 * KiB;

interface Teardown {
  teardown(fn: () => void | Promise<void>): void;
}

/**
 * The test disk: random data, text, allocated zeros (written as zeros: ZERO chunks), and holes.
 * [0, 1 MiB) random; [1, 2 MiB) text; [2, 3 MiB) written zeros; [3, 5 MiB) hole; [5 MiB+4 KiB, +300 KiB) random
 * (unaligned: chunks partly data); the last 20 KiB + 44 KiB random (the short last chunk).
 */
export function makeDisk(file: string, seed = 1): void {
  writeHoleImage(file, SIZE);
  writeAt(file, 0, randomData(MiB, seed));
  writeAt(file, MiB, textData(MiB, seed));
  writeAt(file, 2 * MiB, Buffer.alloc(MiB));
  writeAt(file, 5 * MiB + 4 * KiB, randomData(300 * KiB, seed + 1));
  writeAt(file, SIZE - 64 * KiB, randomData(64 * KiB, seed + 2));
}

/** A fresh folder with makeDisk's image (dir/disk.img) replicated as point 1 of disk "vm" into dir/store. */
export async function storedDisk(t: Teardown, tag: string): Promise<{ dir: string; storeDir: string; store: FsStore; image: string }> {
  const dir = tmpDir(t, tag);
  const storeDir = path.join(dir, 'store');
  const store = fsStore(storeDir);
  const image = path.join(dir, 'disk.img');
  makeDisk(image);
  await snap(store, image, 'vm', { chunkSize: CHUNK, lease: false });
  return { dir, storeDir, store, image };
}

/** The change between two points: new data in some chunks, a data chunk zeroed, data written into the hole. */
export function changeDisk(file: string, seed = 7): void {
  writeAt(file, 128 * KiB, randomData(64 * KiB, seed));
  writeAt(file, 512 * KiB, Buffer.alloc(64 * KiB));
  writeAt(file, 4 * MiB + 8 * KiB, randomData(100 * KiB, seed + 1));
}

/** `count` points of disk vm in dir/store, each a copy of the image in dir/p<n>.img (prune tests: what to compare). */
export async function pointsWithCopies(dir: string, count: number): Promise<{ store: FsStore; copies: string[] }> {
  const store = fsStore(path.join(dir, 'store'));
  const image = path.join(dir, 'disk.img');
  makeDisk(image);
  const copies: string[] = [];
  for (let n = 1; n <= count; n++) {
    if (n > 1) changeDisk(image, 7 * n);
    await snap(store, image, 'vm', { chunkSize: CHUNK, lease: false });
    copies.push(path.join(dir, `p${n}.img`));
    fs.copyFileSync(image, copies[n - 1]);
  }
  return { store, copies };
}

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

export function run(cmd: string, args: string[], opts: { timeoutMs?: number } = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: opts.timeoutMs ?? 60_000, maxBuffer: 16 * MiB, encoding: 'utf8' }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as NodeJS.ErrnoException).code === 'number' ? (err as unknown as { code: number }).code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

export function unixUrl(socket: string, name: string): string {
  return `nbd+unix:///${encodeURIComponent(name)}?socket=${socket}`;
}

/** An export of a store started in this process on dir/<tag>.sock; closed when the test ends. */
export async function serveExport(
  t: Teardown,
  dir: string,
  opts: Omit<ExportOptions, 'socket'> & { tag?: string },
): Promise<RunningExport & { socket: string }> {
  const socket = path.join(dir, `${opts.tag ?? 'e'}.sock`);
  const exp = await startExport({ ...opts, socket });
  t.teardown(() => exp.close());
  return Object.assign(exp, { socket });
}

/** `qemu-img compare` of a raw image against an NBD URL: exit 0 when identical. */
export function compare(image: string, url: string): Promise<Run> {
  return run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', image, url]);
}

export interface MapEntry {
  offset: number;
  length: number;
  type: number;
  description: string;
}

export async function nbdMap(url: string): Promise<MapEntry[]> {
  const r = await run('nbdinfo', ['--map', '--json', url]);
  if (r.code !== 0) throw new Error(`nbdinfo --map failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as MapEntry[];
}

/** The 4 KiB blocks of a file that hold only zeros, as [offset, length) runs (for map expectations). */
export function zeroRuns(file: string, granule: number): Array<[number, number]> {
  const b = fs.readFileSync(file);
  const out: Array<[number, number]> = [];
  for (let o = 0; o < b.length; o += granule) {
    const end = Math.min(b.length, o + granule);
    const zero = b.subarray(o, end).every((x) => x === 0);
    if (!zero) continue;
    const last = out[out.length - 1];
    if (last && last[0] + last[1] === o) last[1] += end - o;
    else out.push([o, end - o]);
  }
  return out;
}

export const haveTools = ['qemu-img', 'qemu-io', 'nbdinfo', 'nbdcopy'].every((c) => {
  try {
    fs.accessSync(`/usr/bin/${c}`, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
});

/** A scriptable client: raw bytes out, exact reads in (with a deadline), and whether the server closed. */
export class Raw {
  private buf = Buffer.alloc(0);
  private wake?: () => void;
  closed = false;
  readonly socket: net.Socket;
  constructor(path: string) {
    this.socket = net.connect(path);
    this.socket.on('data', (d) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.wake?.();
    });
    this.socket.on('close', () => {
      this.closed = true;
      this.wake?.();
    });
    this.socket.on('error', () => undefined);
  }
  send(b: Buffer): void {
    this.socket.write(b);
  }
  async read(n: number, ms = 5000): Promise<Buffer> {
    const deadline = Date.now() + ms;
    while (this.buf.length < n) {
      if (this.closed) throw new Error('closed');
      if (Date.now() > deadline) throw new Error('timeout');
      await new Promise<void>((r) => {
        this.wake = r;
        setTimeout(r, 50);
      });
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }
  /** Resolves true when the server closes within ms. */
  async closedWithin(ms: number): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (!this.closed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    return this.closed;
  }
  async optionReply(): Promise<{ option: number; type: number; data: Buffer }> {
    const h = await this.read(20);
    const length = h.readUInt32BE(16);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: await this.read(length) };
  }
  async greet(): Promise<void> {
    await this.read(18);
    this.send(encodeClientFlags(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES));
  }
  /** Greeting, GO on name (optionally structured replies first); the socket is then in transmission. */
  async open(name = 'vm', structured = false): Promise<void> {
    await this.greet();
    if (structured) {
      this.send(encodeOption(Opt.STRUCTURED_REPLY));
      if ((await this.optionReply()).type !== Rep.ACK) throw new Error('no structured replies');
    }
    this.send(encodeOption(Opt.GO, encodeGo(name, [])));
    for (;;) {
      const r = await this.optionReply();
      if (r.type === Rep.ACK) return;
      if (r.type !== Rep.INFO) throw new Error(`GO refused: 0x${r.type.toString(16)}`);
    }
  }
  /** A simple reply's error field (no structured replies negotiated), skipping `dataLength` bytes of read data. */
  async simpleReply(dataLength = 0): Promise<number> {
    const h = await this.read(16);
    const err = h.readUInt32BE(4);
    if (err === 0 && dataLength) await this.read(dataLength, 15_000);
    return err;
  }
  close(): void {
    this.socket.destroy();
  }
}
