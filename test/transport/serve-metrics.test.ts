// `rnode serve --metrics`: a real receiving node scraped over HTTP. Its counters move with a real replicate to it
// (connections, sessions, objects and bytes received and stored, puts by result), rejected PUTs and refused
// tokens are counted by code and reason, /healthz answers, and /readyz turns 503 with a reason while the store
// folder cannot be listed (a symlink loop in its place: ELOOP, which holds even for root) and 200 once it is back.
// The log formats: text lines by default, pino's JSON lines with --log-format json; the token in neither.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { CLI, ensureBuilt, json, runCli, plainNode } from '../helpers/cli.js';
import { KiB, MiB, randomData, textData, tmpDir } from '../helpers/images.js';
import { parseExposition } from '../helpers/metrics.js';
import { remote, spawnServe, until } from './helpers.js';

const TOKEN = 'serve-metrics-token-5f3a9c';

async function get(port: number, p: string): Promise<{ status: number; body: string; type: string | null }> {
  const r = await fetch(`http://127.0.0.1:${port}${p}`);
  return { status: r.status, body: await r.text(), type: r.headers.get('content-type') };
}

/** The port of /metrics, from the node's "serving /metrics" log line (JSON lines: spawnServe passes --json). */
async function metricsPort(log: () => string): Promise<number> {
  let port = 0;
  await until(
    () => {
      const line = log()
        .split('\n')
        .find((l) => l.includes('serving /metrics'));
      if (line) port = Number(String(JSON.parse(line).listen).split(':').pop());
      return port > 0;
    },
    10_000,
    'the metrics endpoint',
  );
  return port;
}

/** Bytes of every file under dir, leases left out (the node writes those itself, not through PUTs). */
function fileBytes(dir: string): { files: number; bytes: number } {
  let files = 0;
  let bytes = 0;
  for (const e of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (!e.isFile() || e.name.startsWith('lease')) continue;
    files++;
    bytes += fs.statSync(path.join(e.parentPath, e.name)).size;
  }
  return { files, bytes };
}

t.test('metrics and health of a real serve process', async (t) => {
  ensureBuilt();
  const dir = tmpDir(t, 'serve-metrics');
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, Buffer.concat([randomData(MiB, 21), textData(MiB, 22), Buffer.alloc(256 * KiB)]));
  const tok = path.join(dir, 'token');
  fs.writeFileSync(tok, `${TOKEN}\n`, { mode: 0o600 });
  const storeDir = path.join(dir, 'recv');
  const serve = await spawnServe(t, CLI, ['--listen', '127.0.0.1:0', '--store', storeDir, '--token-file', tok, '--metrics', '127.0.0.1:0']);
  const port = await metricsPort(serve.log);
  t.equal(serve.info.metrics, `127.0.0.1:${port}`, 'the startup line names the port --metrics 127.0.0.1:0 bound');
  const scrape = async () => {
    const r = await get(port, '/metrics');
    t.equal(r.status, 200);
    return parseExposition(r.body);
  };

  const before = await scrape();
  t.equal(before.get('rnode_serve_received_objects_total'), 0, 'nothing received yet');
  t.equal(before.get('rnode_serve_puts_total{result="stored"}'), 0);
  t.equal(before.get('rnode_serve_sessions_open'), 0);
  t.equal(before.get('rnode_serve_window_bytes'), 80 * MiB, 'the default window');
  t.ok(before.get('process_cpu_user_seconds_total')! > 0 && before.has('nodejs_eventloop_lag_seconds'), 'process and event-loop metrics');
  t.ok(
    [...before.keys()].some((k) => k.startsWith('rnode_node_info{') && k.includes('version="')),
    'node info with the version',
  );
  t.equal((await get(port, '/healthz')).status, 200, '/healthz');
  const ready = await get(port, '/readyz');
  t.equal(ready.status, 200, '/readyz while the listener is up and the store lists');
  t.match(JSON.parse(ready.body), { status: 'ready', checks: { listening: true, store: true } });

  const r = await runCli([
    'replicate',
    '--source',
    img,
    '--target',
    serve.url,
    '--disk',
    'm',
    '--chunk-size',
    '64KiB',
    '--json',
    '--token-file',
    tok,
  ]);
  t.equal(r.code, 0, r.stderr);
  t.equal(json(r).point, 1);

  const after = await scrape();
  const v = (k: string) => after.get(k) ?? NaN;
  const onDisk = fileBytes(storeDir);
  t.ok(v('rnode_serve_connections_accepted_total') >= 1 && v('rnode_serve_sessions_total') >= 1, 'the replicate connected and said hello');
  t.ok(
    v('rnode_serve_puts_total{result="stored"}') >= onDisk.files,
    `${v('rnode_serve_puts_total{result="stored"}')} puts stored, ${onDisk.files} objects in the store`,
  );
  t.ok(v('rnode_serve_stored_bytes_total') >= onDisk.bytes, `${v('rnode_serve_stored_bytes_total')} bytes stored, ${onDisk.bytes} in the store`);
  t.ok(v('rnode_serve_stored_bytes_total') < 2 * MiB, 'less than the disk: the text compressed, the zeros skipped');
  t.equal(v('rnode_serve_received_objects_total'), v('rnode_serve_puts_total{result="stored"}'), 'every object received was stored');
  t.equal(v('rnode_serve_received_bytes_total'), v('rnode_serve_stored_bytes_total'));
  t.equal(v('rnode_serve_puts_total{result="rejected"}'), 0);
  t.equal(v('rnode_serve_held_bytes'), 0, 'nothing held once the run is done');
  t.ok(
    v('rnode_serve_session_held_peak_bytes') > 0 && v('rnode_serve_session_held_peak_bytes') <= 80 * MiB,
    'the peak held stayed within the window',
  );

  // A bad pack, a key that is no rnode object, and a wrong token: counted by code, kind and reason.
  const rs = remote(t, serve.url, { token: TOKEN });
  await t.rejects(rs.put(`r2/plain/packs/ab/${'ab'.repeat(16)}`, Buffer.from('not a pack')), { code: 'RNODE_TRANSPORT_REJECTED' });
  await t.rejects(rs.put('junk/x', Buffer.from('x')), { code: 'RNODE_TRANSPORT_REJECTED' });
  const wrong = remote(t, serve.url, { token: 'not-the-token' });
  await t.rejects(wrong.head('claims/x'), { code: 'RNODE_TRANSPORT_AUTH' });
  const m = await scrape();
  t.equal(m.get('rnode_serve_puts_total{result="rejected"}'), 2);
  t.equal(m.get('rnode_serve_put_errors_total{code="RNODE_TRANSPORT_REJECTED",kind="pack"}'), 1, 'rejections by code and kind');
  t.equal(m.get('rnode_serve_put_errors_total{code="RNODE_TRANSPORT_REJECTED",kind="unknown"}'), 1);
  t.equal(m.get('rnode_serve_connections_refused_total{reason="auth"}'), 1, 'a refused token');
  t.equal(m.get('rnode_serve_received_objects_total'), v('rnode_serve_received_objects_total') + 2, 'rejected objects were received too');

  // The store folder turns into a symlink loop: not ready, with the reason; back in place: ready again.
  const moved = `${storeDir}.moved`;
  fs.renameSync(storeDir, moved);
  fs.symlinkSync(path.basename(storeDir), storeDir);
  const down = await get(port, '/readyz');
  t.equal(down.status, 503, '/readyz is 503 while the store cannot be listed');
  const why = JSON.parse(down.body);
  t.match(why, { status: 'not ready', checks: { listening: true, store: false } });
  t.match(why.reason, /^store .*unreachable: .*ELOOP/, `reason: ${why.reason}`);
  t.equal((await get(port, '/healthz')).status, 200, 'still alive');
  fs.unlinkSync(storeDir);
  fs.renameSync(moved, storeDir);
  t.equal((await get(port, '/readyz')).status, 200, 'ready again once the folder is back');

  t.notOk(serve.log().includes(TOKEN), 'the token is in no log line');
  const lines = serve.log().trim().split('\n');
  t.ok(
    lines.every((l) => {
      const e = JSON.parse(l);
      return e.time && e.level && e.msg;
    }),
    'with --json every log line is pino JSON',
  );
  serve.child.kill('SIGTERM');
  t.equal(await new Promise((res) => serve.child.on('exit', (c) => res(c))), 0, 'stops cleanly on SIGTERM');
});

t.test('log formats: text by default, json on request; the token in neither', async (t) => {
  ensureBuilt();
  const dir = tmpDir(t, 'serve-logs');
  const tok = path.join(dir, 'token');
  fs.writeFileSync(tok, `${TOKEN}\n`, { mode: 0o600 });
  for (const format of ['default', 'text', 'json'] as const) {
    const { spawn } = await import('node:child_process');
    const args = [
      CLI,
      'serve',
      '--listen',
      '127.0.0.1:0',
      '--store',
      path.join(dir, `recv-${format}`),
      '--token-file',
      tok,
      ...(format === 'default' ? [] : ['--log-format', format]),
    ];
    const child = spawn(...plainNode(args), { stdio: ['ignore', 'pipe', 'pipe'] });
    t.teardown(() => {
      if (child.exitCode === null) child.kill('SIGKILL');
    });
    let err = '';
    child.stderr.on('data', (b) => {
      err += b;
    });
    const url = await new Promise<string>((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (b) => {
        out += b;
        const m = /listening on (ws:\/\/\S+),/.exec(out);
        if (m) resolve(m[1]);
      });
      child.on('exit', () => reject(new Error(`serve exited: ${err}`)));
    });
    // A wrong token (logged as auth-failed) and a lease taken with the right one (its fencing token is no secret).
    const wrong = remote(t, url, { token: `${TOKEN}-wrong` });
    await t.rejects(wrong.head('claims/x'), { code: 'RNODE_TRANSPORT_AUTH' });
    const rs = remote(t, url, { token: TOKEN });
    await rs.leases.acquire('d', 'holder-1', 30_000);
    await until(() => err.includes('lease'), 5000, 'the lease line');
    await rs.close();
    child.kill('SIGTERM');
    await new Promise((res) => child.on('exit', res));
    const lines = err.trim().split('\n');
    t.notOk(err.includes(TOKEN), `${format}: the token is in no log line`);
    t.ok(lines.length >= 4, `${format}: ${lines.length} lines`);
    if (format === 'json') {
      t.notMatch(err, /FATAL/, 'json: no fatal error on stopping');
      const events = lines.filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
      t.equal(events.length, lines.length, `json: every line is JSON (${lines.find((l) => !l.startsWith('{')) ?? ''})`);
      t.ok(
        events.every((e) => (e.level === 'info' || e.level === 'warn') && typeof e.time === 'string' && typeof e.msg === 'string'),
        'json: pino lines',
      );
      t.match(
        events.find((e) => e.msg === 'auth-failed'),
        { tokenGiven: true, level: 'warn' },
        'a wrong token is a warning',
      );
      t.match(
        events.find((e) => e.msg === 'lease'),
        { level: 'info' },
      );
      t.match(
        events.find((e) => e.msg === 'lease'),
        { action: 'acquire', disk: 'd', fencingToken: 1 },
      );
      t.match(
        events.find((e) => e.msg === 'stopping'),
        { signal: 'SIGTERM' },
      );
    } else {
      t.ok(
        lines.every((l) => /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z \S/.test(l) && !l.startsWith('{')),
        `${format}: a text line per event`,
      );
      t.ok(
        lines.some((l) => / auth-failed session=\S+ peer=\S+ tokenGiven=true$/.test(l)),
        `${format}: auth-failed with its fields`,
      );
      t.ok(
        lines.some((l) => / lease .*action=acquire disk=d holder=holder-1 fencingToken=1 /.test(l)),
        `${format}: the lease line`,
      );
      t.ok(
        lines.some((l) => / stopping signal=SIGTERM /.test(l)),
        `${format}: stopping`,
      );
    }
  }
});
