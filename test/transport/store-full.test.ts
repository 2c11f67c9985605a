// A receiving node whose store fills up while a sender streams to it. Bugs: the sender was told RNODE_PATH_UNUSABLE
// (exit 2, a usage error) with the node's own folder path and "choose another folder", which no sender can do, and
// the node logged nothing, so its operator never learnt the store was full. Now the sender gets RNODE_STORE_IO
// (exit 1) saying the node's store is full, the node logs each failed put as a warning, and once the node has room
// the same command makes a point that restores byte-exact.
import t, { type Test } from 'tap';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { CLI, ensureBuilt, runCli } from '../helpers/cli.js';
import { randomData, tmpDir } from '../helpers/images.js';
import { mountTmpfs } from '../helpers/loop.js';
import { spawnServe } from './helpers.js';

/** A node serving a store on a tmpfs of `size` (under a fresh folder, unmounted at the end); with a token, its file. */
async function nodeOnTmpfs(t: Test, tag: string, size: string, token?: string) {
  ensureBuilt();
  const dir = tmpDir(t, tag);
  const mnt = mountTmpfs(t, dir, size);
  const tok = path.join(dir, 'token');
  if (token) fs.writeFileSync(tok, `${token}\n`, { mode: 0o600 });
  const node = await spawnServe(t, CLI, ['--listen', '127.0.0.1:0', '--store', path.join(mnt, 'store'), ...(token ? ['--token-file', tok] : [])]);
  return { dir, mnt, node, tok };
}

t.test(
  'a node whose store is full: the sender gets RNODE_STORE_IO, the node logs a warning, and the next run succeeds',
  { skip: process.getuid?.() !== 0 && 'needs root to mount a small tmpfs' },
  async (t) => {
    const { dir, mnt, node, tok } = await nodeOnTmpfs(t, 'store-full', '6m', 'full-token');
    const image = path.join(dir, 'disk.img');
    fs.writeFileSync(image, randomData(8 << 20, 31)); // incompressible: 8 MiB cannot fit in 6
    const args = [
      'replicate',
      '--source',
      image,
      '--target',
      node.url,
      '--disk',
      'd',
      '--chunk-size',
      '64KiB',
      '--pack-size',
      '1MiB',
      '--token-file',
      tok,
    ];

    const full = await runCli(args);
    t.equal(full.code, 1, `exit 1, not a usage error: ${full.stderr}`);
    t.match(full.stderr, /^rnode: RNODE_STORE_IO: the receiving node's store has no space left \(ENOSPC\); free space there/);
    t.notMatch(full.stderr, mnt, "the node's folder is not the sender's business");
    t.match(
      node.log(),
      /"level":"warn"[^\n]*"kind":"pack","code":"RNODE_STORE_IO"[^\n]*ENOSPC[^\n]*"msg":"put-failed"/,
      "the node's log: a warning that says why",
    );

    execFileSync('mount', ['-o', 'remount,size=32m', mnt]);
    const again = await runCli(args);
    t.equal(again.code, 0, `the same command once the node has room: ${again.stderr}`);
    const out = path.join(dir, 'out.img');
    const rec = await runCli(['recover', '--store', node.url, '--disk', 'd', '--out', out, '--token-file', tok]);
    t.equal(rec.code, 0, `recover: ${rec.stderr}`);
    t.ok(fs.readFileSync(out).equals(fs.readFileSync(image)), 'byte-exact');
  },
);

// A store that turned read-only under a running node: the sender's lease write fails first, and the sender is told
// "its log says why", but the node logged nothing (only puts were logged when they failed).
t.test(
  'a node whose store turned read-only: the failed lease write is a warning in its log',
  { skip: process.getuid?.() !== 0 && 'needs root to mount a tmpfs' },
  async (t) => {
    const { dir, mnt, node } = await nodeOnTmpfs(t, 'store-ro', '8m');
    execFileSync('mount', ['-o', 'remount,ro', mnt]);
    const image = path.join(dir, 'disk.img');
    fs.writeFileSync(image, randomData(1 << 20, 32));
    const r = await runCli(['replicate', '--source', image, '--target', node.url, '--disk', 'd']);
    t.equal(r.code, 1, `the sender fails: ${r.stderr}`);
    t.match(r.stderr, /RNODE_STORE_IO: .*its log says why/);
    t.match(node.log(), /"level":"warn"[^\n]*"op":"lease"[^\n]*EROFS[^\n]*"msg":"request-failed"/, "the node's log says why");
  },
);
