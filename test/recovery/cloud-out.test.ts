// `recover --out <cloud url>` on the real emulators: a point (full and incremental, plain and encrypted) streamed
// into an Azure page blob as a fixed VHD, an S3 multipart object and a GCS tar.gz, each downloaded and checked
// with the tools the clouds' importers stand for (qemu-img for the VHD, GNU tar for the archive).
import { CreateBucketCommand, GetObjectCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { BlobServiceClient } from '@azure/storage-blob';
import { Storage } from '@google-cloud/storage';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import t from 'tap';
import { EncryptionKey } from '../../src/crypto/keys.js';
import { ErrorCodes, type RnodeError } from '../../src/errors.js';
import { openOutput } from '../../src/output/index.js';
import { vhdChecksum, vhdGeometry } from '../../src/output/vhd.js';
import { recover } from '../../src/jobs/restore.js';
import { replicate } from '../../src/jobs/replicate.js';
import { Domain } from '../../src/repository/domain.js';
import { ChunkIndex } from '../../src/repository/index-file.js';
import { r2 } from '../../src/repository/names.js';
import { listV2PointSeqs, loadV2Chain } from '../../src/repository/points.js';
import { chainView } from '../../src/repository/view.js';
import { openSource } from '../../src/source/index.js';
import { FsStore } from '../../src/store/index.js';
import { azuriteConnectionString, GCS_PROJECT, startAzurite, startGcsEmulator, startS3rver, type RunningServer } from '../../bench/lib/emulators.js';
import { KiB, MiB, randomData, textData, tmpDir } from '../helpers/images.js';
import { relay } from '../helpers/relay.js';

t.setTimeout(280_000);

const SIZE = 13 * MiB + 3 * KiB; // neither MiB- nor 4 KiB-aligned: the roundings and the short last chunk are exercised
const CHUNK = 256 * KiB;
const GiB = 1024 ** 3;
const dir = tmpDir(t, 'cloudout');
const storeDir = path.join(dir, 'store');
const store = new FsStore(storeDir);
const key = EncryptionKey.fromBytes(randomBytes(32));
/** The image as it was at point 1 (full) and point 2 (incremental) of each disk. */
const images: Buffer[] = [];
let s3: RunningServer, azurite: RunningServer, gcs: RunningServer;
let env: NodeJS.ProcessEnv;

function imageV1(): Buffer {
  const img = Buffer.alloc(SIZE);
  randomData(MiB, 1).copy(img, 0);
  textData(MiB, 2).copy(img, 2 * MiB);
  randomData(4 * KiB, 3).copy(img, 5 * MiB + 8 * KiB); // one 4 KiB block alone in its chunk
  randomData(SIZE - 12 * MiB, 4).copy(img, 12 * MiB); // runs into the short last chunk
  return img;
}

async function point(disk: string, img: Buffer, encryption?: EncryptionKey): Promise<void> {
  const file = path.join(dir, `${disk}.img`);
  fs.writeFileSync(file, img);
  const source = await openSource(file);
  try {
    await replicate({ store, source, disk, chunkSize: CHUNK, encryption });
  } finally {
    await source.close();
  }
}

t.before(async () => {
  [s3, azurite, gcs] = await Promise.all([startS3rver(), startAzurite(), startGcsEmulator()]);
  env = {
    AWS_ACCESS_KEY_ID: 'S3RVER',
    AWS_SECRET_ACCESS_KEY: 'S3RVER',
    AZURE_STORAGE_CONNECTION_STRING: azuriteConnectionString(azurite.endpoint),
    STORAGE_EMULATOR_HOST: gcs.endpoint,
    GOOGLE_CLOUD_PROJECT: GCS_PROJECT,
  };
  const c = s3Client();
  await c.send(new CreateBucketCommand({ Bucket: 'disks' }));
  c.destroy();
  await BlobServiceClient.fromConnectionString(env.AZURE_STORAGE_CONNECTION_STRING!).getContainerClient('disks').create();

  const v1 = imageV1();
  const v2 = Buffer.from(v1);
  randomData(64 * KiB, 5).copy(v2, 7 * MiB + 4 * KiB); // a chunk that was zero
  v2.fill(0, 0, 300 * KiB); // a chunk that becomes zero, and part of the next
  v2.fill(0x5a, 12 * MiB + 100, 12 * MiB + 200);
  images.push(v1, v2);
  for (const [disk, encryption] of [
    ['plain', undefined],
    ['enc', key],
  ] as const) {
    await point(disk, v1, encryption);
    await point(disk, v2, encryption);
  }
});
t.teardown(async () => {
  await store.close();
  await Promise.all([s3?.stop(), azurite?.stop(), gcs?.stop()]);
});

function s3Client(): S3Client {
  return new S3Client({
    endpoint: s3.endpoint,
    forcePathStyle: true,
    region: 'us-east-1',
    credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
  });
}

const roundUp = (n: number, to: number) => Math.ceil(n / to) * to;
const padded = (img: Buffer, to: number) => Buffer.concat([img, Buffer.alloc(roundUp(img.length, to) - img.length)]);
const cases = [
  { disk: 'plain', point: '2', encryption: undefined },
  { disk: 'enc', point: '1', encryption: key },
  { disk: 'enc', point: '2', encryption: key },
  { disk: 'plain', point: '1', encryption: undefined },
];

t.test('s3://: the raw image as a multipart upload, byte-exact', async (t) => {
  const c = s3Client();
  t.teardown(() => c.destroy());
  for (const k of cases.slice(0, 3)) {
    const out = `s3://disks/restored/${k.disk}-${k.point}.raw?endpoint=${s3.endpoint}&forcePathStyle=true&partSize=5242880`;
    const r = await recover({ store, disk: k.disk, point: k.point, encryption: k.encryption, out, env });
    t.equal(r.out, `s3://disks/restored/${k.disk}-${k.point}.raw`, 'the result names the object without the query');
    t.equal(r.bytesWritten, SIZE, 'every byte sent, zeros too');
    const got = await c.send(new GetObjectCommand({ Bucket: 'disks', Key: `restored/${k.disk}-${k.point}.raw` }));
    const body = Buffer.from(await got.Body!.transformToByteArray());
    t.ok(body.equals(images[Number(k.point) - 1]), `${k.disk} point ${k.point}: byte-exact (${body.length} bytes)`);
  }
});

t.test("s3://: a bucket that does not exist is named as --out's (it read as the backup not being found)", async (t) => {
  const out = `s3://no-such-bucket/restored.raw?endpoint=${s3.endpoint}&forcePathStyle=true`;
  await t.rejects(recover({ store, disk: 'plain', point: '1', out, env }), {
    code: ErrorCodes.OUTPUT_IO,
    message: /the bucket of --out s3:\/\/no-such-bucket\/restored.raw does not exist; create it first/,
  });
});

t.test('s3://: a part size or a disk S3 cannot take is BAD_OUTPUT, before anything is uploaded', async (t) => {
  // Regression: partSize=10000000000 passed the check of its lower bound only, and the restore failed allocating the
  // part's buffer as RNODE_INTERNAL "The value of "size" is out of range ... this is a bug".
  const base = `s3://disks/parts/big.raw?endpoint=${s3.endpoint}&forcePathStyle=true`;
  for (const partSize of ['10000000000', '1073741825', '5242879', '5MiB', '-1', '']) {
    await t.rejects(
      recover({ store, disk: 'plain', point: '1', out: `${base}&partSize=${partSize}`, env }),
      {
        code: ErrorCodes.BAD_OUTPUT,
        message: `--out s3://disks/parts/big.raw asks for partSize=${partSize}; a part is a number of bytes from 5 MiB (5242880) to 1 GiB (1073741824)`,
      },
      `partSize=${partSize}`,
    );
  }
  const sink = await openOutput(`${base}&partSize=1073741824`, { diskSize: MiB, env });
  t.pass('partSize=1073741824 (1 GiB) is taken');
  await sink.abort();
  await t.rejects(
    openOutput(base, { diskSize: 5 * 1024 * GiB + 1, env }),
    { code: ErrorCodes.BAD_OUTPUT, message: /an S3 object is at most 5 TiB/ },
    'a disk over 5 TiB',
  );
  const c = s3Client();
  t.equal((await c.send(new ListObjectsV2Command({ Bucket: 'disks', Prefix: 'parts/' }))).KeyCount ?? 0, 0, 'no object');
  c.destroy();
});

t.test('a 0-byte disk: an empty S3 object, and refused as a VHD', async (t) => {
  // Regression: S3 completed a multipart upload of no parts with "MalformedXML (HTTP 400)"; Azure made a 512-byte
  // blob, a footer alone, that qemu-img cannot open.
  await point('empty', Buffer.alloc(0));
  const r = await recover({ store, disk: 'empty', out: `s3://disks/empty/e.raw?endpoint=${s3.endpoint}&forcePathStyle=true`, env }).catch(
    (e: Error) => e,
  );
  t.notOk(r instanceof Error, `s3: the restore succeeds (${r instanceof Error ? r.message : 'ok'})`);
  const c = s3Client();
  t.teardown(() => c.destroy());
  const got = await c.send(new GetObjectCommand({ Bucket: 'disks', Key: 'empty/e.raw' })).catch((e: Error) => e);
  t.equal(got instanceof Error ? got.message : got.ContentLength, 0, 's3: an empty object');
  await t.rejects(
    recover({ store, disk: 'empty', out: 'azblob://disks/empty.vhd', env }),
    { code: ErrorCodes.BAD_OUTPUT, message: '--out azblob://disks/empty.vhd cannot hold a 0-byte disk: a VHD needs at least one sector of data' },
    'azure: refused',
  );
  const blob = BlobServiceClient.fromConnectionString(env.AZURE_STORAGE_CONNECTION_STRING!).getContainerClient('disks').getBlobClient('empty.vhd');
  t.notOk(await blob.exists(), 'azure: no blob');
});

/** Merged [start, end) ranges of the 4 KiB blocks of buf holding a non-zero byte. */
function nonZeroBlocks(buf: Buffer, block = 4 * KiB): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let o = 0; o < buf.length; o += block) {
    if (!buf.subarray(o, Math.min(o + block, buf.length)).some((x) => x !== 0)) continue;
    const end = Math.min(o + block, buf.length);
    const last = out[out.length - 1];
    if (last && last[1] === o) last[1] = end;
    else out.push([o, end]);
  }
  return out;
}

t.test('azblob://: a fixed VHD in a page blob, only non-zero pages written', async (t) => {
  const service = BlobServiceClient.fromConnectionString(env.AZURE_STORAGE_CONNECTION_STRING!);
  for (const k of cases) {
    const name = `${k.disk}-${k.point}.vhd`;
    const r = await recover({ store, disk: k.disk, point: k.point, encryption: k.encryption, out: `azblob://disks/${name}`, env });
    const blob = service.getContainerClient('disks').getPageBlobClient(name);
    const vsize = roundUp(SIZE, MiB);
    const props = await blob.getProperties();
    t.equal(props.contentLength, vsize + 512, 'blob size: virtual size rounded up to 1 MiB, plus the footer');

    const want = padded(images[Number(k.point) - 1], MiB);
    const expected = nonZeroBlocks(images[Number(k.point) - 1]).map(([a, b]) => [a, roundUp(b, 512)]);
    expected.push([vsize, vsize + 512]); // the footer
    const ranges: Array<[number, number]> = [];
    for (const p of (await blob.getPageRanges()).pageRange ?? []) {
      const end = p.offset + p.count + 1; // the SDK's count is End - Start of the service's inclusive End
      const last = ranges[ranges.length - 1];
      if (last && last[1] === p.offset) last[1] = end;
      else ranges.push([p.offset, end]);
    }
    t.same(ranges, expected, `${name}: the written pages are exactly the non-zero 4 KiB blocks and the footer`);
    t.equal(
      r.bytesWritten,
      expected.slice(0, -1).reduce((n, [a, b]) => n + b - a, 0),
      'bytesWritten counts the uploaded pages',
    );

    const file = path.join(dir, name);
    await blob.downloadToFile(file);
    const footer = fs.readFileSync(file).subarray(vsize);
    t.equal(footer.subarray(0, 8).toString('latin1'), 'conectix', 'footer cookie');
    t.equal(footer.readUInt32BE(60), 2, 'disk type fixed');
    t.equal(footer.readUInt32BE(64), vhdChecksum(footer), 'footer checksum');
    const g = vhdGeometry(vsize);
    t.same([footer.readUInt16BE(56), footer[58], footer[59]], [g.cylinders, g.heads, g.sectorsPerTrack], 'CHS geometry');
    const info = JSON.parse(execFileSync('qemu-img', ['info', '-f', 'vpc', '--output=json', file], { encoding: 'utf8' }));
    t.equal(info['virtual-size'], vsize, 'qemu-img info -f vpc: the virtual size');
    const raw = path.join(dir, `${name}.raw`);
    execFileSync('qemu-img', ['convert', '-f', 'vpc', '-O', 'raw', file, raw]);
    t.ok(fs.readFileSync(raw).equals(want), `${name}: qemu-img convert -f vpc gives the image byte-exact (zero padding to 1 MiB)`);
    fs.rmSync(file);
    fs.rmSync(raw);
  }
});

t.test("gs://: a gzip'd sparse tar with disk.raw, the size rounded up to a GiB", async (t) => {
  const bucket = new Storage({ projectId: GCS_PROJECT, apiEndpoint: gcs.endpoint }).bucket('disks');
  for (const k of cases.slice(0, 3)) {
    const name = `${k.disk}-${k.point}.tar.gz`;
    await recover({ store, disk: k.disk, point: k.point, encryption: k.encryption, out: `gs://disks/${name}`, env });
    const [body] = await bucket.file(name).download();
    const [meta] = await bucket.file(name).getMetadata();
    t.equal(Number(meta.size), body.length, 'downloaded whole');
    const x = path.join(dir, `x-${k.disk}-${k.point}`);
    fs.mkdirSync(x);
    fs.writeFileSync(path.join(x, name), body);
    const listing = execFileSync('tar', ['-tvzf', name], { cwd: x, encoding: 'utf8' });
    t.match(listing, /\b1073741824\b.*disk\.raw\s*$/m, 'one member disk.raw of 1 GiB');
    execFileSync('tar', ['-xzf', name], { cwd: x });
    const raw = path.join(x, 'disk.raw');
    t.equal(fs.statSync(raw).size, GiB, 'extracted size: the disk rounded up to a whole GiB');
    t.ok(fs.statSync(raw).blocks * 512 < 64 * MiB, 'extracted sparse: the holes were not stored as zeros');
    const fd = fs.openSync(raw, 'r');
    const head = Buffer.alloc(SIZE + MiB);
    fs.readSync(fd, head, 0, head.length, 0);
    fs.closeSync(fd);
    t.ok(head.subarray(0, SIZE).equals(images[Number(k.point) - 1]), `${name}: disk.raw is the image byte-exact`);
    t.ok(
      head.subarray(SIZE).every((b) => b === 0),
      'then zeros (the rest is a hole)',
    );
    fs.rmSync(x, { recursive: true });
  }
});

t.test('a failed restore leaves no object behind in any cloud', async (t) => {
  // A corrupt chunk of a third disk: the restore fails after some data went out.
  await point('bad', imageV1());
  // The blob of the disk's last stored chunk, in its pack (v2); the blob is shared with 'plain' (same image), so the
  // pack is put back afterwards.
  const domain = (await Domain.open(store, undefined))!;
  const chain = await loadV2Chain(store, 'bad', (await listV2PointSeqs(store, 'bad')).at(-1)!);
  let last: Buffer | undefined;
  for await (const e of chainView(store, chain)) if (e.id) last = e.id;
  const loc = (await ChunkIndex.load(store, domain)).lookup(last!)[0];
  const victim = path.join(storeDir, r2.pack(domain.name, loc.packId));
  const orig = fs.readFileSync(victim);
  const b = Buffer.from(orig);
  b[loc.entry.offset + loc.entry.length - 1] ^= 0xff;
  fs.writeFileSync(victim, b);
  t.teardown(() => fs.writeFileSync(victim, orig));
  for (const out of [`s3://disks/bad/bad.raw?endpoint=${s3.endpoint}&forcePathStyle=true`, 'azblob://disks/bad.vhd', 'gs://disks/bad.tar.gz']) {
    await t.rejects(
      recover({ store, disk: 'bad', out, env }),
      { code: ErrorCodes.CHUNK_CORRUPT },
      `${out.replace(/\?.*/, '')}: the corrupt chunk fails the restore`,
    );
  }
  const c = s3Client();
  t.equal((await c.send(new ListObjectsV2Command({ Bucket: 'disks', Prefix: 'bad/' }))).KeyCount ?? 0, 0, 's3: no object');
  c.destroy();
  t.notOk(
    await BlobServiceClient.fromConnectionString(env.AZURE_STORAGE_CONNECTION_STRING!).getContainerClient('disks').getBlobClient('bad.vhd').exists(),
    'azure: the page blob was deleted',
  );
  const [exists] = await new Storage({ projectId: GCS_PROJECT, apiEndpoint: gcs.endpoint }).bucket('disks').file('bad.tar.gz').exists();
  t.notOk(exists, 'gcs: no object');
});

t.test('outputs inside the store being read, and malformed outputs, are refused', async (t) => {
  const opts = { diskSize: MiB, env, storeLocation: 's3://disks/repo/' };
  await t.rejects(openOutput('s3://disks/repo/restored.raw', opts), { code: ErrorCodes.OUTPUT_IN_STORE });
  await t.rejects(openOutput('azblob://c/p/x.vhd', { ...opts, storeLocation: 'azblob://c/' }), { code: ErrorCodes.OUTPUT_IN_STORE });
  await t.rejects(openOutput('gs://b/p/x.tar.gz', { ...opts, storeLocation: 'gs://b/p/' }), { code: ErrorCodes.OUTPUT_IN_STORE });
  // The store keeps its objects under the decoded prefix ("dr site/"): an encoded one let a recover overwrite r2/plain/config.
  await t.rejects(openOutput('s3://disks/dr%20site/r2/plain/config', { ...opts, storeLocation: 's3://disks/dr%20site' }), {
    code: ErrorCodes.OUTPUT_IN_STORE,
  });
  await t.rejects(openOutput('azblob://c/my%20store/in.vhd', { ...opts, storeLocation: 'azblob://c/my%20store' }), {
    code: ErrorCodes.OUTPUT_IN_STORE,
  });
  await t.rejects(openOutput('azblob://disks/x.raw', opts), { code: ErrorCodes.BAD_OUTPUT }, 'azblob needs a .vhd name');
  await t.rejects(openOutput('gs://disks/x.tar', opts), { code: ErrorCodes.BAD_OUTPUT }, 'gs needs a .tar.gz name');
  await t.rejects(openOutput('s3://disks/', opts), { code: ErrorCodes.BAD_OUTPUT }, 's3 needs a key');
  await t.rejects(openOutput('s3://disks/k.raw?partsize=8388608', opts), { code: ErrorCodes.BAD_OUTPUT, message: /"partsize".*partSize/ });
  await t.rejects(openOutput('azblob://disks/x.vhd?blockSize=1', opts), { code: ErrorCodes.BAD_OUTPUT, message: /takes none/ });
  await t.rejects(openOutput('gs://disks/x.tar.gz?region=eu', opts), { code: ErrorCodes.BAD_OUTPUT, message: /takes project/ });
  const err = await openOutput('s3://user:secret@disks/k', opts).catch((e: Error) => e);
  t.ok(
    err instanceof Error && (err as { code?: string }).code === ErrorCodes.BAD_OUTPUT && !err.message.includes('secret'),
    'credentials in the URL are refused, not echoed',
  );
  await t.rejects(
    recover({ store, disk: 'plain', out: 'azblob://disks/plain-2.vhd', env }),
    { code: ErrorCodes.OUTPUT_IO },
    'an existing blob is never overwritten',
  );
});

t.test("s3://: values --out's client options cannot take are BAD_OUTPUT, and an endpoint with credentials is refused", async (t) => {
  // Regression: these came back as RNODE_BAD_STORE_URL "store URL parameter ..." (a code about the store being
  // read), and an endpoint with user:password in it was taken.
  const opts = { diskSize: MiB, env };
  for (const [param, why] of [
    ['endpoint=not a url', 'endpoint=not a url is not an http(s) URL; write it with its scheme'],
    ['endpoint=127.0.0.1:9000', 'endpoint=127.0.0.1:9000 is not an http(s) URL'],
    ['forcePathStyle=maybe', 'forcePathStyle=maybe must be on or off'],
  ]) {
    await t.rejects(
      openOutput(`s3://disks/k.raw?${param}`, opts),
      { code: ErrorCodes.BAD_OUTPUT, message: `--out s3://disks/k.raw cannot be used: ${why}` },
      param,
    );
  }
  const err = (await openOutput(`s3://disks/k.raw?endpoint=${s3.endpoint.replace('//', '//user:secret@')}`, opts).catch(
    (e: unknown) => e,
  )) as RnodeError;
  t.equal(err.code, ErrorCodes.BAD_OUTPUT, err.message);
  t.equal(err.message, '--out s3://disks/k.raw has an endpoint with credentials in it; give them in the environment as for store URLs');
});

t.test('gs://: a cut upload names the object once, in its bucket', async (t) => {
  // Regression: the message said "upload gs://disks/cut.tar.gz in gs://disks/cut.tar.gz failed".
  const r = await relay(t, gcs.port);
  const { cut, err } = await restoreCutMidway(r, 'gs://disks/cut.tar.gz', { ...env, STORAGE_EMULATOR_HOST: r.endpoint });
  t.ok(cut, 'the server went away mid-restore');
  t.equal(err?.code, ErrorCodes.OUTPUT_IO, err?.message);
  t.match(err?.message, /^upload cut\.tar\.gz in gs:\/\/disks failed: /, 'the object, then its bucket');
});

t.test('tar: sparse maps longer than the header, and offsets past 8 GiB (base-256 numbers), extract with GNU tar', async (t) => {
  // Regression guard for the two header forms only a big or fragmented disk reaches: extension blocks, base-256.
  const { GcsTarGzSink } = await import('../../src/output/gcs-targz.js');
  const size = 9 * GiB + 5 * KiB;
  const extents = Array.from({ length: 30 }, (_, i) => ({ offset: i * MiB, length: 4 * KiB }));
  extents.push({ offset: 8 * GiB + 512 * MiB, length: 64 * KiB }, { offset: 9 * GiB, length: 5 * KiB });
  const file = path.join(dir, 'big.tar.gz');
  const sink = new GcsTarGzSink('local', fs.createWriteStream(file), size);
  await sink.prepare(async function* () {
    yield* extents.map((e) => ({ ...e }));
  });
  for (const [i, e] of extents.entries()) await sink.write(e.offset, randomData(e.length, 100 + i));
  await sink.finish();
  const x = path.join(dir, 'big');
  fs.mkdirSync(x);
  t.teardown(() => fs.rmSync(x, { recursive: true, force: true }));
  execFileSync('tar', ['-xzf', file], { cwd: x });
  const raw = path.join(x, 'disk.raw');
  t.equal(fs.statSync(raw).size, 10 * GiB, 'rounded up to 10 GiB');
  const fd = fs.openSync(raw, 'r');
  t.teardown(() => fs.closeSync(fd));
  for (const [i, e] of extents.entries()) {
    const b = Buffer.alloc(e.length + 512);
    fs.readSync(fd, b, 0, b.length, e.offset);
    if (!b.subarray(0, e.length).equals(randomData(e.length, 100 + i)) || b.subarray(e.length).some((v) => v !== 0)) {
      t.fail(`extent ${i} at ${e.offset} differs`);
      return;
    }
  }
  t.pass('every extent in place, zeros after each');
});

// The upload failed (GCS credentials whose token could not be fetched) while gzip still held a write: that write
// never called back, no drain came, and the recover hung with nothing left to run (exit 13, no message).
t.test('gs:// output: an upload that fails while a write is under way fails the restore, never hangs it', async (t) => {
  const { GcsTarGzSink } = await import('../../src/output/gcs-targz.js');
  const { Writable } = await import('node:stream');
  // Takes the first bytes and never answers (waiting for a token), then fails.
  const upload = new Writable({ highWaterMark: 1, write: () => undefined });
  setTimeout(() => upload.destroy(new Error('request to https://oauth2.googleapis.com/token failed')), 100);
  const size = 8 * MiB;
  const sink = new GcsTarGzSink('gs://disks/x.tar.gz', upload, size);
  const restore = (async () => {
    await sink.prepare(async function* () {
      yield { offset: 0, length: size };
    });
    for (let at = 0; at < size; at += MiB) await sink.write(at, randomData(MiB, 300 + at / MiB));
    await sink.finish();
  })();
  let timer: NodeJS.Timeout | undefined;
  const hung = new Promise<string>((r) => (timer = setTimeout(() => r('hung'), 20_000)));
  const outcome = await Promise.race([
    restore.then(
      () => 'finished',
      (e: RnodeError) => e.code,
    ),
    hung,
  ]);
  clearTimeout(timer);
  t.equal(outcome, ErrorCodes.OUTPUT_IO, 'the restore failed with the upload');
});

// Refused credentials on an existing blob said "a partial blob may remain at <it>: delete it before a rerun": this
// run wrote nothing there (the blob was someone's disk), and with a write-only SAS the real answer, "already exists",
// was lost behind the denied read of the blob's properties.
t.test('azblob:// onto an existing blob with refused credentials: no partial-blob note, and a write-only SAS hears it exists', async (t) => {
  const { StorageSharedKeyCredential, generateBlobSASQueryParameters, BlobSASPermissions } = await import('@azure/storage-blob');
  const taken = BlobServiceClient.fromConnectionString(env.AZURE_STORAGE_CONNECTION_STRING!)
    .getContainerClient('disks')
    .getPageBlobClient('taken.vhd');
  await taken.create(MiB);
  const wrongKey = env.AZURE_STORAGE_CONNECTION_STRING!.replace(/AccountKey=[^;]+/, `AccountKey=${Buffer.from('wrong key').toString('base64')}`);
  const denied = await recover({
    store,
    disk: 'plain',
    out: 'azblob://disks/taken.vhd',
    env: { ...env, AZURE_STORAGE_CONNECTION_STRING: wrongKey },
  }).catch((e: RnodeError) => e);
  t.equal((denied as RnodeError).code, ErrorCodes.OUTPUT_IO, (denied as Error).message);
  t.notMatch((denied as Error).message, /partial blob/, 'no partial blob to delete: the create was refused');
  const account = 'devstoreaccount1';
  const accountKey = /AccountKey=([^;]+)/.exec(env.AZURE_STORAGE_CONNECTION_STRING!)![1];
  const sas = generateBlobSASQueryParameters(
    { containerName: 'disks', permissions: BlobSASPermissions.parse('cw'), expiresOn: new Date(Date.now() + 3600_000) },
    new StorageSharedKeyCredential(account, accountKey),
  ).toString();
  const writeOnly = {
    ...env,
    AZURE_STORAGE_CONNECTION_STRING: undefined,
    AZURE_STORAGE_ACCOUNT_URL: `${azurite.endpoint}/${account}`,
    AZURE_STORAGE_SAS_TOKEN: sas,
  };
  await t.rejects(recover({ store, disk: 'plain', out: 'azblob://disks/taken.vhd', env: writeOnly }), {
    code: ErrorCodes.OUTPUT_IO,
    message: /^--out azblob:\/\/disks\/taken\.vhd already exists; delete it or choose another name$/,
  });
  t.equal((await taken.getProperties()).contentLength, MiB, 'the blob is as it was');
});

/** Restores point 1 of disk plain to out, one chunk at a time (or `concurrency`), the relay cut at the first progress report. */
async function restoreCutMidway(
  r: { cut(): void },
  out: string,
  outEnv: NodeJS.ProcessEnv,
  concurrency = 1,
): Promise<{ cut: boolean; err: RnodeError }> {
  let cut = false;
  const err = (await recover({
    store,
    disk: 'plain',
    point: '1',
    out,
    env: outEnv,
    concurrency,
    onProgress: () => {
      if (!cut) r.cut();
      cut = true;
    },
  }).catch((e: unknown) => e)) as RnodeError;
  return { cut, err };
}

t.test('azblob://: a restore cut by the server dying is OUTPUT_IO, and says the partial blob it could not delete remains', async (t) => {
  // Also with many pages in flight: the note went to the error the sink threw last, and the restore ended with the
  // first one, without it.
  for (const concurrency of [1, 16]) {
    const r = await relay(t, azurite.port);
    const cutEnv = { ...env, AZURE_STORAGE_CONNECTION_STRING: azuriteConnectionString(r.endpoint) };
    const { cut, err } = await restoreCutMidway(r, `azblob://disks/cut-${concurrency}.vhd`, cutEnv, concurrency);
    t.ok(cut, 'the server went away mid-restore');
    t.equal(err?.code, ErrorCodes.OUTPUT_IO, err?.message);
    t.equal(err?.retryable, true, 'a dropped server is still a retryable failure');
    t.equal(err?.details.storeCode, ErrorCodes.STORE_UNAVAILABLE, 'what the mapping made of it stays in the details');
    t.match(
      err?.message,
      new RegExp(`a partial blob may remain at azblob://disks/cut-${concurrency}\\.vhd: delete it before a rerun`),
      `${concurrency} in flight`,
    );
    const blob = BlobServiceClient.fromConnectionString(env.AZURE_STORAGE_CONNECTION_STRING!)
      .getContainerClient('disks')
      .getBlobClient(`cut-${concurrency}.vhd`);
    t.ok(await blob.exists(), 'the partial blob is indeed there');
    await blob.delete();
  }
});

/**
 * An HTTP proxy to `target` that drops the answer to the first request `match` picks, after the server has handled it
 * (the connection is cut instead): a request that did happen, but whose client saw only a reset.
 */
async function dropOneAnswer(
  target: number,
  match: (req: http.IncomingMessage) => boolean,
): Promise<{ endpoint: string; dropped: number; close(): Promise<void> }> {
  const state = { dropped: 0 };
  const server = http.createServer((req, res) => {
    const up = http.request({ host: '127.0.0.1', port: target, method: req.method, path: req.url, headers: req.headers }, (answer) => {
      const body: Buffer[] = [];
      answer.on('data', (c: Buffer) => body.push(c));
      answer.on('end', () => {
        if (state.dropped === 0 && match(req)) {
          state.dropped++;
          req.socket.destroy();
          return;
        }
        res.writeHead(answer.statusCode!, answer.headers);
        res.end(Buffer.concat(body));
      });
    });
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return Object.assign(state, {
    endpoint: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    close: () => new Promise<void>((r) => server.close(() => r())),
  });
}

t.test('azblob://: a create whose answer was lost carries on into the blob it made; a foreign blob is still refused', async (t) => {
  // Regression: the retried create found the blob its own first attempt had made, failed the restore as "already
  // exists" and left a footer-less blob behind that refused every rerun.
  const isCreate = (req: http.IncomingMessage) => req.method === 'PUT' && req.headers['x-ms-blob-type'] === 'PageBlob';
  const container = BlobServiceClient.fromConnectionString(env.AZURE_STORAGE_CONNECTION_STRING!).getContainerClient('disks');
  const lost = await dropOneAnswer(azurite.port, isCreate);
  t.teardown(() => lost.close());
  const lostEnv = { ...env, AZURE_STORAGE_CONNECTION_STRING: azuriteConnectionString(lost.endpoint) };
  const r = await recover({ store, disk: 'plain', point: '2', out: 'azblob://disks/lost-answer.vhd', env: lostEnv }).catch((e: Error) => e);
  t.equal(lost.dropped, 1, 'the answer to the create was dropped');
  t.notOk(r instanceof Error, `the restore succeeds (${r instanceof Error ? r.message : 'ok'})`);
  const file = path.join(dir, 'lost-answer.vhd');
  const raw = `${file}.raw`;
  t.teardown(() => fs.rmSync(file, { force: true }) || fs.rmSync(raw, { force: true }));
  await container.getPageBlobClient('lost-answer.vhd').downloadToFile(file);
  execFileSync('qemu-img', ['convert', '-f', 'vpc', '-O', 'raw', file, raw]);
  t.ok(fs.readFileSync(raw).equals(padded(images[1], MiB)), 'qemu-img convert -f vpc gives the image byte-exact');

  // A blob that was there before is someone else's: refused and left as it was, the lost answer or not.
  const foreign = container.getPageBlobClient('foreign.vhd');
  await foreign.create(MiB);
  await foreign.uploadPages(randomData(4 * KiB, 9), 0, 4 * KiB);
  const before = await foreign.getProperties();
  const again = await dropOneAnswer(azurite.port, isCreate);
  t.teardown(() => again.close());
  await t.rejects(
    recover({
      store,
      disk: 'plain',
      point: '2',
      out: 'azblob://disks/foreign.vhd',
      env: { ...env, AZURE_STORAGE_CONNECTION_STRING: azuriteConnectionString(again.endpoint) },
    }),
    { code: ErrorCodes.OUTPUT_IO, message: /--out azblob:\/\/disks\/foreign\.vhd already exists; delete it or choose another name/ },
  );
  t.equal(again.dropped, 1, 'the answer to that create was dropped too');
  const after = await foreign.getProperties();
  t.same([after.etag, after.contentLength], [before.etag, before.contentLength], 'the foreign blob is untouched');
  const head = await foreign.downloadToBuffer(0, 4 * KiB);
  t.ok(head.equals(randomData(4 * KiB, 9)), 'its data too');
});
