// Where replicate keeps its change hashes without --cache-dir: $XDG_CACHE_HOME/rnode, or ~/.cache/rnode. Bug: a
// relative XDG_CACHE_HOME (invalid, says the XDG spec, and to be ignored) put the cache under whatever folder the
// command ran in.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { runCli } from '../helpers/cli.js';
import { MiB, randomData, tmpDir } from '../helpers/images.js';

t.test('a relative XDG_CACHE_HOME is ignored: the cache goes to ~/.cache/rnode', async (t) => {
  const dir = tmpDir(t, 'xdg');
  const home = path.join(dir, 'home');
  fs.mkdirSync(home);
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, randomData(MiB, 1));
  const run = (xdg: string) =>
    runCli(['replicate', '--source', img, '--target', path.join(dir, 'store'), '--disk', 'd'], {
      cwd: dir,
      env: { HOME: home, XDG_CACHE_HOME: xdg, RNODE_CACHE_DIR: '' },
    });
  const r = await run('relative-cache');
  t.equal(r.code, 0, r.stderr);
  t.notOk(fs.existsSync(path.join(dir, 'relative-cache')), 'nothing under the working folder');
  t.equal(fs.readdirSync(path.join(home, '.cache', 'rnode', 'change-hashes')).length, 1, 'the cache is in ~/.cache/rnode');
  const abs = path.join(dir, 'xdg');
  t.equal((await run(abs)).code, 0);
  t.equal(fs.readdirSync(path.join(abs, 'rnode', 'change-hashes')).length, 1, 'an absolute XDG_CACHE_HOME is used');
});
