// The executable runs the CLI's bundle with the V8 code cache the build wrote (scripts/rnode-bin.cjs). V8 takes a
// damaged cache as it is: a bit flipped in it killed every run with a V8 fatal error (exit 133). The cache carries its
// digest, and a cache that does not match it is not used: the command runs, compiled from source.
import t, { type Test } from 'tap';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { ROOT, ensureBuilt } from '../helpers/cli.js';
import { tmpDir } from '../helpers/images.js';

/** A copy of the executable and its bundle, with the package.json, packages and addon the bundle loads from there. */
function copyPackage(t: Test, tag: string): string {
  ensureBuilt();
  const pkg = tmpDir(t, tag);
  fs.cpSync(path.join(ROOT, 'dist', 'bin'), path.join(pkg, 'dist', 'bin'), { recursive: true });
  fs.copyFileSync(path.join(ROOT, 'package.json'), path.join(pkg, 'package.json'));
  for (const dir of ['node_modules', 'prebuilds']) fs.symlinkSync(path.join(ROOT, dir), path.join(pkg, dir));
  return pkg;
}

t.test('a damaged code cache is not used: the command still runs', async (t) => {
  const pkg = copyPackage(t, 'code-cache');
  const cache = path.join(pkg, 'dist', 'bin', 'rnode-main.cjs.cache');
  const version = () => spawnSync(process.execPath, [path.join(pkg, 'dist', 'bin', 'rnode.js'), '--version'], { encoding: 'utf8' });
  const expected = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).version;
  t.match(version(), { status: 0, stdout: `${expected}\n` }, 'with the cache as built');
  const bytes = fs.readFileSync(cache);
  for (let at = 64; at < bytes.length; at += 4099) bytes[at] ^= 0xff;
  fs.writeFileSync(cache, bytes);
  t.match(version(), { status: 0, stdout: `${expected}\n`, stderr: '' }, 'with bytes of the cache flipped');
  fs.writeFileSync(cache, bytes.subarray(0, 1000));
  t.match(version(), { status: 0, stdout: `${expected}\n`, stderr: '' }, 'with the cache cut short');
});

// V8 takes a cache for any source of the same length: an edit of the bundle that kept its length ran the old code (the
// cache's) where the cache had it, and died on a SyntaxError where it had not.
t.test('a cache is used with the bundle it was built for only', async (t) => {
  const pkg = copyPackage(t, 'code-cache-edit');
  const bundle = path.join(pkg, 'dist', 'bin', 'rnode-main.cjs');
  const text = fs.readFileSync(bundle, 'utf8');
  const printed = 'io.out(json ? JSON.stringify({ version: VERSION }) : VERSION);';
  t.ok(text.includes(printed), 'the bundle prints the version so');
  fs.writeFileSync(bundle, text.replace(printed, printed.replace(': VERSION)', ': "EDIT!")')));
  t.equal(fs.statSync(bundle).size, Buffer.byteLength(text), 'the edit keeps its length');
  const r = spawnSync(process.execPath, [path.join(pkg, 'dist', 'bin', 'rnode.js'), '--version'], { encoding: 'utf8' });
  t.match(r, { status: 0, stdout: 'EDIT!\n' }, 'the edited code runs, not the cached one');
});

// --debug is what a bug report carries: its frames name the TypeScript sources at this install's place, not the
// minified bundle, nor the folder the build ran in (a code cache keeps the name its script was built with).
t.test('--debug: stack frames mapped to the sources, at the install place', async (t) => {
  const pkg = copyPackage(t, 'code-cache-debug');
  const r = spawnSync(
    process.execPath,
    [path.join(pkg, 'dist', 'bin', 'rnode.js'), 'points', '--store', path.join(pkg, 'none'), '--disk', 'a', '--debug'],
    {
      encoding: 'utf8',
    },
  );
  t.equal(r.status, 1);
  t.match(r.stderr, /^rnode: RNODE_STORE_NOT_FOUND: /);
  t.match(r.stderr, new RegExp(`\\n    at assertStoreFolder \\(${pkg}/src/cli/store-flags\\.ts:\\d+:\\d+\\)`), 'a frame in the TypeScript source');
  t.notMatch(r.stderr, new RegExp(ROOT), 'nothing of the build folder');
});
