// GcsStore against firebase-tools' storage emulator through the conformance suite. The emulator does
// not enforce ifGenerationMatch, so the store is opened with conditional=off (real GCS enforces it).

import t from 'tap';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { ErrorCodes } from '../../src/errors.js';
import { collect, openBackend } from '../../src/store/index.js';
import { runConformance } from './conformance.js';
import { GCS_PROJECT, startGcsEmulator, type RunningServer } from '../../bench/lib/emulators.js';

let server: RunningServer;
let env: NodeJS.ProcessEnv;
let n = 0;

// Emulator start plus 1100-key listings on 2 shared cores: more than tap's default 30 s per file.
t.setTimeout(180_000);

t.before(async () => {
  server = await startGcsEmulator();
  env = { STORAGE_EMULATOR_HOST: server.endpoint, GOOGLE_CLOUD_PROJECT: GCS_PROJECT };
});
t.teardown(() => server?.stop());

runConformance(t, 'gcs (firebase emulator)', async () => ({
  store: await openBackend(`gs://rnode-test/run-${++n}?conditional=off`, env),
  cleanup: async () => {},
}));

t.test('gcs: etag is the generation and changes on each put', async (t) => {
  const store = await openBackend('gs://rnode-test/gen?conditional=off', env);
  const a = await store.put('k', Buffer.from('x'));
  const b = await store.put('k', Buffer.from('x'));
  t.match(a.etag, /^\d+$/);
  t.not(a.etag, b.etag);
  t.same(
    (await collect(store.list(''))).map((i) => i.etag),
    [b.etag],
    'list gives the generation too',
  );
  await t.rejects(store.put('k', Buffer.from('y'), { ifMatch: 'not-a-generation' }), { code: ErrorCodes.STORE_PRECONDITION });
});

t.test('gcs: the emulator really does not enforce ifGenerationMatch (keep conditional=off honest)', async (t) => {
  const store = await openBackend('gs://rnode-test/cond', env);
  t.equal(store.capabilities.conditionalPut, true, 'default: real GCS enforces conditions');
  await store.put('k', Buffer.from('1'), { ifNoneMatch: true });
  const second = await store.put('k', Buffer.from('2'), { ifNoneMatch: true }).then(
    () => 'written',
    (e) => e.code,
  );
  t.equal(second, 'written', 'if this fails, the emulator now enforces conditions: drop conditional=off');
});

t.test('gcs: errors map to STORE_* codes', async (t) => {
  const dead = await openBackend('gs://rnode-test/x', { STORAGE_EMULATOR_HOST: '127.0.0.1:1', GOOGLE_CLOUD_PROJECT: 'demo-test' });
  await t.rejects(dead.head('k'), { code: ErrorCodes.STORE_UNAVAILABLE, retryable: true }, 'connection refused is retryable');
  await t.rejects(openBackend('gs:///x', env), { code: ErrorCodes.BAD_STORE_URL });
});

t.test('gcs: STORAGE_EMULATOR_HOST as host:port in the process environment, as a shell sets it', async (t) => {
  // The SDK reads that variable itself too: without a scheme, every request failed with a TypeError.
  const saved = process.env.STORAGE_EMULATOR_HOST;
  t.teardown(() => {
    if (saved === undefined) delete process.env.STORAGE_EMULATOR_HOST;
    else process.env.STORAGE_EMULATOR_HOST = saved;
  });
  const hostPort = server.endpoint.replace(/^https?:\/\//, '');
  process.env.STORAGE_EMULATOR_HOST = hostPort;
  const store = await openBackend('gs://rnode-test/host-port?conditional=off', { ...env, STORAGE_EMULATOR_HOST: hostPort });
  await store.put('k', Buffer.from('through host:port'));
  t.equal(String(await store.get('k')), 'through host:port');
});

t.test('gcs emulator: its blobs stay in its own folder, removed on stop (they piled up in the shared /tmp)', async (t) => {
  const own = await startGcsEmulator();
  const shared = path.join(os.tmpdir(), 'firebase', 'storage', 'blobs');
  const before = fs.existsSync(shared) ? fs.readdirSync(shared).length : 0;
  const store = await openBackend('gs://rnode-test/blobs?conditional=off', {
    STORAGE_EMULATOR_HOST: own.endpoint,
    GOOGLE_CLOUD_PROJECT: GCS_PROJECT,
  });
  for (let i = 0; i < 5; i++) await store.put(`k${i}`, Buffer.alloc(1024, i));
  const kept = path.join(own.dir, 'firebase', 'storage', 'blobs');
  t.ok(fs.existsSync(kept) && fs.readdirSync(kept).length >= 5, 'the blobs are under the server folder');
  await own.stop();
  t.notOk(fs.existsSync(own.dir), 'and go with it');
  t.equal(fs.existsSync(shared) ? fs.readdirSync(shared).length : 0, before, 'none in the shared temp folder');
});

t.test('gcs: an upload on a slow link gets time in proportion to its body (the timeout alone cut it, forever)', async (t) => {
  // A link that carries the client's bytes at ~256 KiB/s, in front of the emulator.
  const emulator = new URL(server.endpoint);
  const proxy = net.createServer((client) => {
    const upstream = net.connect(Number(emulator.port), emulator.hostname);
    client.on('data', (b: Buffer) => {
      client.pause();
      upstream.write(b, () => setTimeout(() => client.resume(), Math.ceil(b.length / 256)));
    });
    upstream.pipe(client);
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
    client.on('close', () => upstream.destroy());
  });
  await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => new Promise<void>((r) => proxy.close(() => r())));
  const slowEnv = { ...env, STORAGE_EMULATOR_HOST: `http://127.0.0.1:${(proxy.address() as net.AddressInfo).port}` };
  const store = await openBackend('gs://rnode-test/slow-link?conditional=off&requestTimeoutMs=400', slowEnv);
  const data = Buffer.alloc(512 * 1024, 7);
  const started = Date.now();
  await store.put('pack', data);
  t.ok(Date.now() - started > 1000, `the upload took longer than its 400 ms timeout (${Date.now() - started} ms)`);
  t.ok((await store.get('pack')).equals(data), 'stored whole');
});
