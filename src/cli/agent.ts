// `rnode agent`: run this node under a Management Server until SIGINT/SIGTERM. Parses and checks flags, then
// hands over to src/agent. The token is only ever read from a file.
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { checkKeyFileMode, looksLikeSecret } from '../crypto/keys.js';
import { ErrorCodes, RnodeError } from '../errors.js';
import { parseSize } from '../pipeline/grid.js';
import { readRegularFile } from '../regular-file.js';
import { required, str } from './args.js';
import type { Command } from './command.js';
import { logFormat, logLevel, metricsListen, SERVICE_OPTIONS, SERVICE_USAGE } from './service-flags.js';

/** How often the agent gives the C heaps' free pages back (trimNativeHeap: a few ms when little is free). */
const TRIM_EVERY_MS = 30_000;

function defaultStateDir(): string {
  const base = process.env.XDG_STATE_HOME || path.join(os.homedir(), '.local', 'state');
  return path.join(base, 'rnode-agent');
}

function usage(message: string): RnodeError {
  return new RnodeError(ErrorCodes.USAGE, message);
}

export const agentCommand: Command = {
  summary: 'run this node under a Management Server (registers, runs jobs and schedules, serves /metrics)',
  usage:
    'rnode agent --server ws[s]://<host>:<port> --token-file <f> [--ca <f>] [--node-name <n>] [--state-dir <d>] ' +
    `[--slots <n>] [--bandwidth <bytes/s>] ${SERVICE_USAGE} [--reconnect-max-ms <ms>]`,
  options: {
    server: { type: 'string' },
    'token-file': { type: 'string' },
    ca: { type: 'string' },
    'node-name': { type: 'string' },
    'state-dir': { type: 'string' },
    slots: { type: 'string' },
    bandwidth: { type: 'string' },
    'reconnect-max-ms': { type: 'string' },
    ...SERVICE_OPTIONS,
  },
  async run(v) {
    required(v, 'agent', 'server', 'token-file');
    const server = str(v, 'server')!; // checked by Agent.start, which never echoes it (it may hold a password)
    const tokenFile = str(v, 'token-file')!;
    if (looksLikeSecret(tokenFile))
      throw usage(
        `--token-file takes the path of a file holding the token, and was given what looks like the token itself (not shown); write it into a file (chmod 600) and pass that file`,
      );
    if (!fs.existsSync(tokenFile)) throw usage(`--token-file ${tokenFile} does not exist; put the node's token in it (one line)`);
    const tokenStat = fs.statSync(tokenFile);
    // The node reads it at every connect: a FIFO there would hang the whole node in that read.
    if (!tokenStat.isFile()) throw usage(`--token-file ${tokenFile} is not a regular file; put the node's token in a file (one line)`);
    // As for serve's token and key files: a token others can read lets them register as this node.
    checkKeyFileMode(tokenStat.mode, (why) => usage(`--token-file ${tokenFile} ${why}`), tokenFile);
    const ca = str(v, 'ca');
    if (ca !== undefined) checkCaFile(ca);
    const metrics = metricsListen(v);
    const format = logFormat(v, 'json');
    const slots = v.slots !== undefined ? wholeNumber(str(v, 'slots')!, 'slots', 1) : undefined;
    const bandwidth = v.bandwidth !== undefined ? bytesPerSecond(str(v, 'bandwidth')!) : undefined;
    const level = logLevel(v);
    const maxMs = v['reconnect-max-ms'] !== undefined ? wholeNumber(str(v, 'reconnect-max-ms')!, 'reconnect-max-ms', 100) : undefined;

    // Loaded here, not at the top: the agent's libraries (prom-client, ajv, TypeBox, pino) cost every other
    // command ~0.1-0.3 s of start-up otherwise.
    const { Agent } = await import('../agent/agent.js');
    // A process that runs for months: freed buffers go back to the system, not to a slowly growing heap; and every
    // half minute, the free pages between live small blocks too (without it RSS crept ~20 MiB in 40 minutes).
    const native = await import('../native/index.js');
    native.returnLargeFreesToSystem();
    setInterval(native.trimNativeHeap, TRIM_EVERY_MS).unref();
    const agent = await Agent.start({
      server,
      tokenFile,
      caFile: ca,
      nodeName: str(v, 'node-name'),
      stateDir: str(v, 'state-dir') ?? defaultStateDir(),
      metrics,
      slots,
      bandwidth,
      logLevel: level,
      logFormat: format,
      backoff: maxMs ? { initialMs: Math.min(500, maxMs), maxMs } : undefined,
    });
    await new Promise<void>((resolve) => {
      const stop = (sig: string) => {
        agent.log.info('signal received; stopping', { signal: sig });
        process.off('SIGINT', onInt);
        process.off('SIGTERM', onTerm);
        agent.stop().then(resolve, resolve);
      };
      const onInt = () => stop('SIGINT');
      const onTerm = () => stop('SIGTERM');
      process.on('SIGINT', onInt);
      process.on('SIGTERM', onTerm);
    });
    return 0;
  },
};

/** A CA file TLS would silently ignore (not PEM, no certificate) is refused here, naming the flag. */
function checkCaFile(file: string): void {
  const what = "pass the PEM file of the CA that signed the server's certificate";
  if (!fs.existsSync(file)) throw usage(`--ca ${file} does not exist; ${what}`);
  let pem: Buffer;
  try {
    pem = readRegularFile(file).data;
  } catch (err) {
    throw usage(`--ca ${file} cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); ${what}`);
  }
  try {
    new X509Certificate(pem);
  } catch {
    throw usage(`--ca ${file} holds no PEM certificate; ${what}`);
  }
}

function wholeNumber(text: string, flag: string, min: number): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(n) || n < min) throw usage(`--${flag} must be a whole number of at least ${min} (got "${text}")`);
  return n;
}

function bytesPerSecond(text: string): number {
  try {
    const n = parseSize(text.replace(/\/s$/, ''));
    if (n === undefined || n < 0) throw new Error();
    return n;
  } catch {
    throw usage(`--bandwidth must be bytes per second, e.g. 100MiB or 0 for unlimited (got "${text}")`);
  }
}
