// Installable like any npm tool: `npm pack`, then `npm install -g` of the tarball into an empty prefix with no network
// and no install scripts (what npm does once unapproved scripts stop running), and use the installed `rnode`: --version, a
// replicate/recover round trip byte-exact, one clear line when the prebuilt addon is missing, and the source build
// that line points to (`npm run install` in the package: node-gyp with the local node headers) making it work again.
// Bug this guards: the tarball once shipped native sources without a binary, so every command died with a stack.
import t, { type Test } from 'tap';
import { execFile, execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { ROOT } from '../helpers/cli.js';
import { randomData, tmpDir } from '../helpers/images.js';

const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { name: string; version: string };
type LockEntry = { version?: string; resolved?: string; dev?: boolean; [k: string]: unknown };
const lock = JSON.parse(fs.readFileSync(path.join(ROOT, 'package-lock.json'), 'utf8')) as { packages: Record<string, LockEntry> };

// Child npm runs must not inherit the settings `npm test` exports for this package (prefix, scripts...).
const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^npm_(config|package|lifecycle)_/i.test(k)));
delete env.NODE_OPTIONS;

type Ran = { code: number | null; stdout: string; stderr: string };

function run(cmd: string, args: string[], cwd: string): Ran {
  const r = spawnSync(cmd, args, { cwd, env, encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** For a child that talks to a server in this process, whose event loop must keep running. */
function runAsync(cmd: string, args: string[], cwd: string): Promise<Ran> {
  return new Promise((resolve) => {
    execFile(cmd, args, { cwd, env, encoding: 'utf8', timeout: 120_000, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
    });
  });
}

/**
 * A registry on 127.0.0.1 that knows only the versions the repository's lockfile pins, each with its tarball's
 * registry URL and integrity. `npm install -g --offline <tgz>` fails here with ENOTCACHED: `npm ci` leaves the
 * dependency tarballs in npm's cache but no registry metadata, and a global install resolves every range afresh
 * (it reads no lockfile, and takes a package's npm-shrinkwrap.json only from a registry). With this metadata
 * (never cached: the port is gone after the test), the real `npm install -g` resolves, and --prefer-offline takes every tarball from the cache by
 * its integrity: nothing leaves the machine, and the versions are the ones CI tested.
 */
async function lockfileRegistry(t: Test): Promise<string> {
  // No dist-tags: npm then takes the highest pinned version each range allows, as it does under the lockfile.
  const docs = new Map<string, { name: string; versions: Record<string, unknown> }>();
  for (const [key, entry] of Object.entries(lock.packages)) {
    if (key === '' || entry.dev) continue;
    const name = key.slice(key.lastIndexOf('node_modules/') + 'node_modules/'.length);
    const { integrity, resolved, version, ...fields } = entry;
    const doc = docs.get(name) ?? { name, versions: {} };
    docs.set(name, doc);
    const tarball = resolved ?? `https://registry.npmjs.org/${name}/-/${name.split('/').pop()}-${version}.tgz`;
    doc.versions[version!] = { name, version, ...fields, dist: { integrity, tarball } };
  }
  const server = http.createServer((req, res) => {
    // Optional peers the lockfile has no entry for (ws's bufferutil...): a 404 tells npm to leave them out.
    const doc = docs.get(decodeURIComponent((req.url ?? '/').slice(1)));
    res.writeHead(doc ? 200 : 404, { 'content-type': 'application/json', 'cache-control': 'no-store' });
    res.end(JSON.stringify(doc ?? { error: 'not found' }));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
}

t.test('npm pack, npm install -g offline without scripts, run the installed rnode', { timeout: 280_000 }, async (t) => {
  const prebuild = path.join(ROOT, 'prebuilds', `${process.platform}-${process.arch}`, 'rnode_native.node');
  if (!fs.existsSync(prebuild) || !fs.existsSync(path.join(ROOT, 'dist', 'bin', 'rnode.js'))) {
    t.fail(`no ${path.relative(ROOT, prebuild)} or dist/bin/rnode.js: run "npm run build" first (npm ci does)`);
    return;
  }
  const dir = tmpDir(t, 'pack');
  // --ignore-scripts: pack what `npm run build` made rather than rebuilding it here (prepare would).
  const packed = run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', dir], ROOT);
  t.equal(packed.code, 0, `npm pack: ${packed.stderr}`);
  const info = (JSON.parse(packed.stdout) as Array<{ filename: string; files: Array<{ path: string }> }>)[0];
  const files = info.files.map((f) => f.path);
  t.ok(files.includes(`prebuilds/${process.platform}-${process.arch}/rnode_native.node`), "the tarball ships this platform's prebuilt addon");
  // .ci/run installs the arm64 cross compiler and asks for that prebuild (REQUIRE_ARM64=1): the package ships both.
  if (process.env.REQUIRE_ARM64 === '1') {
    t.ok(files.includes('prebuilds/linux-arm64/rnode_native.node'), 'the tarball ships the linux-arm64 prebuild too');
    const elf = fs.readFileSync(path.join(ROOT, 'prebuilds', 'linux-arm64', 'rnode_native.node'));
    t.equal(elf.readUInt16LE(18), 0xb7, 'and it is an AArch64 ELF (e_machine EM_AARCH64)');
  }
  t.ok(
    [
      'dist/bin/rnode.js',
      'dist/bin/package.json',
      'dist/bin/rnode-main.cjs',
      'dist/bin/rnode-main.cjs.cache',
      'dist/bin/codec-worker.mjs',
      'native/binding.gyp',
      'native/install.mjs',
    ].every((f) => files.includes(f)),
    'the bundled CLI with its code cache (the build checked that V8 takes it), its codec worker, the addon sources and the install script for a source build',
  );
  t.notOk(
    files.some((f) => f.startsWith('src/') || f.startsWith('test/') || f.startsWith('build/') || f.startsWith('native/build/')),
    'no sources, tests or node-gyp leftovers',
  );
  t.notOk(
    files.some((f) => f.startsWith('dist/bench/')),
    'no benchmark harness (it needs the repository)',
  );
  // Errors send users to docs/*.md and the README to deploy/README.md: an installed package holds them.
  const named = new Set<string>();
  for (const f of listSources(path.join(ROOT, 'src'))) for (const m of fs.readFileSync(f, 'utf8').matchAll(/docs\/[a-z0-9-]+\.md/g)) named.add(m[0]);
  for (const m of fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8').matchAll(/\((docs\/[a-z0-9-]+\.md|deploy\/README\.md)\)/g)) named.add(m[1]);
  const unshipped = [...named].filter((f) => !files.includes(f));
  t.same(unshipped, [], `every page the errors and README name is in the tarball (${named.size})`);

  const registry = await lockfileRegistry(t);
  const prefix = path.join(dir, 'prefix');
  const started = Date.now();
  const installed = await runAsync(
    'npm',
    [
      'install',
      '-g',
      '--prefix',
      prefix,
      path.join(dir, info.filename),
      '--prefer-offline',
      '--ignore-scripts',
      '--no-audit',
      '--no-fund',
      '--registry',
      registry,
      '--replace-registry-host=never',
    ],
    dir,
  );
  t.equal(installed.code, 0, `npm install -g: ${installed.stderr.slice(-2000)}`);
  t.comment(`installed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  const rnode = path.join(prefix, 'bin', 'rnode');
  const installedPackage = path.join(prefix, 'lib', 'node_modules', pkg.name);

  const version = run(rnode, ['--version'], dir);
  t.equal(version.stdout.trim(), pkg.version, 'rnode --version prints the package version');
  // The entry a Management Server imports the protocol from (examples/reference-ms.ts does, from the checkout).
  const lib = path.join(prefix, 'lib');
  const protocol = run(
    process.execPath,
    ['--input-type=module', '-e', "const p = await import('replication-node/protocol'); console.log(p.PROTOCOL_VERSION, typeof p.decode)"],
    lib,
  );
  t.equal(protocol.stdout.trim(), '1 function', `replication-node/protocol loads from the installed package: ${protocol.stderr}`);
  // Fakes and generators sit behind their own entry: the main one has none of them, and mem:// exists only once
  // replication-node/testing is imported.
  const testing = run(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      "const m = await import('replication-node'); const before = await m.openStore('mem://x').then(() => 'opened', (e) => e.code); " +
        "const t = await import('replication-node/testing'); const after = await m.openStore('mem://x').then(() => 'opened', (e) => e.code); " +
        'console.log(typeof m.FaultyStore, typeof m.generateSampleDisk, before, typeof t.FaultyStore, typeof t.generateSampleDisk, after)',
    ],
    lib,
  );
  t.equal(testing.stdout.trim(), 'undefined undefined RNODE_BAD_STORE_URL function function opened', `replication-node/testing: ${testing.stderr}`);

  const image = path.join(dir, 'disk.img');
  fs.writeFileSync(image, Buffer.concat([randomData(3 << 20, 5), Buffer.alloc(1 << 20), randomData(123_456, 6)]));
  const store = path.join(dir, 'store');
  const rep = run(rnode, ['replicate', '--source', image, '--target', store, '--disk', 'd0', '--json'], dir);
  t.equal(rep.code, 0, `replicate: ${rep.stderr}`);
  const recoverByteExact = (name: string, what: string) => {
    const out = path.join(dir, name);
    const rec = run(rnode, ['recover', '--store', store, '--disk', 'd0', '--out', out, '--json'], dir);
    t.equal(rec.code, 0, `recover: ${rec.stderr}`);
    t.ok(fs.readFileSync(out).equals(fs.readFileSync(image)), what);
  };
  recoverByteExact('restored.img', 'the recovered disk is byte-exact');

  // The install script has nothing to build while the prebuild is there.
  const noop = run('npm', ['run', 'install'], installedPackage);
  t.equal(noop.code, 0, `npm run install with the prebuild: ${noop.stderr}`);
  t.notOk(fs.existsSync(path.join(installedPackage, 'native', 'build')), 'no source build beside a prebuild');

  // No prebuild for this platform and no source build: one line that says what to do, exit 1, no stack.
  fs.rmSync(path.join(installedPackage, 'prebuilds'), { recursive: true });
  const missing = run(rnode, ['points', '--store', store, '--disk', 'd0'], dir);
  t.equal(missing.code, 1, 'exit 1');
  const lines = missing.stderr.split('\n').filter((l) => l.trim() !== '');
  t.equal(lines.length, 1, `one line: ${missing.stderr}`);
  t.match(lines[0], /^rnode: RNODE_NATIVE_MISSING: no rnode_native addon for .*"cd \S+ && npm run install"/);
  const missingJson = run(rnode, ['points', '--store', store, '--disk', 'd0', '--json'], dir);
  t.equal(JSON.parse(missingJson.stdout).error?.code, 'RNODE_NATIVE_MISSING', `--json: one document on stdout too (${missingJson.stdout})`);

  // The source build that line asks for: npm's node-gyp and the node headers on this machine, no download.
  const compileStarted = Date.now();
  const built = run('npm', ['run', 'install', '--offline'], installedPackage);
  t.equal(built.code, 0, `npm run install without the prebuild: ${built.stderr.slice(-2000)}`);
  t.comment(`source build in ${((Date.now() - compileStarted) / 1000).toFixed(1)} s`);
  t.ok(fs.existsSync(path.join(installedPackage, 'native', 'build', 'Release', 'rnode_native.node')), 'the addon built from source');
  recoverByteExact('restored-source-build.img', 'byte-exact again with the addon built from source');
});

t.test('the generated node-gyp config is not part of the repository', async (t) => {
  const tracked = execFileSync('git', ['ls-files', 'build', 'prebuilds'], { cwd: ROOT, encoding: 'utf8' });
  t.equal(tracked.trim(), '', 'build/ and prebuilds/ are build outputs');
});

function listSources(dir: string): string[] {
  return fs
    .readdirSync(dir, { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? listSources(path.join(dir, e.name)) : e.name.endsWith('.ts') ? [path.join(dir, e.name)] : []));
}
