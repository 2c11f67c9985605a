// A bug (an error that is not an RnodeError) still gives a --json caller its one document on stdout, with
// RNODE_INTERNAL: a Management Server parsing the output got an empty stdout instead.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { main } from '../../src/cli/main.js';

t.test('an internal error is one JSON document on stdout with --json, and one line on stderr', async (t) => {
  const store = fs.mkdtempSync(path.join(os.tmpdir(), 'rnode-internal-json-'));
  t.teardown(() => fs.rmSync(store, { recursive: true, force: true }));
  // The bug: the first line the command prints throws a TypeError with a line break in its message; what main
  // prints after that is kept.
  const withBug = (sink: string[]) => {
    let first = true;
    return (l: string) => {
      if (!first) return void sink.push(l);
      first = false;
      throw new TypeError('Cannot read properties of undefined\n(reading "x")');
    };
  };
  const out: string[] = [];
  const err: string[] = [];
  const code = await main(['disks', '--store', store, '--json'], { out: withBug(out), err: (l) => err.push(l) });
  t.equal(code, 1);
  t.equal(out.length, 1, 'one document on stdout');
  const doc = JSON.parse(out[0]!);
  t.equal(doc.error.code, 'RNODE_INTERNAL');
  t.match(doc.error.message, /^Cannot read properties of undefined; \(reading "x"\); this is a bug, please report it/, 'on one line');
  t.equal(err.length, 1, 'one line on stderr');
  t.match(err[0], /^rnode: RNODE_INTERNAL: /);

  out.length = 0;
  t.equal(await main(['disks', '--store', store], { out: withBug(out), err: () => {} }), 1);
  t.same(out, [], 'nothing on stdout without --json');
});
