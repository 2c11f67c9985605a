// A command that runs out of file descriptors (a low `ulimit -n`, a service's LimitNOFILE) is told so, with what to
// raise. Bug: it ended RNODE_INTERNAL "this is a bug, please report it", naming one of rnode's own module files.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { coded, RnodeError } from '../../src/errors.js';
import { json, runCli } from '../helpers/cli.js';
import { randomData, tmpDir } from '../helpers/images.js';

const LOW_LIMIT = ['bash', '-c', 'ulimit -n 24 && exec "$@"', 'bash'];

t.test('too few file descriptors: RNODE_RESOURCE_LIMIT saying to raise ulimit -n, exit 1, one line', async (t) => {
  const dir = tmpDir(t, 'nofile');
  const img = path.join(dir, 'disk.img');
  // 32 chunks in small packs: the run keeps reads and pack writes open at once. A 1 MiB disk (one chunk) now and then
  // got through within 24 descriptors once the CLI started from one file.
  fs.writeFileSync(img, randomData(32 << 20, 5));
  const args = ['replicate', '--source', img, '--target', path.join(dir, 'store'), '--disk', 'd', '--pack-size', '1MiB'];
  const r = await runCli(args, { wrap: LOW_LIMIT });
  t.equal(r.code, 1, 'exit 1');
  t.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
  t.match(r.stderr, /^rnode: RNODE_RESOURCE_LIMIT: too many open files \(EMFILE\): raise this process's limit \(ulimit -n/);
  t.notMatch(r.stderr, /bug/);
  const j = await runCli([...args, '--json'], { wrap: LOW_LIMIT });
  t.match(json(j).error, { code: 'RNODE_RESOURCE_LIMIT', errno: 'EMFILE' }, '--json: the error document');
  const ok = await runCli(args);
  t.equal(ok.code, 0, `with the usual limit the same command works: ${ok.stderr}`);
});

// One mapping for the CLI and the agent's job reports (a job failing on EMFILE was reported to the Management Server
// as RNODE_INTERNAL): coded() names the limit, and leaves every other error as it is.
t.test('coded(): EMFILE and ENFILE are RNODE_RESOURCE_LIMIT; other errors pass unchanged', async (t) => {
  for (const errno of ['EMFILE', 'ENFILE']) {
    const err = coded(Object.assign(new Error(`${errno}: too many open files, open 'x'`), { code: errno }));
    t.match(err, { code: 'RNODE_RESOURCE_LIMIT', details: { errno }, message: /^too many open files/ }, errno);
  }
  const other = Object.assign(new Error('boom'), { code: 'EIO' });
  t.equal(coded(other), other, 'an EIO is not a resource limit');
  const own = new RnodeError('RNODE_STORE_IO', 'x');
  t.equal(coded(own), own, "rnode's own errors keep their code");
});
