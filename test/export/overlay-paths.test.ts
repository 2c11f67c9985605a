// Regression: `export --writable --overlay` with a path it cannot use (a directory, a path in a missing folder, a
// /proc path, a read-only or unwritable folder) failed with RNODE_OUTPUT_IO, exit 1, which says a later try may
// succeed: a harness that retries exit 1 retried it forever. The overlay is now checked as recover's --out is, with
// the same codes and exit 2, before the store is read; a folder it may not write is RNODE_PATH_UNUSABLE for both.
import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { runCli, type CliResult } from '../helpers/cli.js';
import { randomPoints } from '../helpers/images.js';
import { unwritableFolder } from '../helpers/loop.js';

t.setTimeout(120_000);

t.test('--overlay paths that cannot be used: the codes and exit 2 of recover --out', async (t) => {
  const f = randomPoints(t, 'overlay-paths');
  await f.point('vm', 5, 256 * 1024);
  const { dir, storeDir: store, image } = f;
  const socket = path.join(dir, 'x.sock');
  const exportTo = (overlay: string) =>
    runCli(['export', '--store', store, '--disk', 'vm', '--writable', '--overlay', overlay, '--socket', socket], { timeoutMs: 30_000 });
  const recoverTo = (out: string) => runCli(['recover', '--store', store, '--disk', 'vm', '--out', out], { timeoutMs: 30_000 });

  /** Exit 2 with one coded line, nothing listening, and nothing left in the folders. */
  const refused = (t: Test, r: CliResult, code: string, words: RegExp) => {
    t.equal(r.signal, null, 'exited by itself');
    t.equal(r.code, 2, `exit 2 (stderr: ${r.stderr})`);
    t.match(r.stderr, new RegExp(`^rnode: ${code}: [^\\n]+\\n$`), 'one coded line');
    t.match(r.stderr, words);
    t.notOk(fs.existsSync(socket), 'not listening');
  };
  const before = fs.readdirSync(dir).sort();

  const folder = path.join(dir, 'a-folder');
  fs.mkdirSync(folder);
  const cases: [string, string, RegExp][] = [
    [folder, 'RNODE_USAGE', /--overlay \S+a-folder is a directory/],
    [path.join(dir, 'missing', 'x.ov'), 'RNODE_USAGE', /--overlay \S+: the folder \S+missing does not exist/],
    [path.join(image, 'x.ov'), 'RNODE_USAGE', /disk\.img is not a folder/],
    ['/proc/rnode-x.ov', 'RNODE_PATH_UNUSABLE', /--overlay \/proc\/rnode-x\.ov is on a kernel virtual filesystem/],
  ];
  for (const [overlay, code, words] of cases) {
    t.test(overlay, async (t) => {
      refused(t, await exportTo(overlay), code, words);
      const out = overlay.replace(/\.ov$/, '.img');
      const r = await recoverTo(out);
      t.equal(r.code, 2, `recover --out ${out}: exit 2 too`);
      t.match(r.stderr, `rnode: ${code}: --out`, 'with the same code');
    });
  }

  t.test('a folder it may not write (read-only filesystem or permissions)', async (t) => {
    const ro = unwritableFolder(t, dir);
    if (!ro) return t.skip('mount -t tmpfs is not permitted here');
    refused(t, await exportTo(path.join(ro, 'x.ov')), 'RNODE_PATH_UNUSABLE', /--overlay \S+x\.ov is (on a read-only filesystem|not writable)/);
    t.same(fs.readdirSync(ro), [], 'nothing created');
    const r = await recoverTo(path.join(ro, 'x.img'));
    t.equal(r.code, 2, `recover --out there: exit 2 too (${r.stderr})`);
    t.match(r.stderr, /^rnode: RNODE_PATH_UNUSABLE: --out \S+x\.img is (on a read-only filesystem|not writable)/);
  });

  t.test('nothing was created beside the store', async (t) => {
    t.same(fs.readdirSync(dir).sort(), [...before, 'a-folder', 'no-write'].sort(), 'no overlay, temporary file or folder');
  });
});
