// Regression: `rnode replicate` printed its result and then never exited when only one codec worker had been
// used (a one-chunk disk, or an incremental touching one chunk): adding the 'message' listener after unref()
// re-referenced the idle worker's port.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { runCli } from '../helpers/cli.js';

t.test('replicate and recover of a one-chunk disk exit on their own', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rnode-exit-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const image = path.join(dir, 'tiny.img');
  fs.writeFileSync(image, Buffer.alloc(100_000, 7));
  for (let i = 0; i < 2; i++) {
    const r = await runCli(['replicate', '--source', image, '--target', path.join(dir, 'store'), '--json'], { timeoutMs: 60_000 });
    t.equal(r.code, 0, `run ${i + 1} exits 0 by itself (stderr: ${r.stderr})`);
    fs.writeFileSync(image, Buffer.alloc(100_000, 9));
  }
  const out = path.join(dir, 'out.img');
  const r = await runCli(['recover', '--store', path.join(dir, 'store'), '--disk', 'tiny.img', '--out', out], { timeoutMs: 60_000 });
  t.equal(r.code, 0);
  t.ok(fs.readFileSync(out).equals(Buffer.alloc(100_000, 9)), 'byte-exact');
});
