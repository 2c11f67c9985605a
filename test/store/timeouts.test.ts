// A cloud endpoint that accepts connections and never answers: every backend's requests time out (?requestTimeoutMs=),
// the retry wrapper retries them as STORE_UNAVAILABLE, and a job ends in bounded time. S3 only warned at its
// timeout and Azure had none, so both hung forever; GCS failed once as STORE_IO.
import net from 'node:net';
import t, { type Test } from 'tap';
import { ErrorCodes, RnodeError } from '../../src/errors.js';
import { openStore, type ObjectStore } from '../../src/store/index.js';
import { requestSignal } from '../../src/store/azure/azure-store.js';
import { runCli } from '../helpers/cli.js';

t.setTimeout(60_000);

const KEY = 'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==';
let server: net.Server;
let endpoint: string;
let connections = 0;

t.before(async () => {
  server = net.createServer((s) => {
    connections++;
    s.on('data', () => {});
    s.on('error', () => {});
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  endpoint = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
});
t.teardown(() => {
  server.closeAllConnections?.();
  server.close();
});

/** A server whose open connections close() ends too (net.Server waits for them). */
function closing(server: net.Server): () => void {
  const sockets = new Set<net.Socket>();
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  return () => {
    for (const s of sockets) s.destroy();
    server.close();
  };
}

const clouds = () => [
  {
    name: 's3',
    location: `s3://b/p?endpoint=${endpoint}&forcePathStyle=true&requestTimeoutMs=300`,
    env: { AWS_ACCESS_KEY_ID: 'x', AWS_SECRET_ACCESS_KEY: 'y' },
  },
  {
    name: 'azblob',
    location: 'azblob://c/p?requestTimeoutMs=300',
    env: {
      AZURE_STORAGE_CONNECTION_STRING: `DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=${KEY};BlobEndpoint=${endpoint}/devstoreaccount1;`,
    },
  },
  { name: 'gs', location: 'gs://b/p?requestTimeoutMs=300', env: { STORAGE_EMULATOR_HOST: endpoint, GOOGLE_CLOUD_PROJECT: 'demo-test' } },
];

t.test('every call of every cloud backend times out as retryable STORE_UNAVAILABLE and is retried', async (t) => {
  const before = connections;
  const calls = clouds().flatMap((c) =>
    (['head', 'get', 'put', 'list', 'delete'] as const).map(async (op) => {
      let retries = 0;
      const store = await openStore(c.location, { env: c.env, wrap: { retry: { attempts: 2, baseDelayMs: 1, onRetry: () => retries++ } } });
      const started = Date.now();
      const call =
        op === 'list'
          ? (async () => {
              for await (const _ of store.list('x/')) void _;
            })()
          : op === 'put'
            ? store.put('k', Buffer.from('data'))
            : store[op]('k');
      const err = (await call.then(
        () => undefined,
        (e: unknown) => e,
      )) as RnodeError | undefined;
      await store.close();
      return { what: `${c.name} ${op}`, name: c.name, err, retries, ms: Date.now() - started };
    }),
  );
  for (const { what, name, err, retries, ms } of await Promise.all(calls)) {
    t.equal(err?.code, ErrorCodes.STORE_UNAVAILABLE, `${what}: ${err?.message}`);
    t.equal(err?.retryable, true, `${what}: retryable`);
    t.match(err?.message, /got no answer within 300 ms; check the endpoint and the network/, `${what}: says what to check`);
    t.match(err?.message, `${name}://`, `${what}: names the store`);
    t.equal(retries, 1, `${what}: retried by the wrapper`);
    t.ok(ms < 10_000, `${what}: ended in bounded time (${ms} ms)`);
  }
  t.ok(connections - before >= 2 * calls.length, 'every attempt reached the server');
});

t.test('rnode points on an endpoint that never answers ends with RNODE_STORE_UNAVAILABLE on all three clouds', async (t) => {
  const results = await Promise.all(
    clouds().map((c) => runCli(['points', '--store', c.location, '--disk', 'd1'], { env: c.env, timeoutMs: 40_000 }).then((r) => ({ c, r }))),
  );
  for (const { c, r } of results) {
    t.equal(r.signal, null, `${c.name}: ended by itself`);
    t.equal(r.code, 1, `${c.name}: exit 1`);
    t.match(r.stderr, /RNODE_STORE_UNAVAILABLE: .* got no answer within 300 ms; check the endpoint and the network/, `${c.name}: ${r.stderr}`);
    t.notMatch(r.stderr, /requestTimeout\. Init client/, `${c.name}: no SDK warning instead of an error`);
  }
});

t.test('an Azure request that moves a body gets time for it on a slow link (a deadline, not an idle timer)', async (t) => {
  const plain = requestSignal(100);
  const upload = requestSignal(100, 64 * 2000); // 128 KiB at the 64 KiB/s floor: 2 s more
  await new Promise((r) => setTimeout(r, 400));
  t.equal(plain.aborted, true, 'no body: the plain timeout');
  t.equal(upload.aborted, false, 'a 128 KiB body: still running after 0.4 s');
});

/** Listens `server` (closed at the end of t) and opens each cloud's store on it: a 1 s request timeout, one attempt. */
async function storesOn(t: Test, server: net.Server): Promise<Array<{ name: string; store: ObjectStore }>> {
  t.teardown(closing(server));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const at = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
  return Promise.all(
    clouds().map(async (c) => {
      const location = c.location.replaceAll(endpoint, at).replace('requestTimeoutMs=300', 'requestTimeoutMs=1000');
      const env = Object.fromEntries(Object.entries(c.env).map(([k, v]) => [k, v.replaceAll(endpoint, at)]));
      return { name: c.name, store: await openStore(location, { env, wrap: { retry: { attempts: 1, baseDelayMs: 1 } } }) };
    }),
  );
}

t.test('a download whose body stops coming fails as retryable STORE_UNAVAILABLE on every cloud (GCS waited forever)', async (t) => {
  // Headers and the first bytes of a 100,000-byte answer, then nothing.
  const stalling = net.createServer((s) => {
    s.on('error', () => {});
    s.once('data', () =>
      s.write(
        'HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\nETag: "1"\r\n' +
          'x-goog-generation: 1\r\nLast-Modified: Mon, 01 Jan 2024 00:00:00 GMT\r\n\r\n0123456789',
      ),
    );
  });
  for (const c of await storesOn(t, stalling)) {
    const { store } = c;
    const started = Date.now();
    const outcome = await Promise.race([
      store.get('k').then(
        () => 'resolved',
        (e: RnodeError) => e,
      ),
      new Promise<string>((r) => setTimeout(() => r('still waiting after 8 s'), 8000).unref()),
    ]);
    await store.close();
    t.equal((outcome as RnodeError).code, ErrorCodes.STORE_UNAVAILABLE, `${c.name}: ${String((outcome as Error).message ?? outcome)}`);
    t.equal((outcome as RnodeError).retryable, true, `${c.name}: retryable`);
    t.ok(Date.now() - started < 5000, `${c.name}: within the timeout, not at the end of the test (${Date.now() - started} ms)`);
  }
});

t.test('a download that keeps coming on a slow link is not cut at the timeout on any cloud (Azure cut whole objects)', async (t) => {
  // 100,000 bytes in 12,500-byte pieces every 250 ms: about 1.75 s in all, against a 1 s timeout. (Not 300 ms: the
  // server shares this process, and after a stall longer than the timeout Node runs the due timer before it reads
  // the bytes already waiting, which a busy CI machine did.)
  const body = Buffer.alloc(100_000, 'r');
  const dribbling = net.createServer((s) => {
    s.on('error', () => {});
    s.once('data', () => {
      s.write(
        `HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: ${body.length}\r\nETag: "1"\r\n` +
          'x-goog-generation: 1\r\nLast-Modified: Mon, 01 Jan 2024 00:00:00 GMT\r\n\r\n',
      );
      let at = 0;
      const next = () => {
        if (s.destroyed || at >= body.length) return;
        s.write(body.subarray(at, (at += 12_500)));
        setTimeout(next, 250);
      };
      next();
    });
  });
  for (const c of await storesOn(t, dribbling)) {
    const { store } = c;
    const started = Date.now();
    const got = await store.get('k').then(
      (b) => b,
      (e: Error) => e,
    );
    await store.close();
    t.ok(Buffer.isBuffer(got) && got.equals(body), `${c.name}: the whole body (${got instanceof Error ? got.message : got.length})`);
    t.ok(Date.now() - started > 1200, `${c.name}: it took longer than the timeout (${Date.now() - started} ms)`);
  }
});

t.test('a listing whose body is cut or stops coming fails as retryable STORE_UNAVAILABLE on every cloud (Azure: STORE_IO at once)', async (t) => {
  for (const mode of ['cut', 'stall'] as const) {
    // Headers and the first bytes of a listing's answer, then the connection goes (cut) or nothing more comes (stall).
    const partial = net.createServer((s) => {
      s.on('error', () => {});
      s.once('data', () => {
        s.write(
          'HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: 100000\r\nx-ms-version: 2021-12-02\r\n\r\n' +
            '<?xml version="1.0" encoding="utf-8"?><EnumerationResults><Blobs><Blob><Name>x/',
        );
        if (mode === 'cut') setTimeout(() => s.destroy(), 50);
      });
    });
    for (const c of await storesOn(t, partial)) {
      const { store } = c;
      const outcome = await (async () => {
        for await (const _ of store.list('x/')) void _;
      })().then(
        () => 'resolved',
        (e: RnodeError) => e,
      );
      await store.close();
      t.equal((outcome as RnodeError).code, ErrorCodes.STORE_UNAVAILABLE, `${c.name}, ${mode}: ${String((outcome as Error).message ?? outcome)}`);
      t.equal((outcome as RnodeError).retryable, true, `${c.name}, ${mode}: retryable`);
    }
  }
});
