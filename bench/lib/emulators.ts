// Starts the real storage servers the cloud backends are tested and benchmarked against (s3rver, Azurite, the
// firebase GCS emulator), each in a child process on 127.0.0.1 port 0, and always stops them. Used by
// test/store and by bench/sections/clouds.ts (the tests import it as TypeScript; the bench compiles it).

import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';

const require = createRequire(import.meta.url);
const STARTUP_TIMEOUT_MS = 60_000;
/** The project the GCS emulator serves; clients pass it as GOOGLE_CLOUD_PROJECT. */
export const GCS_PROJECT = 'demo-test';

export interface RunningServer {
  /** http://127.0.0.1:PORT */
  endpoint: string;
  port: number;
  /** The folder the server keeps its data in; stop() removes it. */
  dir: string;
  stop(): Promise<void>;
}

/**
 * Runs `node -e script` and waits for a stdout line matching `ready` whose first group is the port.
 * The child is killed on timeout, on stop(), and when this process exits.
 */
async function startChild(name: string, args: string[], ready: RegExp, env: NodeJS.ProcessEnv, dir: string): Promise<RunningServer> {
  const child = spawn(process.execPath, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);
  let output = '';
  const stop = async () => {
    process.removeListener('exit', killOnExit);
    await killChild(child);
    await rm(dir, { recursive: true, force: true });
  };
  try {
    const port = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${name} did not start within ${STARTUP_TIMEOUT_MS} ms:\n${output}`)), STARTUP_TIMEOUT_MS);
      const onData = (d: Buffer) => {
        output += d.toString();
        const m = ready.exec(output);
        if (m) {
          clearTimeout(timer);
          resolve(Number(m[1]));
        }
      };
      child.stdout!.on('data', onData);
      child.stderr!.on('data', (d: Buffer) => {
        output += d.toString();
      });
      child.once('exit', (code, sig) => {
        clearTimeout(timer);
        reject(new Error(`${name} exited (${code ?? sig}) before it was ready:\n${output}`));
      });
      child.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
    });
    // Keep draining the pipes so a chatty server never blocks on a full pipe.
    child.stdout!.resume();
    child.stderr!.resume();
    return { endpoint: `http://127.0.0.1:${port}`, port, dir, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

async function killChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
  await exited;
  clearTimeout(timer);
}

/** s3rver; paged listings need the legacy OpenSSL provider in *its* process (ENVIRONMENT.md). */
export async function startS3rver(parent = tmpdir()): Promise<RunningServer> {
  const dir = await mkdtemp(path.join(parent, 'rnode-s3rver-'));
  const script = `
    const S3rver = require(${JSON.stringify(require.resolve('s3rver'))});
    new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory: ${JSON.stringify(dir)} })
      .run().then(({ port }) => console.log('S3RVER_PORT=' + port), (e) => { console.error(e); process.exit(1); });`;
  return startChild('s3rver', ['-e', script], /S3RVER_PORT=(\d+)/, { ...process.env, NODE_OPTIONS: '--openssl-legacy-provider' }, dir);
}

/** Azurite's blob service, persisted in a temp directory. */
export async function startAzurite(parent = tmpdir()): Promise<RunningServer> {
  const dir = await mkdtemp(path.join(parent, 'rnode-azurite-'));
  const main = path.join(path.dirname(require.resolve('azurite/package.json')), 'dist/src/blob/main.js');
  return startChild(
    'azurite',
    [main, '--blobHost', '127.0.0.1', '--blobPort', '0', '--location', dir, '--skipApiVersionCheck', '--silent', '--disableTelemetry'],
    /successfully listens on http:\/\/127\.0\.0\.1:(\d+)/,
    process.env,
    dir,
  );
}

/** Azurite's well-known development account. */
export function azuriteConnectionString(endpoint: string): string {
  return (
    'DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;' +
    'AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;' +
    `BlobEndpoint=${endpoint}/devstoreaccount1;`
  );
}

/**
 * The firebase-tools storage emulator, in its own process (it is heavy and keeps handles open).
 * Its rules runtime needs Java, so it is replaced by no-ops; it then serves the GCS JSON API.
 * Port 0 is not supported by the emulator, so a free port is picked first. Each server keeps its data in a
 * fresh directory under `parent`, removed by stop().
 */
export async function startGcsEmulator(parent = tmpdir()): Promise<RunningServer> {
  const dir = await mkdtemp(path.join(parent, 'rnode-gcs-'));
  const lib = path.join(path.dirname(require.resolve('firebase-tools/package.json')), 'lib/emulator');
  const script = `
    const net = require('net');
    const srv = net.createServer().listen(0, '127.0.0.1', async () => {
      const port = srv.address().port;
      srv.close(async () => {
        try {
          const { StorageEmulator } = require(${JSON.stringify(path.join(lib, 'storage'))});
          const { EmulatorRegistry } = require(${JSON.stringify(path.join(lib, 'registry'))});
          const emu = new StorageEmulator({ projectId: ${JSON.stringify(GCS_PROJECT)}, host: '127.0.0.1', port, auto_download: false });
          for (const o of [emu._rulesRuntime, emu._rulesManager]) { if (o) { o.start = async () => {}; o.stop = async () => {}; } }
          await EmulatorRegistry.start(emu);
          console.log('GCS_PORT=' + port);
        } catch (e) { console.error(e); process.exit(1); }
      });
    });`;
  // TMPDIR too: the emulator keeps every blob under os.tmpdir()/firebase/storage and never removes them (a shared
  // /tmp gathered 2.9 GB over test runs); under dir, stop() removes them with the rest.
  const env = { ...process.env, HOME: dir, TMPDIR: dir };
  // The port is free when picked, but another server started meanwhile (tests run in parallel) may take it first.
  for (let attempt = 1; ; attempt++) {
    try {
      return await startChild('gcs emulator', ['-e', script], /GCS_PORT=(\d+)/, env, dir);
    } catch (err) {
      if (attempt === 3 || !/EADDRINUSE/.test((err as Error).message)) throw err;
      await mkdir(dir, { recursive: true }); // startChild's stop() removed it
    }
  }
}
