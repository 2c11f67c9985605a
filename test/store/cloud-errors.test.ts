// STORE_IO messages a misconfigured endpoint gives say what to do: a TLS mismatch (an https:// endpoint on a plain-HTTP
// server), an invalid URL, a timeout the SDK reported in its own words. Nothing here needs an emulator.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import t from 'tap';
import { ErrorCodes, type RnodeError } from '../../src/errors.js';
import { cloudError } from '../../src/store/common.js';
import { openStore } from '../../src/store/index.js';

const KEY = 'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==';

t.test('https:// to a plain-HTTP server: STORE_IO saying to use http:// (or https:// for TLS), on all three clouds', async (t) => {
  const server = http.createServer((_q, r) => {
    r.statusCode = 400;
    r.end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => server.close());
  const tls = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  for (const [location, env] of [
    [`s3://b/p?endpoint=${tls}&forcePathStyle=true`, { AWS_ACCESS_KEY_ID: 'x', AWS_SECRET_ACCESS_KEY: 'y' }],
    [
      'azblob://c/p',
      {
        AZURE_STORAGE_CONNECTION_STRING: `DefaultEndpointsProtocol=https;AccountName=devstoreaccount1;AccountKey=${KEY};BlobEndpoint=${tls}/devstoreaccount1;`,
      },
    ],
    ['gs://b/p', { STORAGE_EMULATOR_HOST: tls, GOOGLE_CLOUD_PROJECT: 'demo-test' }],
  ] as const) {
    const store = await openStore(location, { env, wrap: { retry: false } });
    const err = (await store.head('k').catch((e: unknown) => e)) as RnodeError;
    await store.close();
    t.equal(err?.code, ErrorCodes.STORE_IO, `${location.slice(0, 6)}: ${err?.message}`);
    t.match(err?.message, /does not speak TLS as its scheme says: use http:\/\/ for a plain-HTTP server/, 'says what to do');
  }
});

t.test('an invalid URL, an untrusted certificate and a timeout in the SDK’s words say what to do', async (t) => {
  const io = (message: string, code?: string) => cloudError('s3://b/p/', 'get', 'k', new Error(message), { code }).message;
  t.match(io('Invalid URL', 'ERR_INVALID_URL'), /the endpoint is not a valid URL: write it as http\(s\):\/\/host\[:port\]/);
  t.match(io('self-signed certificate in certificate chain', 'SELF_SIGNED_CERT_IN_CHAIN'), /certificate is not trusted: .*NODE_EXTRA_CA_CERTS/);
  t.match(io('socket hang up: operation timed out', 'Whatever'), /; check the endpoint and the network$/);
  t.notMatch(io('The specified key does not exist.', 'Odd'), /; (check|the endpoint)/, 'no hint where none applies');
});

t.test('S3 with no credentials at all names the variables to set (it said "check the credentials")', async (t) => {
  const err = cloudError('s3://b/p/', 'list', 'r2/', new Error('Could not load credentials from any providers'), {
    code: 'CredentialsProviderError',
  });
  t.equal(err.code, 'RNODE_STORE_AUTH');
  t.match(err.message, /no credentials were found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \(or AWS_PROFILE\)/);
  const denied = cloudError('s3://b/p/', 'list', 'r2/', new Error('Access Denied'), { status: 403, code: 'AccessDenied' });
  t.match(denied.message, /check the credentials and their permissions$/, 'credentials that were refused: as before');
});
