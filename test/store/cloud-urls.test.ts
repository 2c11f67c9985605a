// What the cloud store URLs (s3://, azblob://, gs://) refuse up front with RNODE_BAD_STORE_URL, before any request:
// nothing here needs a server.
import t from 'tap';
import { ErrorCodes, RnodeError } from '../../src/errors.js';
import { openBackend } from '../../src/store/index.js';

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
