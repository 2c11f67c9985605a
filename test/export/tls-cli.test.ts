// Where an export may listen, and TLS: off loopback without TLS is refused (RNODE_EXPORT_INSECURE, exit 2); with
// --tls-cert/--tls-key the server requires STARTTLS, nbdinfo (nbds:// with a tls-certificates dir) and qemu-img
// (tls-creds-x509) read the disk through it, and a client that does not speak TLS is refused. Also the CLI end to
// end: `rnode export --json` prints the URL once ready, serves, and stops cleanly on SIGTERM.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { startExport } from '../../src/export/index.js';
import { codecWorkers } from '../../src/pipeline/codec-workers.js';
import { CLI, ensureBuilt, runCli, plainNode } from '../helpers/cli.js';
import { sha256File } from '../helpers/images.js';
import { selfSignedCert } from '../../src/testing.js';
import { haveOpenssl } from '../helpers/tls.js';
import { compare, haveTools, run, storedDisk } from './helpers.js';

t.setTimeout(180_000);
t.teardown(() => codecWorkers().close());

t.test('listening off loopback without TLS is refused', async (t) => {
  const { store } = await storedDisk(t, 'export-tls');
  for (const host of ['0.0.0.0', '::', '192.0.2.10']) {
    await t.rejects(startExport({ store, disk: 'vm', host, port: 0 }), { code: 'RNODE_EXPORT_INSECURE' }, `${host} without TLS`);
  }
  const ok = await startExport({ store, disk: 'vm', host: '127.0.0.1', port: 0 });
  t.match(ok.url, /^nbd:\/\/127\.0\.0\.1:\d+\/vm$/, 'loopback is fine without TLS');
  await ok.close();
});

t.test('TLS: STARTTLS required, nbdinfo and qemu-img read through it', { skip: (!haveTools || !haveOpenssl) && 'tools missing' }, async (t) => {
  const { dir, store, image } = await storedDisk(t, 'export-tls');
  const certs = path.join(dir, 'pki');
  fs.mkdirSync(certs);
  const c = selfSignedCert(certs);
  // libnbd and qemu read a CA from <dir>/ca-cert.pem: the self-signed certificate is its own CA.
  fs.copyFileSync(c.certFile, path.join(certs, 'ca-cert.pem'));
  const exp = await startExport({ store, disk: 'vm', host: '0.0.0.0', port: 0, tls: { cert: c.cert, key: c.key } });
  t.teardown(() => exp.close());
  t.match(exp.url, /^nbds:\/\/0\.0\.0\.0:\d+\/vm$/, 'nbds:// URL');
  const port = Number(/:(\d+)\//.exec(exp.url)![1]);

  // libnbd's debug output carries the server's message (its own error line only says "not supported").
  const plain = await run('env', ['LIBNBD_DEBUG=1', 'nbdinfo', `nbd://127.0.0.1:${port}/vm`]);
  t.not(plain.code, 0, 'a client without TLS is refused');
  t.match(plain.stderr, /server error message: this server requires TLS/, 'with NBD_REP_ERR_TLS_REQD and a message');

  const info = await run('nbdinfo', [`nbds://127.0.0.1:${port}/vm?tls-certificates=${certs}`]);
  t.equal(info.code, 0, `nbdinfo over TLS ${info.stderr}`);
  t.match(info.stdout, /with TLS/, 'libnbd negotiated TLS');

  const out = path.join(dir, 'tls-copy.img');
  const q = await run('qemu-img', [
    'convert',
    '--object',
    `tls-creds-x509,id=tls0,endpoint=client,dir=${certs}`,
    '--image-opts',
    `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${port},export=vm,tls-creds=tls0`,
    '-O',
    'raw',
    out,
  ]);
  t.equal(q.code, 0, `qemu-img convert over TLS ${q.stderr}`);
  t.equal(sha256File(out), sha256File(image), 'byte-exact through TLS');
  const cp = path.join(dir, 'nbdcopy.img');
  const n = await run('nbdcopy', [`nbds://127.0.0.1:${port}/vm?tls-certificates=${certs}`, cp]);
  t.equal(n.code, 0, `nbdcopy over TLS ${n.stderr}`);
  t.equal(sha256File(cp), sha256File(image), 'nbdcopy over TLS: byte-exact');
});

t.test(
  'CLI: refuses 0.0.0.0 without TLS (exit 2); --json prints the URL, serves, stops on SIGTERM',
  { skip: !haveTools && 'tools missing' },
  async (t) => {
    ensureBuilt();
    const { dir, storeDir, image } = await storedDisk(t, 'export-tls');
    const bad = await runCli(['export', '--store', storeDir, '--disk', 'vm', '--listen', '0.0.0.0:0']);
    t.equal(bad.code, 2, 'exit 2');
    t.match(bad.stderr, /RNODE_EXPORT_INSECURE/, bad.stderr.trim());
    const inside = await runCli([
      'export',
      '--store',
      storeDir,
      '--disk',
      'vm',
      '--writable',
      '--overlay',
      path.join(storeDir, 'o.ovl'),
      '--socket',
      path.join(dir, 'x.sock'),
    ]);
    t.equal(inside.code, 2, `an overlay inside the store: exit 2 (${inside.stderr.trim()})`);

    const socket = path.join(dir, 'cli.sock');
    const child = spawn(...plainNode([CLI, 'export', '--store', storeDir, '--disk', 'vm', '--socket', socket, '--cache', '8MiB', '--json']), {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    t.teardown(() => {
      if (child.exitCode === null) child.kill('SIGKILL');
    });
    let stderr = '';
    child.stderr.on('data', (d) => {
      stderr += d;
    });
    const line = await new Promise<string>((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (d) => {
        out += d;
        if (out.includes('\n')) resolve(out.split('\n')[0]);
      });
      child.once('exit', (code) => reject(new Error(`exited ${code}: ${stderr}`)));
    });
    const ready = JSON.parse(line);
    t.match(ready, { url: `nbd+unix:///vm?socket=${socket}`, disk: 'vm', point: 1, writable: false, tls: false }, 'JSON with the URL once ready');
    const r = await compare(image, ready.url);
    t.equal(r.code, 0, `the printed URL serves the disk ${r.stderr}`);
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    child.kill('SIGTERM');
    t.equal(await exited, 0, 'SIGTERM: clean exit 0');
    // --json: its log lines are pino's JSON lines, the stop with its counters among them.
    const stopping = stderr
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { msg: string })
      .find((l) => l.msg === 'stopping');
    t.match(stopping, { level: 'info', connections: Number, bytesServed: Number, cacheHitRatio: Number }, 'logs its counters when stopping');
    t.notOk(fs.existsSync(socket), 'the socket is removed');
  },
);
