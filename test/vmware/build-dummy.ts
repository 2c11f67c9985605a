// Compiles test/vmware/dummy-vddk.c into <libdir>/lib64/libvixDiskLib.so, the layout of a real VDDK install,
// so the tests load it through the same libdir + dlopen path as production.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const SOURCE = fileURLToPath(new URL('./dummy-vddk.c', import.meta.url));

/** Builds the stand-in VDDK under `libdir` and returns the path of the shared library. */
export function buildDummyVddk(libdir: string): string {
  const lib64 = path.join(libdir, 'lib64');
  fs.mkdirSync(lib64, { recursive: true });
  const out = path.join(lib64, 'libvixDiskLib.so');
  execFileSync(
    'gcc',
    ['-shared', '-fPIC', '-O2', '-Wall', '-Wextra', '-Wno-unused-parameter', '-Werror', '-fvisibility=hidden', '-pthread', '-o', out, SOURCE],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  return out;
}

/** One parsed line of the dummy's call log. */
export interface DummyCall {
  op: string;
  fields: Record<string, string>;
  raw: string;
}

export function readDummyLog(file: string): DummyCall[] {
  if (!fs.existsSync(file)) return [];
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((raw) => {
      const op = raw.split(' ', 1)[0];
      const fields: Record<string, string> = {};
      // A value runs to the next " key=" (disk paths such as "[datastore1] vm/vm.vmdk" hold spaces).
      for (const m of raw.slice(op.length).matchAll(/ (\w+)=(.*?)(?= \w+=| ->|$)/g)) fields[m[1]] = m[2];
      return { op, fields, raw };
    });
}

/** Bytes delivered by successful Read calls in a call log (optionally for one disk path). */
export function bytesReadInLog(calls: DummyCall[]): number {
  return calls.filter((c) => c.op === 'Read' && !c.raw.includes('->')).reduce((n, c) => n + Number(c.fields.count) * 512, 0);
}
