// S3Store against s3rver (a real S3 protocol server) through the conformance suite, plus multipart.
// s3rver does not enforce If-None-Match / If-Match, so the store is opened with conditional=off.

import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { randomBytes } from 'node:crypto';
import t from 'tap';
import { ErrorCodes } from '../../src/errors.js';
import { openBackend } from '../../src/store/index.js';
import type { S3Store } from '../../src/store/s3/s3-store.js';
import { runConformance } from './conformance.js';
import { startS3rver, type RunningServer } from '../../bench/lib/emulators.js';

const env = { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER' };
let server: RunningServer;
let n = 0;

// Emulator start plus 1100-key listings on 2 shared cores: more than tap's default 30 s per file.
t.setTimeout(180_000);

t.before(async () => {
  server = await startS3rver();
  const c = new S3Client({
    endpoint: server.endpoint,
    forcePathStyle: true,
    region: 'us-east-1',
    credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
  });
  await c.send(new CreateBucketCommand({ Bucket: 'rnode-test' }));
  c.destroy();
});
t.teardown(() => server?.stop());

const url = (prefix: string, extra = '') => `s3://rnode-test/${prefix}?endpoint=${server.endpoint}&forcePathStyle=true&conditional=off${extra}`;

runConformance(
  t,
  's3 (s3rver)',
  async () => ({
    // A fresh prefix per case: also proves the store confines itself to its prefix.
    store: await openBackend(url(`run-${++n}`), env),
    cleanup: async () => {},
  }),
  { etagChangesOnIdenticalPut: false, listOrder: 'unordered' },
);

t.test('s3: multipart above the threshold round-trips and reads by range', async (t) => {
  const store = (await openBackend(url('mp', '&multipartThreshold=5242880&partSize=5242880'), env)) as S3Store;
  t.teardown(() => store.close());
  const commands: string[] = [];
  store.client.middlewareStack.add(
    (next, context) => async (args) => {
      commands.push(context.commandName ?? '?');
      return next(args);
    },
    { step: 'initialize' },
  );
  const data = randomBytes(11 * 1024 * 1024 + 7); // 3 parts
  const info = await store.put('big', data);
  t.equal(info.size, data.length);
  t.same(
    commands,
    ['CreateMultipartUploadCommand', 'UploadPartCommand', 'UploadPartCommand', 'UploadPartCommand', 'CompleteMultipartUploadCommand'],
    'uploaded in 3 parts',
  );
  const small = await store.put('small', data.subarray(0, 5 * 1024 * 1024));
  t.equal(small.size, 5 * 1024 * 1024);
  t.equal(commands.at(-1), 'PutObjectCommand', 'at the threshold: one PutObject');
  t.ok((await store.get('big')).equals(data));
  t.ok((await store.get('big', { offset: 5 * 1024 * 1024 - 3, length: 10 })).equals(data.subarray(5 * 1024 * 1024 - 3, 5 * 1024 * 1024 + 7)));
  t.equal((await store.head('big')).size, data.length);
});

t.test('s3: errors map to STORE_* codes', async (t) => {
  const missing = await openBackend(`s3://no-such-bucket/x?endpoint=${server.endpoint}&forcePathStyle=true`, env);
  t.teardown(() => missing.close());
  await t.rejects(missing.get('k'), { code: ErrorCodes.STORE_IO, message: /does not exist/ }, 'a missing bucket is not a missing key');
  const dead = await openBackend(`s3://rnode-test/x?endpoint=http://127.0.0.1:1&forcePathStyle=true`, env);
  t.teardown(() => dead.close());
  await t.rejects(dead.head('k'), { code: ErrorCodes.STORE_UNAVAILABLE, retryable: true }, 'connection refused is retryable');
  await t.rejects(openBackend('s3:///nobucket', env), { code: ErrorCodes.BAD_STORE_URL });
});

t.test('s3: s3rver really does not enforce If-None-Match (keep conditional=off honest)', async (t) => {
  const store = await openBackend(`s3://rnode-test/cond?endpoint=${server.endpoint}&forcePathStyle=true`, env);
  t.teardown(() => store.close());
  t.equal(store.capabilities.conditionalPut, true, 'default: real S3 enforces conditions');
  await store.put('k', Buffer.from('1'), { ifNoneMatch: true });
  const second = await store.put('k', Buffer.from('2'), { ifNoneMatch: true }).then(
    () => 'written',
    (e) => e.code,
  );
  t.equal(second, 'written', 'if this fails, s3rver now enforces conditions: drop conditional=off');
});
