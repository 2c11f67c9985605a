// The export reads from every kind of store: s3rver, Azurite, the GCS emulator and a receiving node over ws://
// (`rnode serve`'s server in this process). On each, a plain and an encrypted disk with a full and an incremental
// point; qemu-img compare of every point against the image it was taken from.
import { BlobServiceClient } from '@azure/storage-blob';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { EncryptionKey } from '../../src/crypto/keys.js';
import { codecWorkers } from '../../src/pipeline/codec-workers.js';
import { openStore, type ObjectStore } from '../../src/store/index.js';
import { azuriteConnectionString, GCS_PROJECT, startAzurite, startGcsEmulator, startS3rver } from '../../bench/lib/emulators.js';
import { remote, startNode } from '../transport/helpers.js';
import { snap, tmpDir } from '../helpers/images.js';
import { changeDisk, CHUNK, compare, haveTools, makeDisk, serveExport, unixUrl } from './helpers.js';

t.setTimeout(400_000);
t.teardown(() => codecWorkers().close());

const KEY = EncryptionKey.fromBytes(Buffer.alloc(32, 3));

async function scenario(t: Test, store: ObjectStore, name: string): Promise<void> {
  const dir = tmpDir(t, `export-${name}`);
  for (const encryption of [undefined, KEY]) {
    const disk = encryption ? 'enc' : 'plain';
    const image = path.join(dir, `${disk}.img`);
    makeDisk(image, encryption ? 5 : 1);
    await snap(store, image, disk, { chunkSize: CHUNK, encryption, lease: false });
    const p1 = path.join(dir, `${disk}-1.img`);
    fs.copyFileSync(image, p1);
    changeDisk(image);
    const r2 = await snap(store, image, disk, { encryption, lease: false });
    t.notOk(r2.full, `${disk}: point 2 is incremental`);
    const exp = await serveExport(t, dir, { store, disk, encryption, tag: disk });
    for (const [exportName, want] of [
      [disk, image],
      [`${disk}@1`, p1],
    ]) {
      const r = await compare(want, unixUrl(exp.socket, exportName));
      t.equal(r.code, 0, `${name}: ${exportName}${encryption ? ' (encrypted)' : ''} identical to its image ${r.stderr.trim()}`);
    }
    t.equal(exp.stats().chunkErrors, 0);
    await exp.close();
  }
}

t.test('s3 (s3rver)', { skip: !haveTools && 'tools missing' }, async (t) => {
  const server = await startS3rver();
  t.teardown(() => server.stop());
  const c = new S3Client({
    endpoint: server.endpoint,
    forcePathStyle: true,
    region: 'us-east-1',
    credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
  });
  await c.send(new CreateBucketCommand({ Bucket: 'rnode-export' }));
  c.destroy();
  const store = await openStore(`s3://rnode-export/x?endpoint=${server.endpoint}&forcePathStyle=true&conditional=off`, {
    env: { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER' },
  });
  t.teardown(() => store.close());
  await scenario(t, store, 's3');
});

t.test('azure (azurite)', { skip: !haveTools && 'tools missing' }, async (t) => {
  const server = await startAzurite();
  t.teardown(() => server.stop());
  const env = { AZURE_STORAGE_CONNECTION_STRING: azuriteConnectionString(server.endpoint) };
  await BlobServiceClient.fromConnectionString(env.AZURE_STORAGE_CONNECTION_STRING).getContainerClient('rnode-export').create();
  const store = await openStore('azblob://rnode-export/x', { env });
  t.teardown(() => store.close());
  await scenario(t, store, 'azure');
});

t.test('gcs (firebase emulator)', { skip: !haveTools && 'tools missing' }, async (t) => {
  const server = await startGcsEmulator();
  t.teardown(() => server.stop());
  const store = await openStore('gs://rnode-export/x?conditional=off', {
    env: { STORAGE_EMULATOR_HOST: server.endpoint, GOOGLE_CLOUD_PROJECT: GCS_PROJECT },
  });
  t.teardown(() => store.close());
  await scenario(t, store, 'gcs');
});

t.test('ws peer (rnode serve)', { skip: !haveTools && 'tools missing' }, async (t) => {
  const dir = tmpDir(t, 'export-ws');
  const node = await startNode(t, dir);
  const store = remote(t, node.url);
  await scenario(t, store, 'ws');
});
