// Installable like any npm tool: `npm pack`, then install the tarball into an empty folder with no network and no
// install scripts (npm 11 runs none for unapproved packages), and use the installed `rnode`: --version, a
// replicate/recover round trip byte-exact, and one clear line when the prebuilt addon is missing.
// Bug this guards: the tarball once shipped native sources without a binary, so every command died with a stack.
import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { ROOT } from '../helpers/cli.js';
import { randomData, tmpDir } from '../helpers/images.js';

const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as {
  name: string;
  version: string;
  license: string;
  dependencies: Record<string, string>;
  bin: Record<string, string>;
  engines: unknown;
};
type LockEntry = { version?: string; resolved?: string; dev?: boolean; [k: string]: unknown };
const lock = JSON.parse(fs.readFileSync(path.join(ROOT, 'package-lock.json'), 'utf8')) as { packages: Record<string, LockEntry> };

// Child npm runs must not inherit the settings `npm test` exports for this package (prefix, scripts...).
const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^npm_(config|package|lifecycle)_/i.test(k)));
delete env.NODE_OPTIONS;

function run(cmd: string, args: string[], cwd: string): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { cwd, env, encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/**
 * An app folder whose lockfile pins the tarball and every runtime dependency to the repository's lockfile.
 * `npm install -g --offline <tgz>` cannot work from the cache `npm ci` leaves: it holds the dependency
 * tarballs but not the registry metadata a fresh resolve needs. A lockfile with a resolved URL and integrity
 * for each package lets npm take every tarball from the cache, exactly the versions CI tested.
 */
function appFolder(dir: string, tarball: string): string {
  const app = path.join(dir, 'app');
  fs.mkdirSync(app);
  const spec = `file:${path.relative(app, tarball)}`;
  const packages: Record<string, unknown> = {
    '': { dependencies: { [pkg.name]: spec } },
    [`node_modules/${pkg.name}`]: {
      version: pkg.version,
      resolved: spec,
      license: pkg.license,
      dependencies: pkg.dependencies,
      bin: pkg.bin,
      engines: pkg.engines,
    },
  };
  for (const [key, entry] of Object.entries(lock.packages)) {
    if (key === '' || entry.dev) continue;
    const name = key.slice(key.lastIndexOf('node_modules/') + 'node_modules/'.length);
    packages[key] = entry.resolved
      ? entry
      : { ...entry, resolved: `https://registry.npmjs.org/${name}/-/${name.split('/').pop()}-${entry.version}.tgz` };
  }
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ private: true, dependencies: { [pkg.name]: spec } }));
  fs.writeFileSync(path.join(app, 'package-lock.json'), JSON.stringify({ name: 'app', lockfileVersion: 3, requires: true, packages }));
  return app;
}

t.test('npm pack, install offline without scripts, run the installed rnode', { timeout: 280_000 }, async (t) => {
  const prebuild = path.join(ROOT, 'prebuilds', `${process.platform}-${process.arch}`, 'rnode_native.node');
  if (!fs.existsSync(prebuild) || !fs.existsSync(path.join(ROOT, 'dist', 'cli.js'))) {
    t.fail(`no ${path.relative(ROOT, prebuild)} or dist/cli.js: run "npm run build" first (npm ci does)`);
    return;
  }
  const dir = tmpDir(t, 'pack');
  // --ignore-scripts: pack what `npm run build` made rather than rebuilding it here (prepare would).
  const packed = run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', dir], ROOT);
  t.equal(packed.code, 0, `npm pack: ${packed.stderr}`);
  const info = (JSON.parse(packed.stdout) as Array<{ filename: string; files: Array<{ path: string }> }>)[0];
  const files = info.files.map((f) => f.path);
  t.ok(files.includes(`prebuilds/${process.platform}-${process.arch}/rnode_native.node`), "the tarball ships this platform's prebuilt addon");
  t.ok(files.includes('dist/cli.js') && files.includes('native/binding.gyp'), 'the CLI and the addon sources for a source build');
  t.notOk(
    files.some((f) => f.startsWith('src/') || f.startsWith('test/') || f.startsWith('build/')),
    'no sources, tests or node-gyp leftovers',
  );

  const app = appFolder(dir, path.join(dir, info.filename));
  const started = Date.now();
  const installed = run('npm', ['ci', '--offline', '--ignore-scripts', '--no-audit', '--no-fund'], app);
  t.equal(installed.code, 0, `npm ci --offline --ignore-scripts: ${installed.stderr.slice(-2000)}`);
  t.comment(`installed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  const rnode = path.join(app, 'node_modules', '.bin', 'rnode');

  const version = run(rnode, ['--version'], dir);
  t.equal(version.stdout.trim(), pkg.version, 'rnode --version prints the package version');
  // The entry a Management Server imports the protocol from (examples/reference-ms.ts does, from the checkout).
  const protocol = run(
    process.execPath,
    ['--input-type=module', '-e', "const p = await import('replication-node/protocol'); console.log(p.PROTOCOL_VERSION, typeof p.decode)"],
    app,
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
    app,
  );
  t.equal(testing.stdout.trim(), 'undefined undefined RNODE_BAD_STORE_URL function function opened', `replication-node/testing: ${testing.stderr}`);

  const image = path.join(dir, 'disk.img');
  fs.writeFileSync(image, Buffer.concat([randomData(3 << 20, 5), Buffer.alloc(1 << 20), randomData(123_456, 6)]));
  const store = path.join(dir, 'store');
  const rep = run(rnode, ['replicate', '--source', image, '--target', store, '--disk', 'd0', '--json'], dir);
  t.equal(rep.code, 0, `replicate: ${rep.stderr}`);
  const out = path.join(dir, 'restored.img');
  const rec = run(rnode, ['recover', '--store', store, '--disk', 'd0', '--out', out, '--json'], dir);
  t.equal(rec.code, 0, `recover: ${rec.stderr}`);
  t.ok(fs.readFileSync(out).equals(fs.readFileSync(image)), 'the recovered disk is byte-exact');

  // No prebuild for this platform and no source build: one line that says what to do, exit 1, no stack.
  fs.rmSync(path.join(app, 'node_modules', pkg.name, 'prebuilds'), { recursive: true });
  const missing = run(rnode, ['points', '--store', store, '--disk', 'd0'], dir);
  t.equal(missing.code, 1, 'exit 1');
  const lines = missing.stderr.split('\n').filter((l) => l.trim() !== '');
  t.equal(lines.length, 1, `one line: ${missing.stderr}`);
  t.match(lines[0], /^rnode: RNODE_NATIVE_MISSING: no rnode_native addon for .*node-gyp rebuild --directory native/);
});

t.test('the generated node-gyp config is not part of the repository', async (t) => {
  const tracked = execFileSync('git', ['ls-files', 'build', 'prebuilds'], { cwd: ROOT, encoding: 'utf8' });
  t.equal(tracked.trim(), '', 'build/ and prebuilds/ are build outputs');
});
