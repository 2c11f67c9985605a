// `rnode export` logs through the project logger: with --log-format json every stderr line is a pino JSON line
// (time, level, msg); the listening address, a failed chunk read (chunk, offset, object, code) and the counters at
// the stop are in them, stdout keeps its own line, and --log-level warn drops the info lines but not the failure.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { ErrorCodes } from '../../src/errors.js';
import { CLI, ensureBuilt, plainNode } from '../helpers/cli.js';
import { blobPlace, fsStore, snap, stopCodecWorkersAtEnd, tmpDir } from '../helpers/images.js';
import { CHUNK, haveTools, makeDisk, run, unixUrl } from './helpers.js';

t.setTimeout(180_000);
stopCodecWorkersAtEnd(t);

interface LogLine {
  time: string;
  level: string;
  msg: string;
  [field: string]: unknown;
}

/** Runs `rnode export` on a socket until its stdout line, reads [offset, +length) with qemu-io, stops it. */
async function exportAndRead(args: string[], socket: string, offset: number, length: number) {
  const child = spawn(...plainNode([CLI, 'export', ...args, '--socket', socket]), { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => {
    stderr += d;
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  try {
    const stdout = await new Promise<string>((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (d) => {
        out += d;
        if (out.includes('\n')) resolve(out.split('\n')[0]);
      });
      child.once('exit', (code) => reject(new Error(`exited ${code}: ${stderr}`)));
    });
    const read = await run('qemu-io', ['-r', '-f', 'raw', '-c', `read ${offset} ${length}`, unixUrl(socket, 'vm')]);
    child.kill('SIGTERM');
    const code = await exited;
    return { stdout, stderr, code, readFailed: read.code !== 0 || /failed|error/i.test(read.stdout + read.stderr) };
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
  }
}

t.test('export --log-format json: pino lines with the address, the failed chunk and the stop', { skip: !haveTools && 'tools missing' }, async (t) => {
  ensureBuilt();
  const dir = tmpDir(t, 'export-log');
  const storeDir = path.join(dir, 'store');
  const image = path.join(dir, 'disk.img');
  makeDisk(image);
  await snap(fsStore(storeDir), image, 'vm', { chunkSize: CHUNK, lease: false });
  const bad = 3;
  const place = await blobPlace(storeDir, 'vm', 1, bad);
  const b = fs.readFileSync(place.file);
  b[place.offset + place.length - 100] ^= 0xff;
  fs.writeFileSync(place.file, b);
  const socket = path.join(dir, 'log.sock');

  const r = await exportAndRead(['--store', storeDir, '--disk', 'vm', '--log-format', 'json'], socket, bad * CHUNK, 4096);
  t.equal(r.code, 0, 'SIGTERM: clean exit 0');
  t.ok(r.readFailed, 'the read of the corrupted chunk fails (EIO)');
  t.equal(r.stdout, `serving point 1 of disk vm (read-only) at nbd+unix:///vm?socket=${socket}`, 'stdout keeps its line');
  const lines = r.stderr.trim().split('\n');
  const logs = lines.map((l) => JSON.parse(l) as LogLine);
  for (const l of logs) t.match(l, { time: /^\d{4}-\d\d-\d\dT/, level: /^(info|warn)$/, msg: String }, `a pino line: ${l.msg}`);
  t.match(
    logs.find((l) => l.msg === 'serving'),
    { level: 'info', url: `nbd+unix:///vm?socket=${socket}`, disk: 'vm', point: 1, writable: false },
    'the listening address',
  );
  const failed = logs.find((l) => l.msg === 'chunk-read-failed');
  t.match(
    failed,
    { level: 'warn', chunk: bad, offset: bad * CHUNK, key: String, point: 1, code: ErrorCodes.CHUNK_CORRUPT },
    'the failed read: chunk, offset, object and code',
  );
  t.match(String(failed?.message), place.packId, 'its message names the pack');
  t.match(
    logs.find((l) => l.msg === 'stopping'),
    { level: 'info', connections: 1, bytesServed: Number },
    'the counters at the stop',
  );

  // --log-level warn: the failure still, the info lines not.
  const w = await exportAndRead(['--store', storeDir, '--disk', 'vm', '--log-format', 'json', '--log-level', 'warn'], socket, bad * CHUNK, 4096);
  t.equal(w.code, 0, 'exit 0');
  const warnOnly = w.stderr
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as LogLine);
  t.same(
    warnOnly.map((l) => l.level).filter((l) => l !== 'warn'),
    [],
    'only warn lines',
  );
  t.ok(
    warnOnly.some((l) => l.msg === 'chunk-read-failed'),
    'the failure is logged',
  );
});

t.test('export --log-level and --log-format take the values serve and the agent take', async (t) => {
  ensureBuilt();
  const dir = tmpDir(t, 'export-log-flags');
  for (const [flag, value, message] of [
    ['--log-format', 'xml', /--log-format must be json or pretty/],
    ['--log-level', 'loud', /--log-level must be debug, info, warn or error/],
  ] as const) {
    const r = await run(process.execPath, [CLI, 'export', '--store', dir, '--disk', 'vm', '--socket', path.join(dir, 's.sock'), flag, value]);
    t.equal(r.code, 2, `${flag} ${value}: exit 2`);
    t.match(r.stderr, message, r.stderr.trim());
  }
});
