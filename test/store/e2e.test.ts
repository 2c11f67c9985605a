// End to end on each cloud emulator through openStore (wrappers in the path): full and incremental
// points, byte-exact restore of each, verify, a third point, prune and the kept points still exact.
// On Azurite (which enforces conditional writes): two concurrent writers of one disk, exactly one commits.

import { BlobServiceClient } from '@azure/storage-blob';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import { codecWorkers } from '../../src/pipeline/codec-workers.js';
import { listPointSeqs } from '../../src/repository/points.js';
import { prune } from '../../src/jobs/prune-v2.js';
import { replicate } from '../../src/jobs/replicate.js';
import { recover } from '../../src/jobs/restore.js';
import { verify } from '../../src/jobs/verify.js';
import { generateSampleDisk, scatterWrites } from '../../src/sample/sample-disk.js';
import { openSource } from '../../src/source/index.js';
import { openStore, type ObjectStore } from '../../src/store/index.js';
import { azuriteConnectionString, GCS_PROJECT, startAzurite, startGcsEmulator, startS3rver, type RunningServer } from '../../bench/lib/emulators.js';

const CHUNK = 64 * 1024;
const SIZE = 3 * 1024 * 1024 + 4321; // not a multiple of the chunk size: a short last chunk
const DISK = 'e2e';

t.setTimeout(300_000);

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rnode-e2e-'));
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));

async function rep(store: ObjectStore, image: string, disk = DISK) {
  const source = await openSource(image);
  try {
    return await replicate({ store, source, disk, chunkSize: CHUNK });
  } finally {
    await source.close();
  }
}

async function sameBytes(t: Test, a: string, b: string, msg: string) {
  const [x, y] = await Promise.all([fsp.readFile(a), fsp.readFile(b)]);
  t.equal(x.length, y.length, `${msg}: same size`);
  t.ok(x.equals(y), `${msg}: byte-exact`);
}

async function restoreExact(t: Test, store: ObjectStore, point: number, expected: string, work: string) {
  const out = path.join(work, `restored-${point}.img`);
  const r = await recover({ store, disk: DISK, point: String(point), out });
  t.equal(r.point, point);
  await sameBytes(t, out, expected, `point ${point}`);
  await fsp.rm(out, { force: true });
}

/** The whole scenario on one store. */
async function scenario(t: Test, store: ObjectStore, name: string) {
  const work = await fsp.mkdtemp(path.join(dir, `${name}-`));
  const image = path.join(work, 'disk.img');
  await generateSampleDisk(image, { size: SIZE, seed: 11, holeEvery: 3 });
  const copy = (n: number) => path.join(work, `at-${n}.img`);

  const p1 = await rep(store, image);
  t.equal(p1.point, 1);
  t.ok(p1.full, 'first point is full');
  await fsp.copyFile(image, copy(1));

  await scatterWrites(image, SIZE, 20, 5);
  const p2 = await rep(store, image);
  t.equal(p2.point, 2);
  t.notOk(p2.full, 'second point is incremental');
  t.equal(p2.parent, 1);
  t.ok(p2.chunksChanged > 0 && p2.chunksChanged <= 20, `incremental stored ${p2.chunksChanged} changed chunks`);
  await fsp.copyFile(image, copy(2));

  await restoreExact(t, store, 1, copy(1), work);
  await restoreExact(t, store, 2, copy(2), work);

  const v = await verify({ store, disk: DISK, point: 'all' });
  t.ok(v.ok, 'verify all ok');
  t.same(v.problems, []);
  t.same(v.points, [1, 2]);

  await scatterWrites(image, SIZE, 15, 9);
  const p3 = await rep(store, image);
  t.equal(p3.point, 3);
  await fsp.copyFile(image, copy(3));

  const pr = await prune({ store, disk: DISK, keep: 2 });
  t.same(pr.kept, [2, 3], 'prune keeps the last two');
  t.same(pr.deleted, [1]);
  t.same(await listPointSeqs(store, DISK), [2, 3]);
  await restoreExact(t, store, 2, copy(2), work);
  await restoreExact(t, store, 3, copy(3), work);
  const v2 = await verify({ store, disk: DISK, point: 'all' });
  t.ok(v2.ok, 'verify all ok after prune');
  t.same(v2.problems, []);
  await fsp.rm(work, { recursive: true, force: true });
}

t.test('s3 (s3rver)', async (t) => {
  const server = await startS3rver();
  t.teardown(() => server.stop());
  const c = new S3Client({
    endpoint: server.endpoint,
    forcePathStyle: true,
    region: 'us-east-1',
    credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
  });
  await c.send(new CreateBucketCommand({ Bucket: 'rnode-e2e' }));
  c.destroy();
  const env = { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER' };
  // s3rver does not enforce If-None-Match / If-Match (docs/stores.md).
  const store = await openStore(`s3://rnode-e2e/e2e?endpoint=${server.endpoint}&forcePathStyle=true&conditional=off`, { env });
  t.teardown(() => store.close());
  await scenario(t, store, 's3');
});

let azure: RunningServer | undefined;
let azureEnv: NodeJS.ProcessEnv = {};

t.test('azure (azurite)', async (t) => {
  azure = await startAzurite();
  azureEnv = { AZURE_STORAGE_CONNECTION_STRING: azuriteConnectionString(azure.endpoint) };
  await BlobServiceClient.fromConnectionString(azureEnv.AZURE_STORAGE_CONNECTION_STRING!).getContainerClient('rnode-e2e').create();
  const store = await openStore('azblob://rnode-e2e/e2e', { env: azureEnv });
  t.teardown(() => store.close());
  t.equal(store.capabilities.conditionalPut, true, 'Azurite enforces conditions: no conditional=off');
  await scenario(t, store, 'azure');
});

t.test('azure (azurite): two concurrent writers of one disk, exactly one commits', async (t) => {
  t.ok(azure, 'azurite is running');
  if (!azure) return;
  const store = await openStore('azblob://rnode-e2e/lease', { env: azureEnv });
  t.teardown(() => store.close());
  const image = path.join(dir, 'lease.img');
  await generateSampleDisk(image, { size: 2 * 1024 * 1024, seed: 21 });
  const results = await Promise.allSettled([rep(store, image, 'shared'), rep(store, image, 'shared')]);
  const ok = results.filter((r) => r.status === 'fulfilled');
  const failed = results.filter((r) => r.status === 'rejected') as PromiseRejectedResult[];
  t.equal(ok.length, 1, 'one writer commits');
  t.equal(failed.length, 1, 'the other is stopped');
  t.match(failed[0]?.reason?.code, /^RNODE_LEASE_(HELD|LOST)$/, `clear error: ${failed[0]?.reason?.message}`);
  t.same(await listPointSeqs(store, 'shared'), [1], 'exactly one point');
  const v = await verify({ store, disk: 'shared', point: 'all' });
  t.ok(v.ok, 'the committed point verifies');
  const next = await rep(store, image, 'shared');
  t.equal(next.point, 2, 'the lease was released: the next run commits');
});

t.test('azure: stop', async () => {
  await azure?.stop();
  azure = undefined;
});

t.test('gcs (firebase emulator)', async (t) => {
  const server = await startGcsEmulator();
  t.teardown(() => server.stop());
  const env = { STORAGE_EMULATOR_HOST: server.endpoint, GOOGLE_CLOUD_PROJECT: GCS_PROJECT };
  // The emulator does not enforce ifGenerationMatch (docs/stores.md).
  const store = await openStore('gs://rnode-test/e2e?conditional=off', { env });
  t.teardown(() => store.close());
  await scenario(t, store, 'gcs');
});

t.teardown(async () => {
  await azure?.stop();
  await codecWorkers().close();
});
