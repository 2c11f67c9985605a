// Regression: `recover --out azblob://...` without usable Azure credentials (none set, or a connection string the SDK
// cannot read) failed with RNODE_STORE_AUTH, which says the credentials of the store being read are wrong, when the
// store was a local folder. The output's client was made outside the mapping its requests go through; now its
// credential errors are RNODE_OUTPUT_IO as every other failure of an output is (docs/cloud-disks.md), the store's
// code kept in details.storeCode. Nothing here needs an emulator: the client refuses before any request.
import path from 'node:path';
import t from 'tap';
import { ErrorCodes, type RnodeError } from '../../src/errors.js';
import { openOutput } from '../../src/output/index.js';
import { runCli } from '../helpers/cli.js';
import { randomPoints } from '../helpers/images.js';

const SECRET = 'SECRETKEY123==';

t.test('azblob:// --out: missing or unreadable credentials are OUTPUT_IO, naming no key', async (t) => {
  const cases: [string, NodeJS.ProcessEnv][] = [
    ['no credentials', {}],
    ['a garbage connection string', { AZURE_STORAGE_CONNECTION_STRING: `garbage;AccountKey=${SECRET}` }],
    ['an account URL that is not a URL', { AZURE_STORAGE_ACCOUNT_URL: 'not a url', AZURE_STORAGE_SAS_TOKEN: `sv=1&sig=${SECRET}` }],
  ];
  for (const [what, env] of cases) {
    const err = (await openOutput('azblob://disks/vm.vhd', { diskSize: 1024 * 1024, env }).catch((e: unknown) => e)) as RnodeError;
    t.equal(err?.code, ErrorCodes.OUTPUT_IO, `${what}: ${err?.message}`);
    t.equal(err?.details?.storeCode, ErrorCodes.STORE_AUTH, `${what}: what the store mapping made of it is kept`);
    t.match(err?.message, /AZURE_STORAGE_/, `${what}: names the variables to set`);
    t.notMatch(`${err?.message} ${String((err?.cause as Error)?.message)}`, SECRET, `${what}: the secret is not in the message`);
  }
});

t.test('rnode recover from a local store to a cloud --out whose credentials cannot be used: OUTPUT_IO, exit 1', async (t) => {
  const f = randomPoints(t, 'cloud-out-creds');
  await f.point('vm', 9, 128 * 1024);
  const { dir, storeDir: store } = f;
  const recoverTo = async (out: string, env: Record<string, string | undefined>) => {
    const r = await runCli(['recover', '--store', store, '--disk', 'vm', '--out', out, '--json'], { env, timeoutMs: 60_000 });
    t.equal(r.code, 1, `${out}: exit 1 (stderr: ${r.stderr})`);
    t.notMatch(r.stdout + r.stderr, SECRET, `${out}: no secret printed`);
    return (JSON.parse(r.stdout) as { error: { code: string; message: string; storeCode?: string } }).error;
  };

  const azure = await recoverTo('azblob://disks/vm.vhd', { AZURE_STORAGE_CONNECTION_STRING: `garbage;AccountKey=${SECRET}` });
  t.equal(azure.code, 'RNODE_OUTPUT_IO', azure.message);

  // The credential file is read when the upload starts: the same OUTPUT_IO, which the store mapping made STORE_AUTH.
  const gcs = await recoverTo('gs://b/vm.tar.gz', {
    GOOGLE_APPLICATION_CREDENTIALS: path.join(dir, 'missing.json'),
    STORAGE_EMULATOR_HOST: undefined,
  });
  t.equal(gcs.code, 'RNODE_OUTPUT_IO', gcs.message);
  t.equal(gcs.storeCode, 'RNODE_STORE_AUTH', 'a credentials problem, not another failure');
  t.match(gcs.message, /the Google credentials for gs:\/\/b cannot be used: the file \S+missing\.json does not exist/);
});
