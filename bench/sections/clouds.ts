// Replicate and recover a 256 MiB mixed image into each cloud emulator (s3rver, Azurite, the firebase GCS
// emulator), each started here on 127.0.0.1 in a child process, as ratios to the same replicate/recover into a
// local fs store measured in this section; then recover --out from each emulator's store into a cloud disk object
// there. Library calls in this process, stores opened through openStore (the wrappers in the path), so the figures
// are the cloud backends plus their emulator, not the CLI.
// The emulators are not the clouds: their speed says little about S3/Azure/GCS; the ratio shows what the
// protocol path (HTTP, SDK, per-object requests) costs against local files on this machine.
// Objects and PUTs per GiB of disk: the objects the replicate left in each store (listed) and the puts the store
// wrapper's metrics counted (every attempt), for this build (repository v2: packs) and, when RNODE_BENCH_LEGACY
// names the dist/index.js of a build of the previous release (one object per chunk), for that build too, into
// the same emulator under another prefix.
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { BlobServiceClient } from '@azure/storage-blob';
import { pathToFileURL } from 'node:url';
import { openSource, openStore, recover, replicate, type ObjectStore, type WrappedStore } from 'replication-node';
import { generateSampleDisk } from 'replication-node/testing';
import type { Section, SectionContext } from '../lib/context.js';
import { azuriteConnectionString, GCS_PROJECT, startAzurite, startGcsEmulator, startS3rver } from '../lib/emulators.js';
import { fmt, ratioOf, type Row } from '../lib/report.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const MB = 1e6;
const IMAGE_SIZE = 256 * MiB;
const DISK = 'bench';

interface Target {
  name: string;
  /** What recover --out writes there (rows only). */
  out?: string;
  /**
   * Starts the server (if any) and opens the store; `done` stops and cleans up; `out`: a cloud disk output there;
   * `at(prefix)`: the location (and env) of another store on the same server (the legacy build's run).
   */
  open(dir: string): Promise<{
    store: WrappedStore;
    done(): Promise<void>;
    out?: { url: string; env: NodeJS.ProcessEnv };
    at(prefix: string): { url: string; env: NodeJS.ProcessEnv };
  }>;
}

const targets: Target[] = [
  {
    name: 'local fs',
    async open(dir) {
      const store = await openStore(path.join(dir, 'store'));
      return { store, done: () => store.close(), at: (prefix) => ({ url: path.join(dir, prefix), env: {} }) };
    },
  },
  {
    name: 's3rver',
    out: 's3:// raw',
    async open(dir) {
      const server = await startS3rver(dir);
      const c = new S3Client({
        endpoint: server.endpoint,
        forcePathStyle: true,
        region: 'us-east-1',
        credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
      });
      await c.send(new CreateBucketCommand({ Bucket: 'rnode-bench' }));
      c.destroy();
      // s3rver does not enforce conditional puts (docs/stores.md).
      const env = { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER' };
      const store = await openStore(`s3://rnode-bench/b?endpoint=${server.endpoint}&forcePathStyle=true&conditional=off`, { env });
      return {
        store,
        done: async () => {
          await store.close();
          await server.stop();
        },
        out: { url: `s3://rnode-bench/out/disk.raw?endpoint=${server.endpoint}&forcePathStyle=true`, env },
        at: (prefix) => ({ url: `s3://rnode-bench/${prefix}?endpoint=${server.endpoint}&forcePathStyle=true&conditional=off`, env }),
      };
    },
  },
  {
    name: 'Azurite',
    out: 'azblob:// VHD page blob',
    async open(dir) {
      const server = await startAzurite(dir);
      const conn = azuriteConnectionString(server.endpoint);
      await BlobServiceClient.fromConnectionString(conn).getContainerClient('rnode-bench').create();
      const env = { AZURE_STORAGE_CONNECTION_STRING: conn };
      const store = await openStore('azblob://rnode-bench/b', { env });
      return {
        store,
        done: async () => {
          await store.close();
          await server.stop();
        },
        out: { url: 'azblob://rnode-bench/out/disk.vhd', env },
        at: (prefix) => ({ url: `azblob://rnode-bench/${prefix}`, env }),
      };
    },
  },
  {
    name: 'GCS emulator',
    out: 'gs:// tar.gz',
    async open(dir) {
      const server = await startGcsEmulator(dir);
      // The emulator does not enforce ifGenerationMatch (docs/stores.md).
      const env = { STORAGE_EMULATOR_HOST: server.endpoint, GOOGLE_CLOUD_PROJECT: GCS_PROJECT };
      const store = await openStore('gs://rnode-bench/b?conditional=off', { env });
      return {
        store,
        done: async () => {
          await store.close();
          await server.stop();
        },
        out: { url: 'gs://rnode-bench/out/disk.tar.gz', env },
        at: (prefix) => ({ url: `gs://rnode-bench/${prefix}?conditional=off`, env }),
      };
    },
  },
];

async function sha256(file: string): Promise<string> {
  const h = crypto.createHash('sha256');
  for await (const piece of fs.createReadStream(file, { highWaterMark: 8 * MiB })) h.update(piece as Buffer);
  return h.digest('hex');
}

/** Objects listed in a store and puts its wrapper counted, after one full replicate. */
interface Requests {
  objects: number;
  puts: number;
}

async function countObjects(store: ObjectStore): Promise<number> {
  let n = 0;
  for await (const _ of store.list('')) n++;
  return n;
}

/** The library of a build of the previous release (RNODE_BENCH_LEGACY = its dist/index.js), or undefined. */
async function legacyBuild(): Promise<typeof import('replication-node') | undefined> {
  const where = process.env.RNODE_BENCH_LEGACY;
  return where ? import(pathToFileURL(path.resolve(where)).href) : undefined;
}

/** Pack-sized objects the store's own put rate is measured with, as many in flight as replicate puts packs. */
const CEILING_OBJECT = 16 * MiB;
const CEILING_OBJECTS = 8;
const CEILING_IN_FLIGHT = 2;

/**
 * Bytes/s the store takes in pack-sized puts with nothing else running: the ceiling a replicate into it can reach
 * (in stored bytes), measured on the same server right before, under a prefix of its own that is removed after.
 */
async function putCeiling(store: ObjectStore): Promise<number> {
  const body = crypto.randomBytes(CEILING_OBJECT);
  const keys = Array.from({ length: CEILING_OBJECTS }, (_, i) => `bench-ceiling/${i}`);
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: CEILING_IN_FLIGHT }, async () => {
      while (next < keys.length) await store.put(keys[next++], body);
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  for (const k of keys) await store.delete(k);
  return (CEILING_OBJECT * CEILING_OBJECTS) / seconds;
}

interface Measured {
  /** Stored bytes/s of the replicate, and the store's put ceiling (putCeiling) measured before it. */
  storedRate?: number;
  ceiling?: number;
  v2?: Requests;
  legacy?: Requests;
  replicate: number | null;
  recover: number | null;
  /** recover --out into the emulator's own cloud disk object (from its store), MB/s of disk. */
  recoverOut: number | null;
  note: string;
}

export const clouds: Section = {
  name: 'clouds',
  title: 'replicate and recover of a 256 MiB mixed image into s3rver, Azurite and the GCS emulator, against a local fs store',
  // Image + one target's stored objects (at most the image) + the restored file; each target is removed after it.
  spaceNeeded: () => 3 * IMAGE_SIZE,

  async run(ctx: SectionContext): Promise<Row[]> {
    const image = path.join(ctx.dir, 'mixed-256m.img');
    await generateSampleDisk(image, { size: IMAGE_SIZE, seed: 1 });
    const want = await sha256(image);
    ctx.say(
      `image: ${IMAGE_SIZE / MiB} MiB mixed (generateSampleDisk), library calls in-process, default chunk size; ` +
        'emulators on 127.0.0.1 in child processes; s3rver and the GCS emulator with conditional=off',
    );

    const legacy = await legacyBuild();
    ctx.say(
      legacy
        ? `legacy figures: the build at RNODE_BENCH_LEGACY=${process.env.RNODE_BENCH_LEGACY}, same image, same emulators`
        : 'legacy figures: not measured (set RNODE_BENCH_LEGACY to the dist/index.js of a build of the previous release)',
    );
    const results = new Map<string, Measured>();
    for (const target of targets) {
      const dir = path.join(ctx.dir, target.name.replace(/\W+/g, '-'));
      await fsp.mkdir(dir, { recursive: true });
      const m: Measured = { replicate: null, recover: null, recoverOut: null, note: '' };
      results.set(target.name, m);
      let opened: Awaited<ReturnType<Target['open']>> | undefined;
      try {
        opened = await target.open(dir);
        m.ceiling = await putCeiling(opened.store);
        await ctx.settle(image);
        const source = await openSource(image);
        let rep;
        try {
          rep = await replicate({ store: opened.store, source, disk: DISK });
        } finally {
          await source.close();
        }
        m.replicate = IMAGE_SIZE / MB / rep.seconds;
        m.storedRate = rep.bytesWritten / rep.seconds;
        m.v2 = { objects: await countObjects(opened.store), puts: opened.store.metrics().ops.put.calls };
        const out = path.join(ctx.dir, 'restored.img');
        const rec = await recover({ store: opened.store, disk: DISK, out });
        m.recover = IMAGE_SIZE / MB / rec.seconds;
        const exact = (await sha256(out)) === want;
        await fsp.rm(out, { force: true });
        m.note = `stored ${fmt(rep.bytesWritten / MB, 'MB')} in ${rep.chunksChanged} chunks; restore ${exact ? 'byte-exact' : 'MISMATCH'}`;
        if (!exact) throw new Error(`${target.name}: restored image differs from the source`);
        if (opened.out) {
          const r = await recover({ store: opened.store, disk: DISK, out: opened.out.url, env: opened.out.env });
          m.recoverOut = IMAGE_SIZE / MB / r.seconds;
          m.note += `; --out ${r.out}: ${fmt(r.bytesWritten / MB, 'MB')} of disk data sent (before gzip for gs)`;
        }
        if (legacy) {
          const at = opened.at('legacy');
          const ls = await legacy.openStore(at.url, { env: at.env });
          const src = await legacy.openSource(image);
          try {
            await legacy.replicate({ store: ls, source: src, disk: DISK });
            m.legacy = { objects: await countObjects(ls), puts: ls.metrics().ops.put.calls };
          } finally {
            await src.close();
            await ls.close();
          }
        }
        ctx.log(`clouds: ${target.name}: replicate ${fmt(m.replicate, 'MB/s')}, recover ${fmt(m.recover, 'MB/s')}`);
      } catch (err) {
        m.note = `failed: ${(err as Error).message.split('\n')[0]}`;
        ctx.log(`clouds: ${target.name}: ${m.note}`);
      } finally {
        await opened?.done().catch(() => undefined);
        await fsp.rm(dir, { recursive: true, force: true });
      }
    }

    const local = results.get('local fs')!;
    const rows: Row[] = [];
    const perGiB = (n: number) => (n * GiB) / IMAGE_SIZE;
    for (const target of targets) {
      const m = results.get(target.name)!;
      for (const what of ['objects', 'puts'] as const) {
        const v2 = m.v2 ? perGiB(m.v2[what]) : null;
        const old = m.legacy ? perGiB(m.legacy[what]) : undefined;
        rows.push({
          name: `${what === 'objects' ? 'objects' : 'PUTs'} per GiB of disk → ${target.name}`,
          value: v2,
          unit: what === 'objects' ? 'objects' : 'PUTs',
          ...(old !== undefined ? { baseline: { name: 'legacy build, same run', value: old } } : {}),
          ratio: ratioOf(v2, old),
          note: what === 'objects' ? 'objects listed after one full point of the image' : 'store puts counted by the wrapper metrics (every attempt)',
        });
      }
    }
    for (const op of ['replicate', 'recover'] as const) {
      for (const target of targets.slice(1)) {
        const m = results.get(target.name)!;
        rows.push({
          name: `${op} → ${target.name}`,
          value: m[op],
          unit: 'MB/s',
          baseline: local[op] === null ? undefined : { name: `${op} → local fs`, value: local[op]!, unit: 'MB/s' },
          ratio: ratioOf(m[op], local[op]),
          ...(op === 'replicate'
            ? { target: { text: '>= 0.6x local fs', pass: m[op] === null || local[op] === null ? undefined : m[op]! / local[op]! >= 0.6 } }
            : {}),
          note: m.note,
        });
      }
    }
    for (const target of targets) {
      const m = results.get(target.name)!;
      const ceiling = m.ceiling === undefined ? null : m.ceiling / MB;
      const stored = m.storedRate === undefined ? null : m.storedRate / MB;
      rows.push({
        name: `replicate → ${target.name}, stored bytes/s`,
        value: stored,
        unit: 'MB/s',
        baseline: ceiling === null ? undefined : { name: "the store's own put rate of 16 MiB objects", value: ceiling, unit: 'MB/s' },
        ratio: ratioOf(stored, ceiling),
        note:
          `the ceiling: ${CEILING_OBJECTS} objects of ${CEILING_OBJECT / MiB} MiB put through the same store, ${CEILING_IN_FLIGHT} in flight ` +
          '(as replicate puts packs), nothing else running; a replicate cannot store faster than its store takes bytes',
      });
    }
    for (const target of targets.slice(1)) {
      const m = results.get(target.name)!;
      rows.push({
        name: `recover --out ${target.out} (from ${target.name})`,
        value: m.recoverOut,
        unit: 'MB/s',
        baseline: m.recover === null ? undefined : { name: `recover → ${target.name} to a local file`, value: m.recover, unit: 'MB/s' },
        ratio: ratioOf(m.recoverOut, m.recover),
        note: 'the cloud disk object streamed straight from the store, no local copy',
      });
    }
    return rows;
  },
};
