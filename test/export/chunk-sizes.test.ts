// A disk whose points have different chunk sizes (replicated again with another --chunk-size): an export serves one
// chunk size, so points of another are left out of NBD_OPT_LIST and refused by name with a clear NBD error (the
// session goes on), and the export logs one warning per point with the reason.
import net from 'node:net';
import path from 'node:path';
import t from 'tap';
import { codecWorkers } from '../../src/pipeline/codec-workers.js';
import { encodeClientFlags, encodeOption, FLAG_C_FIXED_NEWSTYLE, Opt } from '../../src/source/nbd/protocol.js';
import { fsStore, snap, tmpDir } from '../helpers/images.js';
import { changeDisk, CHUNK, compare, haveTools, makeDisk, MiB, run, serveExport, unixUrl } from './helpers.js';

t.setTimeout(120_000);
t.teardown(() => codecWorkers().close());

type Log = Array<{ event: string; fields: Record<string, unknown> }>;

/** NBD_OPT_EXPORT_NAME (the option without an error reply) of name: resolves once the server closed the socket. */
function exportName(socket: string, name: string): Promise<void> {
  return new Promise((resolve) => {
    const s = net.connect(socket);
    let greeted = false;
    s.on('data', () => {
      if (greeted) return;
      greeted = true;
      s.write(Buffer.concat([encodeClientFlags(FLAG_C_FIXED_NEWSTYLE), encodeOption(Opt.EXPORT_NAME, Buffer.from(name))]));
    });
    s.on('error', () => undefined);
    s.on('close', () => resolve());
  });
}

t.test('points of another chunk size: left out of the list, refused by name, a warning each', { skip: !haveTools && 'tools missing' }, async (t) => {
  const dir = tmpDir(t, 'export-sizes');
  const store = fsStore(path.join(dir, 'store'));
  const image = path.join(dir, 'disk.img');
  makeDisk(image);
  await snap(store, image, 'vm', { chunkSize: MiB, lease: false });
  changeDisk(image);
  await snap(store, image, 'vm', { lease: false });
  await snap(store, image, 'vm', { chunkSize: CHUNK, lease: false });
  changeDisk(image, 9);
  await snap(store, image, 'vm', { lease: false });
  const logs: Log = [];
  const exp = await serveExport(t, dir, { store, disk: 'vm', log: (event, fields) => logs.push({ event, fields }) });
  t.equal(exp.point, 4);

  const list = await run('nbdinfo', ['--list', '--json', unixUrl(exp.socket, '')]);
  t.equal(list.code, 0, `nbdinfo --list ok ${list.stderr}`);
  t.same(
    JSON.parse(list.stdout).exports.map((e: { 'export-name': string }) => e['export-name']),
    ['vm', 'vm@3', 'vm@4'],
    'NBD_OPT_LIST leaves out the points of another chunk size',
  );
  const warned = logs.filter((l) => l.event === 'request-failed');
  t.same(
    warned.map((l) => l.fields.export),
    ['vm@1', 'vm@2'],
    'one warning per point left out',
  );
  t.match(warned[0]?.fields.message, /point 1 of disk vm has chunks of 1048576 bytes, this export's 65536: export it on its own \(--point 1\)/);

  const info = await run('nbdinfo', [unixUrl(exp.socket, 'vm@1')]);
  t.not(info.code, 0, 'nbdinfo of vm@1 fails');
  t.match(info.stderr, /not supported|policy/i, `with a policy error, not "no such export": ${info.stderr}`);
  // nbdcopy selects base:allocation on the name first: that too is refused, the session is not dropped.
  const copy = await run('nbdcopy', [unixUrl(exp.socket, 'vm@2'), path.join(dir, 'out.img')]);
  t.not(copy.code, 0, 'nbdcopy of vm@2 fails');
  t.notMatch(copy.stderr, /disconnected/, `the server answers it: ${copy.stderr}`);
  t.match(copy.stderr, /policy/i);
  await exportName(exp.socket, 'vm@1');
  t.match(
    logs.find((l) => l.event === 'client-dropped')?.fields.reason,
    /NBD_OPT_EXPORT_NAME for export "vm@1", which cannot be opened: point 1 of disk vm has chunks of 1048576 bytes/,
    'NBD_OPT_EXPORT_NAME (no error reply): the dropped client is logged with the reason',
  );
  t.equal(logs.filter((l) => l.event === 'request-failed').length, 2, 'still one warning per point');
  t.equal((await compare(image, unixUrl(exp.socket, 'vm@4'))).code, 0, 'points of the export chunk size are served');
});
