// The CLI happy path through `node dist/cli.js`: replicate --json (every field the issue lists, with types and
// values), --disk defaulting to the source's base name, points --json (oldest first), recover --point latest
// and a number (byte-exact), verify --point all, prune --keep 1; help and version; the built-in demo on a small
// disk; and every command exiting on its own (no process left running) for a one-chunk disk.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import {
  KiB,
  MiB,
  fingerprint,
  fsStore,
  randomData,
  sha256File,
  snap,
  stopCodecWorkersAtEnd,
  textData,
  tmpDir,
  writeAt,
  writeHoleImage,
} from '../helpers/images.js';
import { CLI, DIST_INDEX, json, lines, runCli, runScript } from '../helpers/cli.js';
import { listPoints } from '../../src/repository/points.js';

stopCodecWorkersAtEnd(t);

const FIELDS: Record<string, string> = {
  disk: 'string',
  point: 'number',
  full: 'boolean',
  diskSize: 'number',
  chunkSize: 'number',
  bytesRead: 'number',
  bytesWritten: 'number',
  chunksTotal: 'number',
  chunksChanged: 'number',
  chunksZero: 'number',
  seconds: 'number',
};

t.test('replicate --json, points, recover, verify, prune through the CLI', async (t) => {
  const dir = tmpDir(t, 'cli');
  const img = path.join(dir, 'vm-01.img');
  const store = path.join(dir, 'store');
  const size = 2 * MiB + 4321;
  writeHoleImage(img, size);
  writeAt(img, 0, randomData(MiB, 1));
  writeAt(img, MiB + 64 * KiB, textData(300 * KiB, 1)); // then a hole up to the end, except the last bytes
  writeAt(img, size - 100, randomData(100, 2));
  const fp1 = fingerprint(img);

  // No --disk: it defaults to the source's base name.
  const r1 = await runCli(['replicate', '--source', img, '--target', store, '--chunk-size', '64KiB', '--json']);
  t.equal(r1.code, 0, `replicate exits 0 (${r1.stderr.trim()})`);
  t.equal(r1.stderr, '', 'nothing on stderr');
  const j1 = json(r1);
  for (const [k, type] of Object.entries(FIELDS)) t.equal(typeof j1[k], type, `--json has ${k} (${type})`);
  t.ok('parent' in j1, '--json has parent');
  t.equal(j1.disk, 'vm-01.img', '--disk defaults to the base name of the source');
  t.equal(j1.point, 1);
  t.equal(j1.parent, null);
  t.equal(j1.full, true);
  t.equal(j1.diskSize, size);
  t.equal(j1.chunkSize, 64 * KiB);
  t.equal(j1.chunksTotal, Math.ceil(size / (64 * KiB)));
  t.equal(j1.chunksChanged, 16 + 5 + 1, 'the data chunks: 16 random, 5 text, the last one');
  t.equal(j1.chunksZero, j1.chunksTotal - j1.chunksChanged, 'the rest are zero');
  t.equal(j1.bytesRead, 21 * 64 * KiB + (size - 32 * 64 * KiB), 'bytesRead: the chunks holding data only (holes are not read)');
  t.ok(j1.bytesWritten > MiB && j1.bytesWritten < MiB + 300 * KiB, `bytesWritten ${j1.bytesWritten}: random stored as is, text compressed`);
  t.ok(j1.seconds >= 0 && j1.seconds < 60);

  writeAt(img, 3 * 64 * KiB + 1, Buffer.from('changed'));
  const fp2 = fingerprint(img);
  const r2 = await runCli(['replicate', '--source', img, '--target', store, '--json']);
  t.equal(r2.code, 0, `second replicate exits 0 (${r2.stderr.trim()})`);
  const j2 = json(r2);
  t.match(j2, { disk: 'vm-01.img', point: 2, parent: 1, full: false, chunkSize: 64 * KiB, diskSize: size, chunksChanged: 1 });

  // Human output, explicit --disk equal to the default.
  const r3 = await runCli(['replicate', '--source', img, '--target', store, '--disk', 'vm-01.img']);
  t.equal(r3.code, 0);
  t.match(r3.stdout, /point 3 of disk vm-01\.img: incremental on point 2/);
  t.equal(r3.stderr, '');

  const pts = await runCli(['points', '--store', store, '--disk', 'vm-01.img', '--json']);
  t.equal(pts.code, 0, `points --json exits 0 (${pts.stderr.trim()})`);
  if (pts.code === 0) {
    const jp = json(pts);
    t.equal(jp.disk, 'vm-01.img');
    t.same(
      jp.points.map((p: any) => [p.point, p.parent, p.full]),
      [
        [1, null, true],
        [2, 1, false],
        [3, 2, false],
      ],
      'oldest first',
    );
  }
  const ptsHuman = await runCli(['points', '--store', store, '--disk', 'vm-01.img']);
  t.equal(ptsHuman.code, 0, `points exits 0 (${ptsHuman.stderr.trim()})`);
  t.equal(lines(ptsHuman.stdout).length, 4, 'a header and three rows');
  // A disk the store does not hold (a typo) is an error, not an empty list: a caller would take it for a disk with
  // nothing to recover yet.
  const typo = await runCli(['points', '--store', store, '--disk', 'vm-10.img']);
  t.equal(typo.code, 1, `points of an unknown disk exits 1 (${typo.stdout.trim()})`);
  t.match(typo.stderr, /^rnode: RNODE_DISK_NOT_FOUND: disk vm-10\.img has no committed points in .*rnode disks --store/);
  const typoJson = await runCli(['points', '--store', store, '--disk', 'vm-10.img', '--json']);
  t.equal(typoJson.code, 1);
  t.equal(json(typoJson).error?.code, 'RNODE_DISK_NOT_FOUND', '--json: the error document');

  const outLatest = path.join(dir, 'latest.img');
  const rl = await runCli(['recover', '--store', store, '--disk', 'vm-01.img', '--point', 'latest', '--out', outLatest, '--json']);
  t.equal(rl.code, 0, `recover --point latest exits 0 (${rl.stderr.trim()})`);
  t.match(json(rl), { disk: 'vm-01.img', point: 3, diskSize: size, chunkSize: 64 * KiB });
  t.equal(sha256File(outLatest), fp2.sha256, 'latest restores byte-exact');
  t.equal(fs.statSync(outLatest).size, size);
  t.ok(fs.statSync(outLatest).blocks * 512 < size, 'sparse');
  const out1 = path.join(dir, 'one.img');
  const rr1 = await runCli(['recover', '--store', store, '--disk', 'vm-01.img', '--point', '1', '--out', out1]);
  t.equal(rr1.code, 0);
  t.match(rr1.stdout, /recovered point 1/);
  t.equal(sha256File(out1), fp1.sha256, 'point 1 restores byte-exact');
  // Restoring over an existing file replaces it.
  const rr1b = await runCli(['recover', '--store', store, '--disk', 'vm-01.img', '--point', '2', '--out', out1]);
  t.equal(rr1b.code, 0);
  t.equal(sha256File(out1), fp2.sha256, 'an existing output is replaced by the restore');

  const v = await runCli(['verify', '--store', store, '--disk', 'vm-01.img', '--point', 'all']);
  t.equal(v.code, 0, 'verify --point all exits 0');
  t.match(v.stdout, /^ok: points 1, 2, 3 of disk vm-01\.img/);
  const vj = await runCli(['verify', '--store', store, '--disk', 'vm-01.img', '--point', 'all', '--json']);
  t.match(json(vj), { ok: true, points: [1, 2, 3], problems: [] });
  t.ok(json(vj).chunksChecked >= j1.chunksChanged, 'every data chunk was checked');

  const p = await runCli(['prune', '--store', store, '--disk', 'vm-01.img', '--keep', '1', '--json']);
  t.equal(p.code, 0, `prune --keep 1 exits 0 (${p.stderr.trim()})`);
  t.match(json(p), { kept: [3], deleted: [1, 2] });
  const pts2 = await runCli(['points', '--store', store, '--disk', 'vm-01.img', '--json']);
  t.equal(pts2.code, 0, `points after prune exits 0 (${pts2.stderr.trim()})`);
  if (pts2.code === 0)
    t.same(
      json(pts2).points.map((x: any) => x.point),
      [3],
      'only point 3 is left',
    );
  const gone = await runCli(['recover', '--store', store, '--disk', 'vm-01.img', '--point', '1', '--out', path.join(dir, 'gone.img')]);
  t.equal(gone.code, 1, 'a pruned point is an operational failure');
  t.match(gone.stderr, /RNODE_POINT_NOT_FOUND/);
  t.notOk(fs.existsSync(path.join(dir, 'gone.img')));
  const out3 = path.join(dir, 'three.img');
  t.equal((await runCli(['recover', '--store', store, '--disk', 'vm-01.img', '--out', out3])).code, 0, '--point defaults to latest');
  t.equal(sha256File(out3), fp2.sha256, 'the kept point restores byte-exact after prune');
  t.equal((await runCli(['verify', '--store', store, '--disk', 'vm-01.img', '--point', 'all'])).code, 0, 'verify all after prune');
});

t.test('--disk defaults to a valid id made from the base name', async (t) => {
  const dir = tmpDir(t, 'cli');
  const img = path.join(dir, 'my disk (copy).raw');
  fs.writeFileSync(img, randomData(100 * KiB, 3));
  const r = await runCli(['replicate', '--source', img, '--target', path.join(dir, 'store'), '--chunk-size', '64KiB', '--json']);
  t.equal(r.code, 0, r.stderr);
  t.equal(json(r).disk, 'my_disk__copy_.raw');
});

t.test('help and version', async (t) => {
  const h = await runCli(['--help']);
  t.equal(h.code, 0);
  for (const c of ['replicate', 'points', 'recover', 'verify', 'prune']) t.match(h.stdout, c);
  const rh = await runCli(['replicate', '--help']);
  t.equal(rh.code, 0);
  t.match(rh.stdout, /--source/);
  // demo is the default command: --help prints its usage, it does not run it.
  const dh = await runCli(['demo', '--help']);
  t.equal(dh.code, 0);
  t.match(dh.stdout, /^usage: rnode demo /);
  t.notMatch(dh.stdout, /generating/, 'the demo did not run');
  const v = await runCli(['--version']);
  t.equal(v.code, 0);
  t.match(v.stdout.trim(), /^\d+\.\d+\.\d+/);
  // With --json, help is one JSON document too (it printed text to a caller that adds --json to all it runs).
  const hj = await runCli(['--help', '--json']);
  t.match(JSON.parse(hj.stdout), { version: v.stdout.trim(), commands: { replicate: /recovery point/, demo: /sample disk/ } }, 'rnode --help --json');
  for (const cmd of ['replicate', 'demo']) {
    const cj = await runCli([cmd, '--help', '--json']);
    t.equal(cj.code, 0);
    t.match(JSON.parse(cj.stdout), { command: cmd, usage: [new RegExp(`^rnode ${cmd} `)], summary: /\w/ }, `rnode ${cmd} --help --json`);
  }
});

t.test('a reader that closes the pipe early: the replicate still commits, no stack trace, exit 0', async (t) => {
  const dir = tmpDir(t, 'cli-epipe');
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, randomData(MiB, 41));
  // The shell's `| head -1` at its earliest: stdout's reader is gone before the replicate writes its lines.
  const r = await runScript(
    `const { spawn } = await import('node:child_process');
     const c = spawn(process.execPath, [${JSON.stringify(CLI)}, 'replicate', '--source', ${JSON.stringify(img)}, '--target', ${JSON.stringify(path.join(dir, 'store'))}, '--cache-dir', 'none'], { stdio: ['ignore', 'pipe', 'pipe'] });
     let err = '';
     c.stderr.on('data', (d) => (err += d));
     c.stdout.destroy(); // closed before the CLI writes a byte: every write of it meets EPIPE
     const code = await new Promise((resolve) => c.on('exit', resolve));
     console.log(JSON.stringify({ code, err }));`,
  );
  const { code, err } = JSON.parse(r.stdout);
  t.equal(code, 0, 'exit 0');
  t.notMatch(err, /EPIPE|at /, 'nothing on stderr about the pipe');
  t.equal(
    json(await runCli(['points', '--store', path.join(dir, 'store'), '--disk', 'disk.img', '--json'])).points.length,
    1,
    'the point was committed',
  );
});

// `replicate --json > /dev/full` printed an uncaught "Error: ENOSPC ... at writeSync" stack and exited 1 with nothing
// saying the point was committed; --version, --help and recover the same.
t.test(
  "a stdout that cannot be written (ENOSPC): one RNODE_OUTPUT_IO line with the outcome, no stack; exit 1, or the failure's",
  {
    skip: !fs.existsSync('/dev/full') && 'no /dev/full here',
  },
  async (t) => {
    const dir = tmpDir(t, 'cli-enospc');
    const img = path.join(dir, 'disk.img');
    fs.writeFileSync(img, randomData(MiB, 42));
    const store = path.join(dir, 'store');
    const toFull = async (args: string[]) =>
      JSON.parse(
        (
          await runScript(
            `const { spawn } = await import('node:child_process');
           const fs = await import('node:fs');
           const c = spawn(process.execPath, [${JSON.stringify(CLI)}, ...${JSON.stringify(args)}], { stdio: ['ignore', fs.openSync('/dev/full', 'w'), 'pipe'] });
           let err = '';
           c.stderr.on('data', (d) => (err += d));
           const code = await new Promise((resolve) => c.on('exit', resolve));
           console.log(JSON.stringify({ code, err }));`,
          )
        ).stdout,
      ) as { code: number; err: string };
    const said = /^rnode: RNODE_OUTPUT_IO: stdout could not be written \(ENOSPC\).*the command itself succeeded/;
    for (const args of [['replicate', '--source', img, '--target', store, '--cache-dir', 'none', '--json'], ['--version'], ['--help']]) {
      const { code, err } = await toFull(args);
      t.equal(code, 1, `${args[0]}: exit 1 for the lost output`);
      t.match(err, said, `${args[0]}: says stdout failed and the command succeeded: ${err.trim()}`);
      t.equal(err.trim().split('\n').length, 1, `${args[0]}: one line, no stack trace`);
    }
    t.equal(json(await runCli(['points', '--store', store, '--disk', 'disk.img', '--json'])).points.length, 1, 'the point was committed');
    const recovered = path.join(dir, 'recovered.img');
    const rec = await toFull(['recover', '--store', store, '--disk', 'disk.img', '--out', recovered]);
    t.match(rec.err, said, `recover: ${rec.err.trim()}`);
    t.ok(fs.readFileSync(recovered).equals(fs.readFileSync(img)), 'recover: the disk is written whole');
    const failed = await toFull(['replicate', '--source', path.join(dir, 'nope.img'), '--target', store, '--json']);
    t.equal(failed.code, 2, 'a failed command keeps its exit code');
    t.match(
      failed.err,
      /RNODE_SOURCE_NOT_FOUND[^\n]*\nrnode: RNODE_OUTPUT_IO: [^\n]*the command itself failed \(exit 2/,
      `and says both: ${failed.err.trim()}`,
    );
  },
);

t.test('the built-in demo on a small disk restores both points byte-exact', async (t) => {
  const r = await runCli(['demo', '--size', '6MiB', '--json'], { timeoutMs: 120_000 });
  t.equal(r.code, 0, `demo exits 0 (${r.stderr.trim()})`);
  const j = json(r);
  t.equal(j.points.length, 2);
  t.same(
    j.restores.map((x: any) => x.byteExact),
    [true, true],
  );
  t.equal(j.verify.ok, true);
  t.notOk(fs.existsSync(j.workdir), 'the demo removes its files');
});

t.test("demo --workdir: it removes what it wrote there, as it says, and leaves the folder and the user's files", async (t) => {
  const dir = tmpDir(t, 'demo-workdir');
  fs.writeFileSync(path.join(dir, 'mine.txt'), 'keep me');
  const r = await runCli(['demo', '--size', '2MiB', '--workdir', dir], { timeoutMs: 120_000 });
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /removing the demo files/);
  t.same(fs.readdirSync(dir), ['mine.txt'], 'only the user file is left');
});

t.test('demo --workdir never touches what was there: a store and a sample-disk.img of the user survive it', async (t) => {
  const dir = tmpDir(t, 'demo-workdir-mine');
  const img = path.join(dir, 'sample-disk.img');
  fs.writeFileSync(img, 'precious');
  await snap(fsStore(path.join(dir, 'store')), img, 'prod-vm1');
  const r = await runCli(['demo', '--size', '2MiB', '--workdir', dir, '--json'], { timeoutMs: 120_000 });
  t.equal(r.code, 0, r.stderr);
  t.equal(fs.readFileSync(img, 'utf8'), 'precious', "the user's sample-disk.img is untouched");
  const points = await listPoints(fsStore(path.join(dir, 'store')), 'prod-vm1');
  t.equal(points.length, 1, "the user's store still holds its point");
  t.same(await listPoints(fsStore(path.join(dir, 'store')), 'sample'), [], 'and no demo disk was written into it');
  t.same(fs.readdirSync(dir).sort(), ['sample-disk.img', 'store'], 'the demo removed its own folder');
});

// Regression: the demo's verify was not given the stop signal: a SIGINT there was acknowledged ("stopping the demo"),
// then verify ran to its end and the demo said "done", exit 0. The signal is sent at that step (a failpoint).
t.test('demo stopped during its verify: exit 143 and RNODE_CANCELLED, not "done"', async (t) => {
  const dir = tmpDir(t, 'demo-stop');
  const r = await runCli(['demo', '--size', '2MiB', '--workdir', dir], { timeoutMs: 120_000, env: { RNODE_FAILPOINT: 'demo-verify:SIGTERM' } });
  t.equal(r.code, 143, `exit 143 (stderr: ${r.stderr})`);
  t.match(r.stderr, /rnode: RNODE_CANCELLED: the demo stopped by SIGTERM/);
  t.notMatch(r.stdout, /5\. verify|done/, 'verify did not run on, and the demo did not say done');
  t.same(fs.readdirSync(dir), [], 'its files were removed');
});

t.test('demo --size below one chunk is a usage error, not a crash', async (t) => {
  const r = await runCli(['demo', '--size', '1000', '--json']);
  t.equal(r.code, 2, r.stderr);
  t.equal(json(r).error.code, 'RNODE_USAGE');
  t.match(json(r).error.message, /at least 1MiB/);
});

t.test('every command exits on its own for a one-chunk disk (no process left running)', async (t) => {
  const dir = tmpDir(t, 'cli');
  const img = path.join(dir, 'tiny.img');
  const storeDir = path.join(dir, 'store');
  fs.writeFileSync(img, Buffer.from('x'));
  await snap(fsStore(storeDir), img, 'tiny'); // point 1, written in-process
  const out = path.join(dir, 'out.img');
  const timeoutMs = 8_000; // each of these takes well under a second
  const steps: Array<[string, string[]]> = [
    ['replicate', ['replicate', '--source', img, '--target', storeDir, '--disk', 'tiny']],
    ['verify', ['verify', '--store', storeDir, '--disk', 'tiny', '--point', '1']],
    ['recover', ['recover', '--store', storeDir, '--disk', 'tiny', '--point', '1', '--out', out]],
  ];
  const results = await Promise.all(steps.map(([, args]) => runCli(args, { timeoutMs })));
  steps.forEach(([what], i) => {
    const r = results[i];
    t.equal(
      r.signal,
      null,
      `${what}: exits by itself within ${timeoutMs / 1000} s${r.signal ? ` (was killed; stdout: ${r.stdout.trim().split('\n')[0]})` : ''}`,
    );
    t.equal(r.code, r.signal ? null : 0, `${what}: exit code 0 ${r.stderr.trim()}`);
  });
  t.equal(fs.existsSync(out) ? fs.readFileSync(out).toString() : '', 'x', 'the one byte restores');
});

t.test('the exported library works in a fresh process: listPoints/loadPoint need no prior call', async (t) => {
  const dir = tmpDir(t, 'cli');
  const img = path.join(dir, 'disk.img');
  const storeDir = path.join(dir, 'store');
  fs.writeFileSync(img, randomData(200 * KiB, 5));
  await snap(fsStore(storeDir), img, 'lib', { chunkSize: 64 * KiB });
  const r = await runScript(
    `
    const { listPoints, loadPoint, FsStore } = await import(${JSON.stringify(DIST_INDEX)});
    const store = new FsStore(${JSON.stringify(storeDir)});
    const pts = await listPoints(store, 'lib');
    const one = await loadPoint(store, 'lib', 1);
    console.log(JSON.stringify({ points: pts.map((p) => p.point), diskSize: one.diskSize }));
  `,
    { timeoutMs: 20_000 },
  );
  t.equal(r.code, 0, `exits 0 (${r.stderr.trim().split('\n')[0]})`);
  if (r.code === 0) t.same(json(r), { points: [1], diskSize: 200 * KiB });
});
