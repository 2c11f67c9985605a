// A recover job whose `out` is a cloud disk object: the agent streams the point into s3rver with the credentials of
// the job's outEnv (the secret by reference), reports the object without its query, and logs no secret.
import { CreateBucketCommand, GetObjectCommand, S3Client } from '@aws-sdk/client-s3';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { replicate } from '../../src/jobs/replicate.js';
import { openSource } from '../../src/source/index.js';
import { startS3rver } from '../../bench/lib/emulators.js';
import { fsStore } from '../helpers/images.js';
import { MiB, makeDisk, startAgent, startMs, tmpDir } from './helpers.js';

t.setTimeout(120_000);

t.test('recover job into s3://: credentials from outEnv, object byte-exact, secret in no log line', async (t) => {
  const dir = tmpDir(t, 'agent-cloudrec');
  const s3 = await startS3rver(dir);
  t.teardown(() => s3.stop());
  const client = new S3Client({
    endpoint: s3.endpoint,
    forcePathStyle: true,
    region: 'us-east-1',
    credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
  });
  t.teardown(() => client.destroy());
  await client.send(new CreateBucketCommand({ Bucket: 'disks' }));

  const img = await makeDisk(dir, 'd0', 3 * MiB, 7);
  const storeUrl = path.join(dir, 'store');
  const store = fsStore(storeUrl);
  const source = await openSource(img);
  await replicate({ store, source, disk: 'd0' }).finally(() => source.close());

  const ms = await startMs(t);
  const { agent, logs, stateDir } = await startAgent(t, ms, dir);
  await ms.waitFor(() => ms.nodes.get(agent.nodeId), 10_000, 'registration');
  fs.writeFileSync(path.join(stateDir, 'secrets', 's3-secret'), 'S3RVER\n', { mode: 0o600 });
  const out = `s3://disks/recovered/d0.raw?endpoint=${s3.endpoint}&forcePathStyle=true`;
  ms.startJob({
    jobId: 'rec-s3',
    kind: 'recover',
    store: { url: storeUrl },
    disk: 'd0',
    out,
    outEnv: { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: { secretRef: 'file:s3-secret' } },
  });
  const done = await ms.waitFor(() => ms.jobs.get('rec-s3')?.completed, 30_000, 'the cloud recover job');
  t.match((done as any).results[0], { disk: 'd0', point: 1, out: 's3://disks/recovered/d0.raw', bytesWritten: 3 * MiB });
  const got = await client.send(new GetObjectCommand({ Bucket: 'disks', Key: 'recovered/d0.raw' }));
  t.ok(Buffer.from(await got.Body!.transformToByteArray()).equals(fs.readFileSync(img)), 'the object is the disk, byte-exact');
  t.notOk(
    logs.some((l) => l.includes('S3RVER')),
    'the secret is in no log line',
  );
});
