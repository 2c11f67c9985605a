// Bad CLI input gives exit 2 and exactly one clear line on stderr with a stable RNODE_ code and no stack trace:
// missing flags, a missing source file (the issue lists it among the exit-2 cases), chunk sizes that are not a
// power of two from 64KiB to 16MiB, unknown flags and commands, bad disk ids and other bad values. Every case
// runs through the CLI's main() in-process; one of each kind also through the binary (node dist/cli.js).
import t from 'tap';
import type { Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { KiB, fsStore, randomData, snap, stopCodecWorkersAtEnd, tmpDir } from '../helpers/images.js';
import { main } from '../../src/cli/main.js';
import { lines, runCli, type CliResult } from '../helpers/cli.js';
import { unwritableFolder } from '../helpers/loop.js';

stopCodecWorkersAtEnd(t);

const dir = tmpDir(t, 'usage');
const img = path.join(dir, 'disk.img');
fs.writeFileSync(img, randomData(256 * KiB, 1));
const store = path.join(dir, 'store');
const out = path.join(dir, 'out.img');
const missing = path.join(dir, 'no-such-disk.img');
// No disk in these: a FIFO (opening one waits for a writer: the job hung), a symbolic link loop.
const fifo = path.join(dir, 'fifo');
execFileSync('mkfifo', [fifo]);
fs.chmodSync(fifo, 0o600);
fs.symlinkSync(path.join(dir, 'loop-b'), path.join(dir, 'loop-a'));
fs.symlinkSync(path.join(dir, 'loop-a'), path.join(dir, 'loop-b'));
const KEY_AS_PATH = 'ab'.repeat(32);
const tokenFile = path.join(dir, 'token');
fs.writeFileSync(tokenFile, 'a-token\n', { mode: 0o600 });

interface Case {
  name: string;
  args: string[];
  code?: RegExp;
}

const cases: Case[] = [
  // flags of the other form (one disk / a VM's disks) were silently ignored: the user's --disk or --out was not acted on
  {
    name: 'points with --disk and --vm',
    args: ['points', '--store', store, '--disk', 'd', '--vm', 'vm-1'],
    code: /RNODE_USAGE: --disk is for one disk/,
  },
  {
    name: 'recover with --out and --vm',
    args: ['recover', '--store', store, '--vm', 'vm-1', '--out-dir', dir, '--out', out],
    code: /RNODE_USAGE: --out is for one disk/,
  },
  {
    name: 'recover with --out-dir and no --vm',
    args: ['recover', '--store', store, '--disk', 'd', '--out', out, '--out-dir', dir],
    code: /RNODE_USAGE: --out-dir goes with --vm/,
  },
  {
    name: 'prune with --out-dir',
    args: ['prune', '--store', store, '--vm', 'vm-1', '--keep', '1', '--out-dir', dir],
    code: /RNODE_USAGE: Unknown option '--out-dir'/,
  },
  {
    name: 'replicate of a file with --disk-parallelism',
    args: ['replicate', '--source', img, '--target', store, '--disk-parallelism', '2'],
    code: /RNODE_USAGE: --disk-parallelism is for a VMware source/,
  },
  // missing flags
  { name: 'replicate with no flags', args: ['replicate'], code: /RNODE_USAGE/ },
  { name: 'replicate without --target', args: ['replicate', '--source', img], code: /RNODE_USAGE/ },
  { name: 'replicate without --source', args: ['replicate', '--target', store], code: /RNODE_USAGE/ },
  { name: 'replicate --source without its value', args: ['replicate', '--target', store, '--source'], code: /RNODE_USAGE/ },
  { name: 'points without --disk', args: ['points', '--store', store], code: /RNODE_USAGE/ },
  { name: 'points with no flags', args: ['points'], code: /RNODE_USAGE/ },
  { name: 'recover without --out', args: ['recover', '--store', store, '--disk', 'd'], code: /RNODE_USAGE/ },
  { name: 'recover without --store', args: ['recover', '--disk', 'd', '--out', out], code: /RNODE_USAGE/ },
  { name: 'verify without --store', args: ['verify', '--disk', 'd'], code: /RNODE_USAGE/ },
  { name: 'prune without --keep', args: ['prune', '--store', store, '--disk', 'd'], code: /RNODE_USAGE/ },
  // missing source
  { name: 'replicate of a missing source file', args: ['replicate', '--source', missing, '--target', store] },
  // chunk size not a power of two (or out of range, or not a size)
  ...['100000', '3MiB', '32KiB', '32MiB', 'abc', '0', '65535', '1.5MiB', '-1', '', '64KiBs'].map((cs) => ({
    name: `--chunk-size ${JSON.stringify(cs)}`,
    args: ['replicate', '--source', img, '--target', store, `--chunk-size=${cs}`],
    code: /RNODE_BAD_CHUNK_SIZE/,
  })),
  // unknown flag, unknown command, stray argument
  { name: 'unknown flag', args: ['replicate', '--source', img, '--target', store, '--bogus'], code: /RNODE_USAGE/ },
  { name: 'unknown flag on verify', args: ['verify', '--store', store, '--disk', 'd', '--pointt', '1'], code: /RNODE_USAGE/ },
  { name: 'unknown command', args: ['frobnicate', '--store', store], code: /RNODE_USAGE/ },
  { name: 'a flag where the command goes', args: ['--bogus'], code: /RNODE_USAGE/ },
  { name: 'stray positional argument', args: ['replicate', '--source', img, '--target', store, 'extra'], code: /RNODE_USAGE/ },
  // bad disk ids
  ...['bad/id', '.hidden', '../up', 'a b', '', 'x'.repeat(129), '-dash'].map((d) => ({
    name: `--disk ${JSON.stringify(d.length > 20 ? `${d.slice(0, 8)}...(${d.length})` : d)} on replicate`,
    args: ['replicate', '--source', img, '--target', store, `--disk=${d}`],
    code: /RNODE_BAD_DISK_ID/,
  })),
  { name: 'bad disk id on points', args: ['points', '--store', store, '--disk', 'a/b'], code: /RNODE_BAD_DISK_ID/ },
  { name: 'bad disk id on recover', args: ['recover', '--store', store, '--disk', '../x', '--out', out], code: /RNODE_BAD_DISK_ID/ },
  { name: 'bad disk id on verify', args: ['verify', '--store', store, '--disk', 'a b'], code: /RNODE_BAD_DISK_ID/ },
  { name: 'bad disk id on prune', args: ['prune', '--store', store, '--disk', '/abs', '--keep', '1'], code: /RNODE_BAD_DISK_ID/ },
  // other bad values
  ...['0', 'abc', '1.5', '-1'].map((k) => ({
    name: `prune --keep ${k}`,
    args: ['prune', '--store', store, '--disk', 'd', `--keep=${k}`],
    code: /RNODE_USAGE/,
  })),
  { name: '--compression zstd', args: ['replicate', '--source', img, '--target', store, '--compression', 'zstd'], code: /RNODE_USAGE/ },
  {
    name: '--keep -1 (no promise that 0 is taken: prune refuses it)',
    args: ['prune', '--store', store, '--disk', 'd', '--keep', '-1'],
    code: /RNODE_USAGE: --keep -1 is not a valid value: negative numbers are not accepted \(see "rnode prune --help"\)/,
  },
  { name: '--concurrency 0', args: ['replicate', '--source', img, '--target', store, '--concurrency', '0'], code: /RNODE_USAGE/ },
  { name: 'a directory as --source', args: ['replicate', '--source', dir, '--target', store], code: /RNODE_BAD_SOURCE/ },
  {
    name: 'a character device as --source',
    args: ['replicate', '--source', '/dev/zero', '--target', store],
    code: /RNODE_BAD_SOURCE.*not a regular file or block device/,
  },
  {
    name: 'a FIFO as --source',
    args: ['replicate', '--source', fifo, '--target', store],
    code: /RNODE_BAD_SOURCE: source \S+ is a FIFO, not a disk/,
  },
  {
    name: 'a /proc file as --source',
    args: ['replicate', '--source', '/proc/self/mem', '--target', store],
    code: /RNODE_BAD_SOURCE: source \/proc\/self\/mem is a kernel virtual file/,
  },
  {
    name: 'a symbolic link loop as --source',
    args: ['replicate', '--source', path.join(dir, 'loop-a'), '--target', store],
    code: /RNODE_BAD_SOURCE: source \S+ goes through a loop of symbolic links/,
  },
  {
    name: 'a FIFO as --encryption-key-file',
    args: ['replicate', '--source', img, '--target', store, '--encryption-key-file', fifo],
    code: /RNODE_KEY_FILE: --encryption-key-file \S+: is not a regular file; pass the file that holds the key/,
  },
  // A FIFO where a token, a certificate or a CA goes: the open waited for a writer, and the command hung without a word.
  {
    name: 'a FIFO as --token-file of a ws:// store',
    args: ['points', '--store', 'ws://127.0.0.1:1', '--disk', 'd', '--token-file', fifo],
    code: /RNODE_USAGE: cannot read the token file \S+: not a regular file \(a FIFO\); pass --token-file/,
  },
  {
    name: 'a FIFO as serve --token-file',
    args: ['serve', '--listen', '127.0.0.1:0', '--store', store, '--token-file', fifo],
    code: /RNODE_USAGE: cannot read the token file \S+: not a regular file \(a FIFO\)/,
  },
  {
    name: 'a FIFO as serve --tls-cert',
    args: ['serve', '--listen', '127.0.0.1:0', '--store', store, '--tls-cert', fifo, '--tls-key', fifo],
    code: /RNODE_USAGE: cannot read the TLS certificate file \S+: not a regular file \(a FIFO\)/,
  },
  {
    name: 'a FIFO as agent --ca',
    args: ['agent', '--server', 'ws://127.0.0.1:1', '--token-file', tokenFile, '--ca', fifo, '--state-dir', path.join(dir, 'agent')],
    code: /RNODE_USAGE: --ca \S+ cannot be read \(not a regular file \(a FIFO\)\)/,
  },
  {
    name: 'a FIFO as agent --token-file',
    args: ['agent', '--server', 'ws://127.0.0.1:1', '--token-file', fifo, '--state-dir', path.join(dir, 'agent')],
    code: /RNODE_USAGE: --token-file \S+ is not a regular file/,
  },
  // A --ca that holds no certificate (the token file, by mistake) went to TLS, which ignored it and then called the
  // node's certificate self-signed.
  {
    name: 'a --ca file that holds no certificate',
    args: ['points', '--store', 'wss://127.0.0.1:1', '--disk', 'd', '--ca', tokenFile],
    code: /RNODE_USAGE: --ca \S+ holds no PEM certificate; pass the PEM file of the CA/,
  },
  // file:// URLs whose path does not decode were RNODE_INTERNAL ("URI malformed ... this is a bug"); file://disk.img
  // opened "/" (its host was dropped) and said the source is a directory.
  {
    name: 'a file:// source with a bad %-escape',
    args: ['replicate', '--source', `file://${dir}/a%zz.img`, '--target', store],
    code: /RNODE_BAD_SOURCE: source \S+ has a path that does not decode \(URI malformed\): write a % in a name as %25/,
  },
  {
    name: 'a file:// source naming a host',
    args: ['replicate', '--source', 'file://disk.img', '--target', store],
    code: /RNODE_BAD_SOURCE: source file:\/\/disk.img names a host \(disk.img\), not a path on this machine; pass file:\/\/\/absolute\/path/,
  },
  {
    name: 'a file:// store with a bad %-escape',
    args: ['disks', '--store', `file://${dir}/a%zz`],
    code: /RNODE_BAD_STORE_URL: store location \S+ has a path that does not decode/,
  },
  // A flag given twice kept its last value without a word: verify checked one point where the user asked for all.
  {
    name: 'a flag given twice',
    args: ['verify', '--store', store, '--disk', 'd', '--point', 'all', '--point', '1'],
    code: /RNODE_USAGE: --point is given twice; pass it once/,
  },
  {
    name: 'the key itself as --encryption-key-file',
    args: ['replicate', '--source', img, '--target', store, '--encryption-key-file', KEY_AS_PATH],
    code: /^rnode: RNODE_KEY_FILE: --encryption-key-file takes the path of a file holding the key, and was given what looks like the key itself \(not shown\)/,
  },
  {
    name: '--cache-dir under /proc',
    args: ['replicate', '--source', img, '--target', store, '--cache-dir', '/proc/rnode-cache'],
    code: /RNODE_PATH_UNUSABLE: cache folder \/proc\/rnode-cache is on a kernel virtual filesystem/,
  },
  { name: 'an unknown source scheme', args: ['replicate', '--source', 'ftp://host/disk', '--target', store], code: /RNODE_BAD_SOURCE/ },
  { name: 'an unknown store scheme', args: ['replicate', '--source', img, '--target', 'bogus://x'], code: /RNODE_BAD_STORE_URL/ },
  { name: '--out is a directory', args: ['recover', '--store', store, '--disk', 'd', '--out', dir], code: /RNODE_USAGE/ },
  // the long-running commands' shared flags
  {
    name: 'serve --metrics without a port',
    args: ['serve', '--listen', '127.0.0.1:0', '--store', store, '--metrics', 'localhost'],
    code: /RNODE_USAGE.*--metrics must be host:port/,
  },
  {
    name: 'serve --window below 64 KiB',
    args: ['serve', '--listen', '127.0.0.1:0', '--store', store, '--window', '60000'],
    code: /RNODE_USAGE.*--window must be a size of at least 64KiB/,
  },
  {
    name: 'serve --log-format xml',
    args: ['serve', '--listen', '127.0.0.1:0', '--store', store, '--log-format', 'xml'],
    code: /RNODE_USAGE.*--log-format must be json or pretty/,
  },
];

function checkUsage(t: Test, r: CliResult, c: Case): void {
  t.equal(r.code, 2, `exit code 2 (stderr: ${r.stderr.trim()})`);
  const errLines = lines(r.stderr);
  t.equal(errLines.length, 1, 'exactly one line on stderr');
  t.match(r.stderr, c.code ?? /RNODE_[A-Z_]+/, 'stderr carries the stable code');
  t.notMatch(r.stderr, /^\s+at /m, 'no stack trace');
  t.notMatch(r.stderr, /RNODE_INTERNAL/, 'not an internal error');
  t.notOk(r.stderr.includes(KEY_AS_PATH), 'a key given as a path is not printed back');
  t.equal(r.stdout, '', 'nothing on stdout');
}

// A store with one point, so that "recover --out <dir>" and friends get past the store lookups.
t.before(async () => {
  await snap(fsStore(store), img, 'd', { chunkSize: 64 * KiB });
});

/** Runs the CLI's main() in this process (same parsing and exit-code mapping as the binary, no spawn). */
async function inProcess(args: string[]): Promise<CliResult> {
  const out: string[] = [];
  const err: string[] = [];
  const code = await main(args, { out: (l) => out.push(l), err: (l) => err.push(l) });
  return { code, signal: null, stdout: out.map((l) => `${l}\n`).join(''), stderr: err.map((l) => `${l}\n`).join('') };
}

// Every case through main() in-process: cheap, and the same code path as the binary.
for (const c of cases) t.test(`main(): ${c.name}`, async (t) => checkUsage(t, await inProcess(c.args), c));

// One case of each kind through the real binary (a fresh node process each, four at a time): what only a
// process shows (exit status, uncaught errors, stack traces printed by node).
const SPAWNED = [
  'replicate with no flags',
  'recover without --out',
  'replicate of a missing source file',
  '--chunk-size "100000"',
  '--chunk-size "3MiB"',
  '--chunk-size "32KiB"',
  '--chunk-size "32MiB"',
  '--chunk-size "abc"',
  'unknown flag',
  'unknown command',
  '--disk "bad/id" on replicate',
  'prune --keep 0',
  'a directory as --source',
  'an unknown store scheme',
].map((n) => {
  const c = cases.find((x) => x.name === n);
  if (!c) throw new Error(`no case named ${n}`);
  return c;
});
const BATCH = 4;
for (let i = 0; i < SPAWNED.length; i += BATCH) {
  const batch = SPAWNED.slice(i, i + BATCH);
  let results: Promise<CliResult[]> | undefined;
  for (const c of batch) {
    t.test(`rnode ${c.name}`, async (t) => {
      results ??= Promise.all(batch.map((b) => runCli(b.args)));
      checkUsage(t, (await results)[batch.indexOf(c)], c);
    });
  }
}

t.test('agent and serve refuse a bad --metrics with the same line', async (t) => {
  const token = path.join(dir, 'agent-token');
  fs.writeFileSync(token, 'x'.repeat(32), { mode: 0o600 });
  const agent = await inProcess(['agent', '--server', 'ws://127.0.0.1:1', '--token-file', token, '--metrics', '9464']);
  const serve = await inProcess(['serve', '--listen', '127.0.0.1:0', '--store', store, '--metrics', '9464']);
  checkUsage(t, agent, { name: 'agent --metrics 9464', args: [] });
  t.match(agent.stderr, /--metrics must be host:port, e\.g\. 0\.0\.0\.0:9464 \(got "9464"\)/);
  t.equal(serve.stderr, agent.stderr);
  t.equal(serve.code, 2);
});

t.test('with --json a usage error is also one JSON object on stdout', async (t) => {
  const r = await runCli(['replicate', '--source', img, '--target', store, '--chunk-size', '100000', '--json']);
  t.equal(r.code, 2);
  t.equal(lines(r.stderr).length, 1);
  const j = JSON.parse(r.stdout);
  t.equal(j.error.code, 'RNODE_BAD_CHUNK_SIZE');
  t.match(j.error.message, /power of two/);
});

t.test('--debug adds the stack trace (and only then)', async (t) => {
  const r = await runCli(['replicate', '--source', img, '--target', store, '--chunk-size', '100000', '--debug']);
  t.equal(r.code, 2);
  t.match(r.stderr, /^\s+at /m, 'a stack with --debug');
});

t.test('a non-numeric --point is a bad value: exit 2', async (t) => {
  const r = await inProcess(['recover', '--store', store, '--disk', 'd', '--point', 'abc', '--out', out]);
  checkUsage(t, r, { name: '--point abc', args: [] });
  t.notOk(fs.existsSync(out));
});

t.test("an S3 store that cannot be reached: exit 1 and one line, without the SDK's notice about node versions", async (t) => {
  const r = await runCli(['replicate', '--source', img, '--target', 's3://b/p?endpoint=http://127.0.0.1:1&forcePathStyle=true'], {
    env: { AWS_ACCESS_KEY_ID: 'id', AWS_SECRET_ACCESS_KEY: 'secret', AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: undefined },
  });
  t.equal(r.code, 1, r.stderr);
  t.same(lines(r.stderr).length, 1, `one line on stderr: ${r.stderr}`);
  t.match(r.stderr, /RNODE_STORE_UNAVAILABLE/);
  t.notMatch(r.stderr, /Warning/);
});

t.test('a --store folder that does not exist, or is a file, is said so (check of a typo reported "ok")', async (t) => {
  const nowhere = path.join(dir, 'no-such-store');
  for (const args of [
    ['check', '--store', nowhere],
    ['stats', '--store', nowhere],
    ['points', '--store', nowhere, '--disk', 'd'],
    ['verify', '--store', nowhere, '--disk', 'd'],
  ]) {
    const r = await inProcess(args);
    t.equal(r.code, 1, `${args[0]}: exit 1`);
    t.match(r.stderr, /RNODE_STORE_NOT_FOUND: store folder .*no-such-store does not exist; check --store/, args[0]);
  }
  // The same folder as a file:// URL: disks, stats and prune listed "no disks" and exited 0.
  for (const args of [['disks'], ['stats'], ['prune']]) {
    const r = await inProcess([args[0], '--store', `file://${nowhere}`, ...args.slice(1), '--json']);
    t.equal(r.code, 1, `${args[0]} file://: exit 1`);
    t.match(JSON.parse(r.stdout), { error: { code: 'RNODE_STORE_NOT_FOUND' } }, `${args[0]} file://: store not found`);
  }
  const asUrl = await inProcess(['disks', '--store', `file://${img}`]);
  t.equal(asUrl.code, 2, 'a file as a file:// store: exit 2');
  t.match(asUrl.stderr, /RNODE_PATH_UNUSABLE: store folder file:\/\/\S+ is a file, not a folder; check --store/);
  const r = await inProcess(['stats', '--store', img]);
  t.equal(r.code, 2);
  t.match(r.stderr, /RNODE_PATH_UNUSABLE: store folder .* is a file, not a folder; check --store/);
  // Bug: replicate's store flag is --target, but a file given there was answered "check --store"; and /dev/null "is a
  // file".
  const onFile = await inProcess(['replicate', '--source', img, '--target', img, '--disk', 'd']);
  t.equal(onFile.code, 2, 'replicate --target <a file>: exit 2');
  t.match(onFile.stderr, /RNODE_PATH_UNUSABLE: store folder .* is a file, not a folder; check --target\n?$/, 'names the flag given');
  const onDevice = await inProcess(['replicate', '--source', img, '--target', '/dev/null', '--disk', 'd']);
  t.match(onDevice.stderr, /RNODE_PATH_UNUSABLE: store folder \/dev\/null is a device, not a folder; check --target/, '/dev/null is a device');
  const serve = await runCli(['serve', '--listen', '127.0.0.1:0', '--store', img], { timeoutMs: 30_000 });
  t.equal(serve.code, 2, 'serve refuses a file as its store at start');
  t.match(serve.stderr, /RNODE_PATH_UNUSABLE/);
  // A read-only store folder: serve came up "storing into" it, and then failed every sender's put.
  const readOnly = unwritableFolder(t, dir);
  if (readOnly) {
    const ro = await runCli(['serve', '--listen', '127.0.0.1:0', '--store', readOnly], { timeoutMs: 30_000 });
    t.equal(ro.code, 2, 'serve refuses a store folder it cannot write, at start');
    t.match(ro.stderr, /RNODE_PATH_UNUSABLE: store folder \S+ (is on a read-only filesystem|is not writable)/);
  }
  t.notOk(fs.existsSync(nowhere), 'nothing was created');
});

// A mistyped --vm listed "no VM points" with exit 0 (recover and prune said RNODE_DISK_NOT_FOUND); prune --vm took
// the repository's --max-unused and --reset-marks, and a VMware replicate --pack-size and --cache-dir, and ignored them.
t.test('VM forms: an unknown --vm is not found, and flags they do not take are refused', async (t) => {
  const unknown = await inProcess(['points', '--store', store, '--vm', 'vm-nope']);
  t.equal(unknown.code, 1, unknown.stderr);
  t.match(unknown.stderr, /RNODE_DISK_NOT_FOUND: VM vm-nope has no VM points in .*; check --vm and --store/);
  for (const extra of [['--max-unused', '10'], ['--reset-marks']]) {
    const r = await inProcess(['prune', '--store', store, '--vm', 'vm-nope', '--keep', '1', ...extra]);
    t.equal(r.code, 2, `prune --vm ${extra[0]}: usage`);
    t.match(r.stderr, new RegExp(`RNODE_USAGE: ${extra[0]} does not go with --vm`));
  }
  const grace = await inProcess(['prune', '--store', store, '--vm', 'vm-nope', '--keep', '1', '--grace', 'banana']);
  t.equal(grace.code, 2, 'prune --vm --grace is read (and checked)');
  for (const extra of [
    ['--pack-size', '1MiB'],
    ['--cache-dir', '/tmp'],
  ]) {
    const r = await inProcess(['replicate', '--source', 'vddk://vc.example/vm-1', '--target', store, ...extra]);
    t.equal(r.code, 2, `VMware replicate ${extra[0]}: usage`);
    t.match(r.stderr, new RegExp(`RNODE_USAGE: ${extra[0]} is not taken by a VMware replicate`));
  }
});

t.test('prune --vm of a VM with no points says so (it reported "kept none; deleted none" and exit 0)', async (t) => {
  const r = await inProcess(['prune', '--store', store, '--vm', 'vm-nope', '--keep', '1']);
  t.equal(r.code, 1);
  t.match(r.stderr, /RNODE_DISK_NOT_FOUND: VM vm-nope has no VM points in .*; check --vm and --store/);
});

// An address serve or the agent cannot listen on is the user's to fix: the agent's --metrics on a taken port, and any
// --metrics or --listen host that does not resolve, were RNODE_INTERNAL "this is a bug", exit 1.
t.test('a --metrics or --listen address that cannot be served is RNODE_USAGE, exit 2, for serve and the agent', async (t) => {
  const net = await import('node:net');
  const taken = net.createServer();
  await new Promise<void>((r) => taken.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => taken.close());
  const busy = `127.0.0.1:${(taken.address() as import('node:net').AddressInfo).port}`;
  const agent = (metrics: string) => [
    'agent',
    '--server',
    'ws://127.0.0.1:1',
    '--token-file',
    tokenFile,
    '--state-dir',
    path.join(dir, 'agent-state'),
    '--metrics',
    metrics,
  ];
  for (const [args, re] of [
    [agent(busy), /RNODE_USAGE: cannot serve --metrics on 127\.0\.0\.1:\d+ \(EADDRINUSE\); pick another address or port/],
    [agent('nosuchhost.invalid:9464'), /RNODE_USAGE: cannot serve --metrics on nosuchhost\.invalid:9464 \((ENOTFOUND|EAI_AGAIN)\)/],
    [
      ['serve', '--listen', '127.0.0.1:0', '--store', store, '--metrics', 'nosuchhost.invalid:9464'],
      /RNODE_USAGE: cannot serve --metrics on nosuchhost\.invalid/,
    ],
    [
      ['serve', '--listen', 'nosuchhost.invalid:0', '--store', store],
      /RNODE_USAGE: cannot listen on nosuchhost\.invalid:0 \((ENOTFOUND|EAI_AGAIN)\)/,
    ],
  ] as const) {
    const r = await runCli([...args], { timeoutMs: 30_000 });
    t.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    t.match(r.stderr, re);
  }
});
