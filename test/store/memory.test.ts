// MemoryStore against the conformance suite, bare and through openStore's wrappers, plus the
// registry's scheme handling (mem:// names, unknown schemes, registered schemes).

import t from 'tap';
import { ErrorCodes } from '../../src/errors.js';
import { openStore, registerStoreScheme } from '../../src/store/index.js';
import { MemoryStore } from '../../src/testing.js';
import { runConformance } from './conformance.js';

runConformance(t, 'memory', async () => ({ store: new MemoryStore(), cleanup: async () => {} }));

let n = 0;
runConformance(t, 'memory via openStore (retry, limit, metrics wrappers)', async () => ({
  store: await openStore(`mem://conformance-${++n}`, { wrap: { concurrency: 4 } }),
  cleanup: async () => {},
}));

t.test('registry', async (t) => {
  const a = await openStore('mem://shared');
  await a.put('k', Buffer.from('v'));
  const b = await openStore('mem://shared');
  t.equal((await b.get('k')).toString(), 'v', 'same mem:// name, same store');
  await t.rejects((await openStore('mem://other')).get('k'), { code: ErrorCodes.STORE_NOT_FOUND });

  await t.rejects(openStore('ftp://host/x'), { code: ErrorCodes.BAD_STORE_URL, message: /s3:\/\/bucket/ });
  await t.rejects(openStore(''), { code: ErrorCodes.BAD_STORE_URL });
  await t.rejects(openStore('file://remote-host/x'), { code: ErrorCodes.BAD_STORE_URL });
  // A misspelt option is refused, naming it and what the scheme takes, before any client is made.
  await t.rejects(openStore('s3://b/p?forcepathstyle=true'), {
    code: ErrorCodes.BAD_STORE_URL,
    message: /"forcepathstyle".*forcePathStyle/,
  });
  await t.rejects(openStore('azblob://c/p?blocksize=5'), { code: ErrorCodes.BAD_STORE_URL, message: /"blocksize".*blockSize/ });
  await t.rejects(openStore('gs://b/p?projectId=x'), { code: ErrorCodes.BAD_STORE_URL, message: /"projectId".*project/ });
  await t.rejects(openStore('file:///tmp/x?fsnyc=off'), { code: ErrorCodes.BAD_STORE_URL, message: /"fsnyc"/ });

  registerStoreScheme('test-remote', async (url) => new MemoryStore(`test-remote://${url.host}`));
  const r = await openStore('test-remote://h1/p');
  t.equal(r.location, 'test-remote://h1');
  await t.rejects(openStore('nope://x'), { message: /test-remote:\/\// }, 'message lists registered schemes');
});
