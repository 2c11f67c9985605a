// AzureBlobStore against Azurite (Microsoft's emulator) through the conformance suite, plus staged
// block uploads. Azurite enforces If-None-Match / If-Match, so conditions are checked here for real.

import { BlobServiceClient } from '@azure/storage-blob';
import { randomBytes } from 'node:crypto';
import t from 'tap';
import { ErrorCodes } from '../../src/errors.js';
import type { AzureBlobStore } from '../../src/store/azure/azure-store.js';
import { openBackend } from '../../src/store/index.js';
import { runConformance } from './conformance.js';
import { azuriteConnectionString, startAzurite, type RunningServer } from '../../bench/lib/emulators.js';

let server: RunningServer;
let env: NodeJS.ProcessEnv;
let n = 0;

// Emulator start plus 1100-key listings on 2 shared cores: more than tap's default 30 s per file.
t.setTimeout(180_000);

t.before(async () => {
  server = await startAzurite();
  env = { AZURE_STORAGE_CONNECTION_STRING: azuriteConnectionString(server.endpoint) };
  await BlobServiceClient.fromConnectionString(env.AZURE_STORAGE_CONNECTION_STRING!).getContainerClient('rnode-test').create();
});
t.teardown(() => server?.stop());

runConformance(t, 'azure (azurite)', async () => ({
  store: await openBackend(`azblob://rnode-test/run-${++n}`, env),
  cleanup: async () => {},
}));

t.test('azure: large puts are staged as blocks and committed with their condition', async (t) => {
  const store = (await openBackend('azblob://rnode-test/blocks?singleUploadMax=1048576&blockSize=1048576', env)) as AzureBlobStore;
  t.teardown(() => store.close());
  const data = randomBytes(3 * 1024 * 1024 + 5);
  const info = await store.put('big', data, { ifNoneMatch: true });
  const blocks = await store.container.getBlockBlobClient('blocks/big').getBlockList('committed');
  t.equal(blocks.committedBlocks?.length, 4, 'committed as 4 blocks');
  t.ok((await store.get('big')).equals(data));
  t.ok((await store.get('big', { offset: 1048570, length: 12 })).equals(data.subarray(1048570, 1048582)));
  await t.rejects(store.put('big', data, { ifNoneMatch: true }), { code: ErrorCodes.STORE_PRECONDITION });
  const v2 = await store.put('big', data.subarray(1), { ifMatch: info.etag });
  await t.rejects(store.put('big', data, { ifMatch: info.etag }), { code: ErrorCodes.STORE_PRECONDITION });
  t.equal((await store.head('big')).etag, v2.etag);
});

t.test('azure: errors map to STORE_* codes', async (t) => {
  const missing = await openBackend('azblob://no-such-container/x', env);
  await t.rejects(missing.get('k'), { code: ErrorCodes.STORE_IO, message: /does not exist/ }, 'a missing container is not a missing key');
  await t.rejects(openBackend('azblob://c/x', {}), { code: ErrorCodes.STORE_AUTH, message: /AZURE_STORAGE_CONNECTION_STRING/ });
  const dead = await openBackend('azblob://c/x', { AZURE_STORAGE_CONNECTION_STRING: azuriteConnectionString('http://127.0.0.1:1') });
  await t.rejects(dead.head('k'), { code: ErrorCodes.STORE_UNAVAILABLE, retryable: true }, 'connection refused is retryable');
  // Azure's messages put RequestId and Time on lines of their own: the error stays one line, the ids kept.
  const wrongKey = env.AZURE_STORAGE_CONNECTION_STRING!.replace(/AccountKey=[^;]+/, `AccountKey=${randomBytes(64).toString('base64')}`);
  const denied = await openBackend('azblob://rnode-test/x', { AZURE_STORAGE_CONNECTION_STRING: wrongKey });
  const err = (await denied.get('k').catch((e: Error) => e)) as Error & { code?: string };
  t.equal(err.code, ErrorCodes.STORE_AUTH, err.message);
  t.notMatch(err.message, /[\r\n]/, 'one line');
  t.match(err.message, /; RequestId:\S+; Time:/, 'the request id is still there');
});
