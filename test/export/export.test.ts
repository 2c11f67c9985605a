// rnode export against the real NBD clients: qemu-img compare of every point (full and incremental, plain and
// encrypted) with the image it was taken from; nbdinfo --map reports zero chunks and holes as hole+zero;
// nbdcopy copies byte-exact and sparse; several clients at once (multi-conn) read the right bytes.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { EncryptionKey } from '../../src/crypto/keys.js';
import { codecWorkers } from '../../src/pipeline/codec-workers.js';
import { allocatedBytes, fsStore, sha256File, snap, tmpDir } from '../helpers/images.js';
import { changeDisk, CHUNK, compare, haveTools, makeDisk, nbdMap, run, serveExport, SIZE, unixUrl, zeroRuns } from './helpers.js';

t.setTimeout(240_000);
t.teardown(() => codecWorkers().close());

/** What base:allocation must say: HOLE|ZERO (3) exactly for the chunks that are all zeros, data (0) elsewhere. */
function expectedMap(image: string): Array<{ offset: number; length: number; type: number }> {
  const zero = zeroRuns(image, CHUNK);
  const out: Array<{ offset: number; length: number; type: number }> = [];
  let pos = 0;
  for (const [o, l] of zero) {
    if (o > pos) out.push({ offset: pos, length: o - pos, type: 0 });
    out.push({ offset: o, length: l, type: 3 });
    pos = o + l;
  }
  if (pos < SIZE) out.push({ offset: pos, length: SIZE - pos, type: 0 });
  return out;
}

async function twoPoints(dir: string, encryption?: EncryptionKey) {
  const store = fsStore(path.join(dir, 'store'));
  const image = path.join(dir, 'disk.img');
  makeDisk(image);
  await snap(store, image, 'vm', { chunkSize: CHUNK, encryption, lease: false });
  const p1 = path.join(dir, 'p1.img');
  fs.copyFileSync(image, p1);
  changeDisk(image);
  const r2 = await snap(store, image, 'vm', { encryption, lease: false });
  const p2 = path.join(dir, 'p2.img');
  fs.copyFileSync(image, p2);
  return { store, p1, p2, incremental: !r2.full };
}

for (const encrypted of [false, true]) {
  t.test(
    `full and incremental points, ${encrypted ? 'encrypted' : 'plain'}: qemu-img compare, map, nbdcopy`,
    { skip: !haveTools && 'qemu-utils/libnbd-bin missing' },
    async (t) => {
      const dir = tmpDir(t, 'export');
      const key = encrypted ? EncryptionKey.fromBytes(Buffer.alloc(32, 7)) : undefined;
      const { store, p1, p2, incremental } = await twoPoints(dir, key);
      t.ok(incremental, 'point 2 is an incremental');
      const exp = await serveExport(t, dir, { store, disk: 'vm', encryption: key });
      t.equal(exp.point, 2, 'latest by default');
      t.equal(exp.url, unixUrl(exp.socket, 'vm'), 'URL names the disk and the socket');

      for (const [name, want] of [
        ['', p2],
        ['vm', p2],
        ['vm@2', p2],
        ['vm@1', p1],
      ] as const) {
        const r = await compare(want, unixUrl(exp.socket, name));
        t.equal(r.code, 0, `export "${name}" is identical to its image (${r.stdout.trim()}${r.stderr.trim()})`);
      }

      for (const [name, want] of [
        ['vm', p2],
        ['vm@1', p1],
      ] as const) {
        const map = await nbdMap(unixUrl(exp.socket, name));
        t.same(
          map.map((e) => ({ offset: e.offset, length: e.length, type: e.type })),
          expectedMap(want),
          `nbdinfo --map of "${name}": zero chunks and holes are hole+zero, the rest data`,
        );
      }

      const out = path.join(dir, 'copy.img');
      const c = await run('nbdcopy', [unixUrl(exp.socket, 'vm'), out]);
      t.equal(c.code, 0, `nbdcopy ok ${c.stderr}`);
      t.equal(sha256File(out), sha256File(p2), 'nbdcopy output is byte-exact');
      const dataBytes = expectedMap(p2)
        .filter((e) => e.type === 0)
        .reduce((n, e) => n + e.length, 0);
      t.ok(
        allocatedBytes(out) <= dataBytes,
        `nbdcopy output is sparse: ${allocatedBytes(out)} bytes allocated for ${dataBytes} bytes of data chunks (disk ${SIZE})`,
      );

      const s = exp.stats();
      t.ok(s.bytesServed > 0 && s.cacheHits + s.cacheMisses > 0, `stats: ${s.bytesServed} bytes served, hit ratio ${s.cacheHitRatio.toFixed(2)}`);
      t.equal(s.chunkErrors, 0, 'no chunk errors');
    },
  );
}

t.test('an encrypted point without its key, or with another, is refused before anything listens', async (t) => {
  const dir = tmpDir(t, 'export-key');
  const key = EncryptionKey.fromBytes(Buffer.alloc(32, 7));
  const store = fsStore(path.join(dir, 'store'));
  const image = path.join(dir, 'disk.img');
  makeDisk(image);
  await snap(store, image, 'vm', { chunkSize: CHUNK, encryption: key, lease: false });
  const socket = path.join(dir, 'k.sock');
  await t.rejects(serveExport(t, dir, { store, disk: 'vm', tag: 'k' }), { code: 'RNODE_KEY_REQUIRED' });
  await t.rejects(serveExport(t, dir, { store, disk: 'vm', tag: 'k', encryption: EncryptionKey.fromBytes(Buffer.alloc(32, 8)) }), {
    code: 'RNODE_KEY_MISMATCH',
  });
  t.notOk(fs.existsSync(socket), 'no socket was created');
});

t.test(
  'multi-conn: nbdcopy over 4 connections and concurrent clients on several points get the right bytes',
  { skip: !haveTools && 'tools missing' },
  async (t) => {
    const dir = tmpDir(t, 'export-multi');
    const { store, p1, p2 } = await twoPoints(dir);
    // A cache smaller than the disk: clients evict each other's chunks and chunks are fetched again.
    const exp = await serveExport(t, dir, { store, disk: 'vm', cacheBytes: 1024 * 1024 });
    const info = await run('nbdinfo', [unixUrl(exp.socket, 'vm')]);
    t.match(info.stdout, /can_multi_conn: true/, 'read-only export advertises multi-conn');
    const list = await run('nbdinfo', ['--list', '--json', unixUrl(exp.socket, '')]);
    t.same(
      JSON.parse(list.stdout).exports.map((e: { 'export-name': string }) => e['export-name']),
      ['vm', 'vm@1', 'vm@2'],
      'NBD_OPT_LIST names the disk and each point',
    );
    const outs = [0, 1].map((i) => path.join(dir, `copy${i}.img`));
    const before = exp.stats().connections;
    const results = await Promise.all([
      run('nbdcopy', ['--connections=4', '--threads=4', '--requests=8', unixUrl(exp.socket, 'vm'), outs[0]]),
      run('nbdcopy', ['--connections=4', '--threads=4', '--requests=8', unixUrl(exp.socket, 'vm@1'), outs[1]]),
      compare(p2, unixUrl(exp.socket, 'vm')),
      compare(p1, unixUrl(exp.socket, 'vm@1')),
      compare(p2, unixUrl(exp.socket, '')),
    ]);
    results.forEach((r, i) => t.equal(r.code, 0, `client ${i} ok ${r.stderr}`));
    t.equal(sha256File(outs[0]), sha256File(p2), 'point 2 over 4 connections: byte-exact');
    t.equal(sha256File(outs[1]), sha256File(p1), 'point 1 over 4 connections: byte-exact');
    t.ok(exp.stats().connections - before >= 8, `${exp.stats().connections - before} connections served`);
    t.ok(exp.stats().cachedBytes <= 1024 * 1024, `cache stays within --cache (${exp.stats().cachedBytes} bytes)`);
  },
);
