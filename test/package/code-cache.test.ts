// The executable runs the CLI's bundle with the V8 code cache the build wrote (scripts/rnode-bin.cjs). V8 takes a
// damaged cache as it is: a bit flipped in it killed every run with a V8 fatal error (exit 133). The cache carries its
// digest, and a cache that does not match it is not used: the command runs, compiled from source.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { ROOT, ensureBuilt } from '../helpers/cli.js';
import { tmpDir } from '../helpers/images.js';

t.test('a damaged code cache is not used: the command still runs', async (t) => {
  ensureBuilt();
  // A copy of the executable and its bundle, with the package.json the bundle reads its version from.
  const pkg = tmpDir(t, 'code-cache');
  fs.cpSync(path.join(ROOT, 'dist', 'bin'), path.join(pkg, 'dist', 'bin'), { recursive: true });
  fs.copyFileSync(path.join(ROOT, 'package.json'), path.join(pkg, 'package.json'));
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
