// What the cloud store URLs (s3://, azblob://, gs://) refuse up front with RNODE_BAD_STORE_URL, before any request:
// nothing here needs a server.
import t from 'tap';
import { ErrorCodes, RnodeError } from '../../src/errors.js';
import { openBackend } from '../../src/store/index.js';
import type { S3Store } from '../../src/store/s3/s3-store.js';

const env: NodeJS.ProcessEnv = {
  AWS_ACCESS_KEY_ID: 'x',
  AWS_SECRET_ACCESS_KEY: 'y',
  AZURE_STORAGE_CONNECTION_STRING:
    'DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;' +
    'AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;' +
    'BlobEndpoint=http://127.0.0.1:1/devstoreaccount1;',
  STORAGE_EMULATOR_HOST: 'http://127.0.0.1:1',
  GOOGLE_CLOUD_PROJECT: 'demo-test',
};

async function refused(location: string, env_: NodeJS.ProcessEnv = env): Promise<RnodeError | undefined> {
  const r = await openBackend(location, env_).then(
    async (s) => {
      await s.close();
      return undefined;
    },
    (e: unknown) => e as RnodeError,
  );
  return r;
}

t.test("'.' and '..' path segments are refused, not resolved (the store would be elsewhere than the URL says)", async (t) => {
  for (const scheme of ['s3', 'azblob', 'gs']) {
    for (const path of ['..', '.', 'a/../b', 'a/./b', 'a/..', 'a/%2e%2e/b', 'a/%2E/b', './a']) {
      const location = `${scheme}://rnb/${path}${scheme === 's3' ? '?forcePathStyle=true' : ''}`;
      const err = await refused(location);
      t.equal(err?.code, ErrorCodes.BAD_STORE_URL, `${location}: ${err?.message}`);
      t.match(err?.message, /'\.' or '\.\.' segment/, `${location}: says why`);
    }
    for (const path of ['a/b', 'a..b/c', '.x/y', 'a/...']) {
      const location = `${scheme}://rnb/${path}`;
      t.equal(await refused(location), undefined, `${location}: taken`);
    }
  }
});

t.test('a prefix no key can start with is a mistake in the URL (RNODE_BAD_STORE_URL), not a bug (RNODE_INTERNAL)', async (t) => {
  for (const scheme of ['s3', 'azblob', 'gs']) {
    for (const path of ['a//b', 'a%00b', 'a\\b', 'a%2F%2Fb', 'a%ZZ']) {
      const location = `${scheme}://rnb/${path}`;
      const err = await refused(location);
      t.equal(err?.code, ErrorCodes.BAD_STORE_URL, `${location}: ${err?.message}`);
      t.match(err?.message, /cannot be used: write it without|malformed %-escape/, `${location}: says what to fix`);
    }
  }
});

t.test('an Azure connection string the SDK cannot read is RNODE_STORE_AUTH, naming neither key nor signature', async (t) => {
  for (const cs of [
    'AccountName=devstoreaccount1;AccountKey=SECRETKEY123==;garbage',
    'DefaultEndpointsProtocol=ftp;AccountName=a;AccountKey=SECRETKEY123==',
    'BlobEndpoint=http://127.0.0.1:1/a;SharedAccessSignature=',
    'garbage',
  ]) {
    const err = await refused('azblob://c/p', { AZURE_STORAGE_CONNECTION_STRING: cs });
    t.equal(err?.code, ErrorCodes.STORE_AUTH, `${cs}: ${err?.message}`);
    t.match(err?.message, /AZURE_STORAGE_CONNECTION_STRING cannot be used for azblob:\/\/c .*; set it to the connection string/, 'says what to set');
    t.notMatch(`${err?.message} ${String((err?.cause as Error)?.message)}`, /SECRETKEY123/, 'the key is not in the message');
  }
  const err = await refused('azblob://c/p', { AZURE_STORAGE_ACCOUNT_URL: 'not a url', AZURE_STORAGE_SAS_TOKEN: 'sv=1&sig=SECRETSIG' });
  t.equal(err?.code, ErrorCodes.STORE_AUTH, `a bad account URL: ${err?.message}`);
  t.match(err?.message, /set AZURE_STORAGE_ACCOUNT_URL to https:/, 'says what to set');
  t.notMatch(err?.message, /SECRETSIG/, 'the signature is not in the message');
});

t.test("credentials in a cloud store URL are refused (they were ignored for the environment's), and not echoed", async (t) => {
  for (const location of [
    's3://AK:SECRETPW@rnb/p?forcePathStyle=true',
    's3://AK@rnb/p',
    'azblob://u:SECRETPW@c/p',
    'gs://u:SECRETPW@b/p',
    's3://AK:SECRET/PW@rnb/p', // a '/' in the secret makes the URL unparseable: still not echoed
  ]) {
    const err = await refused(location);
    t.equal(err?.code, ErrorCodes.BAD_STORE_URL, `${location.replace(/SECRET\/?PW/, '...')}: ${err?.message}`);
    t.notMatch(err?.message, /SECRET|PW@|AK:/, 'the secret is not in the message');
    t.notMatch(JSON.stringify(err?.details), /SECRET|AK:/, 'nor in the details');
  }
  t.match((await refused('s3://AK:SECRETPW@rnb/p'))?.message, /carries credentials .*give them in the environment/, 'says what to do');
  // In the S3 endpoint (URL parameter or variable) they were taken, and the URL's stood in process listings.
  for (const [location, env_] of [
    ['s3://rnb/p?endpoint=http://AK:SECRETPW@127.0.0.1:19001&forcePathStyle=true', env],
    ['s3://rnb/p', { ...env, AWS_ENDPOINT_URL: 'http://AK:SECRETPW@127.0.0.1:19001' }],
  ] as const) {
    const err = await refused(location, env_);
    t.equal(err?.code, ErrorCodes.BAD_STORE_URL, `endpoint with credentials: ${err?.message}`);
    t.match(err?.message, /carries credentials \(user:password@\); remove them and give them in the environment/);
    t.notMatch(`${err?.message} ${JSON.stringify(err?.details)}`, /SECRET|AK:/, 'not echoed');
  }
  // Signed-URL parameters by any name: X-Amz-Signature, X-Goog-Credential, X-Amz-Security-Token (only sig=, token=...
  // and names starting so were masked).
  for (const location of ['s3://b/p?X-Amz-Signature=SECRETSIG', 'gs://b/p?X-Goog-Credential=SECRETCRED', 's3://b/p?X-Amz-Security-Token=SECRETTOK']) {
    const err = await refused(location, env);
    t.notMatch(`${err?.message} ${JSON.stringify(err?.details)}`, /SECRET/, `${location.replace(/=SECRET.*/, '=...')}: not echoed`);
  }
  // The GCS emulator's address heads every request's URL, which the SDK's errors quote (every error, log and report).
  for (const host of [
    'http://u:SECRETPW@127.0.0.1:1',
    'u:SECRETPW@127.0.0.1:1',
    'http://127.0.0.1:1/?sig=SECRETSIG',
    'http://127.0.0.1:1/#SECRETFRAG',
  ]) {
    const err = await refused('gs://b/p', { ...env, STORAGE_EMULATOR_HOST: host });
    t.equal(err?.code, ErrorCodes.BAD_STORE_URL, `STORAGE_EMULATOR_HOST ${host.replace(/SECRET[A-Z]*/, '...')}: ${err?.message}`);
    t.notMatch(`${err?.message} ${JSON.stringify(err?.details)}`, /SECRET/, 'not echoed');
  }
  const { openOutput } = await import('../../src/output/index.js');
  const out = await openOutput('s3://AK:SECRET/PW@rnb/k.raw', { diskSize: 1, env }).catch((e: Error) => e);
  t.notMatch((out as Error).message, /SECRET/, '--out: an unparseable URL with credentials is not echoed either');
});

t.test('flag parameters take on|off|true|false|1|0|yes|no and refuse anything else, naming the parameter', async (t) => {
  for (const location of [
    's3://rnb/p?conditional=of',
    'azblob://c/p?conditional=maybe',
    'gs://b/p?conditional=',
    's3://rnb/p?forcePathStyle=ja',
    'file:///tmp/x?fsync=of',
  ]) {
    const err = await refused(location);
    t.equal(err?.code, ErrorCodes.BAD_STORE_URL, `${location}: ${err?.message}`);
    t.match(err?.message, /parameter (conditional|forcePathStyle|fsync)=\S* must be on or off/, 'names the parameter');
  }
  for (const [v, want] of [
    ['yes', true],
    ['ON', true],
    ['1', true],
    ['true', true],
    ['no', false],
    ['0', false],
    ['Off', false],
  ] as const) {
    const store = await openBackend(`s3://rnb/p?conditional=${v}&forcePathStyle=${v}`, env);
    t.equal(store.capabilities.conditionalPut, want, `conditional=${v}`);
    t.equal(await (store as S3Store).client.config.forcePathStyle, want ? true : false, `forcePathStyle=${v}`);
    await store.close();
  }
});

t.test('an S3 endpoint without its scheme is refused up front (it failed at the first request as ERR_INVALID_URL)', async (t) => {
  for (const [location, env_] of [
    ['s3://rnb/p?endpoint=127.0.0.1:19001', env],
    ['s3://rnb/p?endpoint=localhost:9000', env],
    ['s3://rnb/p', { ...env, AWS_ENDPOINT_URL: 's3.example.com' }],
  ] as const) {
    const err = await refused(location, env_);
    t.equal(err?.code, ErrorCodes.BAD_STORE_URL, `${location}: ${err?.message}`);
    t.match(err?.message, /is not an http\(s\) URL; write it with its scheme/, 'says what to write');
  }
  t.equal(await refused('s3://rnb/p?endpoint=http://127.0.0.1:19001'), undefined, 'with its scheme: taken');
});

// AWS_REGION= (or ?region=) with AWS_DEFAULT_REGION set failed every s3:// store and --out with RNODE_INTERNAL "Region
// is missing": `??` took the empty value instead of going on down the documented order (docs/stores.md).
t.test('an empty URL parameter or variable counts as unset: the next in the fallback order is used', async (t) => {
  const { s3ClientConfig } = await import('../../src/store/s3/s3-store.js');
  const { gcsStorage } = await import('../../src/store/gcs/gcs-store.js');
  const regionEnv = { ...env, AWS_REGION: '', AWS_DEFAULT_REGION: 'eu-west-1' };
  for (const location of ['s3://rnb/p?forcePathStyle=true', 's3://rnb/p?region=&forcePathStyle=true']) {
    const store = (await openBackend(location, regionEnv)) as S3Store;
    t.equal(await store.client.config.region(), 'eu-west-1', `${location}: the store takes AWS_DEFAULT_REGION`);
    await store.close();
    t.equal(s3ClientConfig(new URL(location), regionEnv).region, 'eu-west-1', `${location}: so does --out`);
  }
  t.equal(s3ClientConfig(new URL('s3://rnb/p?region='), { AWS_REGION: 'eu-west-2' }).region, 'eu-west-2', '?region= then AWS_REGION');
  t.equal(s3ClientConfig(new URL('s3://rnb/p'), { AWS_REGION: '', AWS_DEFAULT_REGION: '' }).region, 'us-east-1', 'all empty: us-east-1');
  const endpointEnv = { AWS_ENDPOINT_URL_S3: '', AWS_ENDPOINT_URL: 'http://127.0.0.1:19001' };
  t.equal(s3ClientConfig(new URL('s3://rnb/p?endpoint='), endpointEnv).endpoint, 'http://127.0.0.1:19001', 'endpoint: AWS_ENDPOINT_URL');
  const credentials = s3ClientConfig(new URL('s3://rnb/p'), { ...env, AWS_SESSION_TOKEN: '' }).credentials as { sessionToken?: string };
  t.equal(credentials.sessionToken, undefined, 'AWS_SESSION_TOKEN=: no session token');
  const gcs = gcsStorage(new URL('gs://b/p?project='), { GOOGLE_CLOUD_PROJECT: '', GCLOUD_PROJECT: 'demo-fallback' });
  t.equal(gcs.projectId, 'demo-fallback', 'gs://: GCLOUD_PROJECT');
});

// AZURE_STORAGE_ACCOUNT_URL= (empty) hid AZURE_STORAGE_ACCOUNT + AZURE_STORAGE_KEY: "no Azure credentials ... set
// AZURE_STORAGE_ACCOUNT with AZURE_STORAGE_KEY", though both were set.
t.test('an empty AZURE_STORAGE_ACCOUNT_URL counts as unset: the account name and key are used', async (t) => {
  const { azureServiceClient } = await import('../../src/store/azure/azure-store.js');
  const azureEnv = { AZURE_STORAGE_ACCOUNT_URL: '', AZURE_STORAGE_ACCOUNT: 'acct', AZURE_STORAGE_KEY: Buffer.from('k').toString('base64') };
  const client = azureServiceClient(new URL('azblob://c/p'), azureEnv);
  t.equal(client.url.replace(/\/$/, ''), 'https://acct.blob.core.windows.net', 'the URL of AZURE_STORAGE_ACCOUNT');
  t.equal(await refused('azblob://c/p', azureEnv), undefined, 'the store opens');
  const sas = azureServiceClient(new URL('azblob://c/p'), {
    AZURE_STORAGE_ACCOUNT_URL: '',
    AZURE_STORAGE_ACCOUNT: 'acct',
    AZURE_STORAGE_SAS_TOKEN: 'sv=1&sig=x',
  });
  t.match(sas.url, /^https:\/\/acct\.blob\.core\.windows\.net\/?\?sv=1/, 'with a SAS token too');
});
