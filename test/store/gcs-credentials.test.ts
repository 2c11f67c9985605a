// Regression: a gs:// store whose credentials could not be used (GOOGLE_APPLICATION_CREDENTIALS naming a missing file,
// a folder, an unreadable file, a file that is not JSON or not a credential, a private key OpenSSL cannot read)
// failed with RNODE_STORE_IO, which the error table keeps for other failures; RNODE_STORE_AUTH is for credentials
// missing or refused, as S3's give. The JSON parser's message, which quotes the file (a key), must not be shown.
// google-auth-library reads process.env and fails before any request: nothing here needs a server.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { ErrorCodes, type RnodeError } from '../../src/errors.js';
import { gcsError } from '../../src/store/gcs/gcs-store.js';
import { openStore } from '../../src/store/index.js';
import { runCli } from '../helpers/cli.js';
import { tmpDir } from '../helpers/images.js';

const SECRET = 'SECRETKEYMATERIAL';

/** The error of one request to gs://b/p with GOOGLE_APPLICATION_CREDENTIALS set to file, in this process. */
async function headWith(file: string): Promise<RnodeError> {
  const saved = process.env.GOOGLE_APPLICATION_CREDENTIALS;
  process.env.GOOGLE_APPLICATION_CREDENTIALS = file;
  try {
    const store = await openStore('gs://b/p', { env: { GOOGLE_CLOUD_PROJECT: 'demo-test' }, wrap: { retry: false } });
    try {
      return (await store.head('k').then(
        () => undefined,
        (e: unknown) => e,
      )) as RnodeError;
    } finally {
      await store.close();
    }
  } finally {
    if (saved === undefined) delete process.env.GOOGLE_APPLICATION_CREDENTIALS;
    else process.env.GOOGLE_APPLICATION_CREDENTIALS = saved;
  }
}

t.test('credentials that cannot be used are RNODE_STORE_AUTH, saying why and what to set, with no secret', async (t) => {
  t.notOk(process.env.STORAGE_EMULATOR_HOST, 'no emulator: the client authenticates');
  const dir = tmpDir(t, 'gcs-creds');
  const write = (name: string, text: string, mode = 0o600) => {
    const f = path.join(dir, name);
    fs.writeFileSync(f, text, { mode });
    return f;
  };
  const serviceAccount = {
    type: 'service_account',
    project_id: 'demo-test',
    private_key: `-----BEGIN PRIVATE KEY-----\n${SECRET}\n-----END PRIVATE KEY-----\n`,
    client_email: 'x@demo-test.iam.gserviceaccount.com',
    token_uri: 'http://127.0.0.1:1/token',
  };
  fs.mkdirSync(path.join(dir, 'a-folder'));
  const cases: [string, string, RegExp][] = [
    ['a missing file', path.join(dir, 'missing.json'), /the file \S+missing\.json does not exist or is not a file/],
    ['a folder', path.join(dir, 'a-folder'), /the file \S+a-folder does not exist or is not a file/],
    ['not JSON', write('garbage.json', `${SECRET} {"private_key": "${SECRET}"`), /the credential file is not JSON/],
    ['JSON of no credential', write('empty.json', '{}'), /is not a credential \(.*client_email/],
    ['a private key OpenSSL cannot read', write('sa.json', JSON.stringify(serviceAccount)), /its private key cannot be used \(ERR_OSSL_/],
  ];
  // Root reads any file: the permission case runs for other users only.
  if (process.getuid?.() !== 0)
    cases.push(['an unreadable file', write('locked.json', '{}', 0o000), /the file \S+locked\.json cannot be read \(EACCES\)/]);
  for (const [what, file, why] of cases) {
    const err = await headWith(file);
    t.equal(err?.code, ErrorCodes.STORE_AUTH, `${what}: ${err?.message}`);
    t.match(err?.message, /^the Google credentials for gs:\/\/b\/p\/ cannot be used: /, `${what}: names the store`);
    t.match(err?.message, why, `${what}: says why`);
    t.match(err?.message, /set GOOGLE_APPLICATION_CREDENTIALS/, `${what}: says what to set`);
    t.notOk(err?.retryable, `${what}: not retried`);
    // JSON.parse quoted the file's first 10 characters (its key, in a file that is only a key).
    t.notMatch(`${err?.message} ${String((err?.cause as Error)?.message)}`, /SECRET/, `${what}: no part of the file in the message or cause`);
  }
});

t.test('no credentials found, and the request without them refused: STORE_AUTH; other errors map as before', async (t) => {
  const noAdc = new Error('Could not load the default credentials. Browse to https://cloud.google.com/docs/authentication/getting-started');
  t.equal(gcsError('gs://b/', 'get', 'k', noAdc, { code: 'Error' }).code, ErrorCodes.STORE_AUTH);
  const reset = Object.assign(new Error('socket hang up'), { code: 'ECONNRESET', syscall: 'read' });
  t.equal(gcsError('gs://b/', 'get', 'k', reset, { code: 'ECONNRESET' }).code, ErrorCodes.STORE_UNAVAILABLE, 'a reset stays retryable');
  t.equal(gcsError('gs://b/', 'get', 'k', new Error('odd'), { code: 'Odd' }).code, ErrorCodes.STORE_IO);
  // A socket's error may name a path too (an endpoint over a unix socket): a store failure, not the credential file.
  const socket = Object.assign(new Error('connect ECONNREFUSED /run/gcs.sock'), { syscall: 'connect', path: '/run/gcs.sock', code: 'ECONNREFUSED' });
  t.not(gcsError('gs://b/', 'get', 'k', socket, { code: 'ECONNREFUSED' }).code, ErrorCodes.STORE_AUTH, 'a socket error naming a path');
});

t.test('rnode points on a gs:// store with GOOGLE_APPLICATION_CREDENTIALS naming a missing file: STORE_AUTH, exit 1', async (t) => {
  const r = await runCli(['points', '--store', 'gs://b/p', '--disk', 'd'], {
    env: { GOOGLE_APPLICATION_CREDENTIALS: '/nonexistent/rnode-creds.json', GOOGLE_CLOUD_PROJECT: 'demo-test', STORAGE_EMULATOR_HOST: undefined },
    timeoutMs: 60_000,
  });
  t.equal(r.code, 1, `exit 1 (stderr: ${r.stderr})`);
  t.match(r.stderr, /^rnode: RNODE_STORE_AUTH: the Google credentials for gs:\/\/b\/p\/ cannot be used: the file \/nonexistent\/rnode-creds\.json/);
});
