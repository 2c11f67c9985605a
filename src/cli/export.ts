// `rnode export`: serves a point as an NBD export at once (instant recovery), prints its URL when ready and
// runs until SIGINT/SIGTERM, then stops cleanly (overlay flushed, store closed). Its log lines (clients, failed
// reads, the stop) are the project's pino lines on stderr, like serve's and the agent's.
import { ErrorCodes, RnodeError } from '../errors.js';
import { ENCRYPTION_OPTIONS, ENCRYPTION_USAGE, encryptionKeyFrom, required, str } from './args.js';
import type { Command } from './command.js';
import { LOG_OPTIONS, LOG_USAGE, logFormat, logLevel } from './service-flags.js';
import { isRemoteLocation, openStoreFromFlags, REMOTE_OPTIONS, REMOTE_USAGE } from './store-flags.js';

export const exportCmd: Command = {
  summary: 'serve a point as an NBD export at once (instant recovery), nothing copied first',
  usage: `rnode export --store <store> --disk <id> [--point <n>|latest] [--listen <host:port> | --socket <path>] [--writable --overlay <file>] [--cache <bytes>] [--tls-cert <f> --tls-key <f>] ${ENCRYPTION_USAGE} ${REMOTE_USAGE} ${LOG_USAGE} [--json]`,
  options: {
    store: { type: 'string' },
    disk: { type: 'string' },
    point: { type: 'string' },
    listen: { type: 'string' },
    socket: { type: 'string' },
    writable: { type: 'boolean' },
    overlay: { type: 'string' },
    cache: { type: 'string' },
    'tls-cert': { type: 'string' },
    'tls-key': { type: 'string' },
    ...ENCRYPTION_OPTIONS,
    ...REMOTE_OPTIONS,
    ...LOG_OPTIONS,
  },
  async run(v, io) {
    required(v, 'export', 'store', 'disk');
    // Loaded when export runs, not when any command starts (see commands.ts).
    const [{ assertOverlayOutsideStore, EXPORT_WARN_EVENTS, startExport }, { readPemFile, readTokenFile }] = await Promise.all([
      import('../export/index.js'),
      import('../transport/index.js'),
    ]);
    const where = listenAt(str(v, 'listen'), str(v, 'socket'));
    if ((v['tls-cert'] === undefined) !== (v['tls-key'] === undefined))
      throw new RnodeError(ErrorCodes.USAGE, 'TLS needs both --tls-cert and --tls-key');
    const tls =
      v['tls-cert'] !== undefined
        ? { cert: readPemFile(str(v, 'tls-cert')!, 'TLS certificate'), key: readPemFile(str(v, 'tls-key')!, 'TLS key', { privateKey: true }) }
        : undefined;
    const cacheBytes = v.cache !== undefined ? parseBytes(str(v, 'cache')!) : undefined;
    const overlay = str(v, 'overlay');
    const location = str(v, 'store')!;
    if (overlay) assertOverlayOutsideStore(overlay, location);
    const encryption = encryptionKeyFrom(v);
    const json = v.json === true;
    // Text lines unless told: JSON with --json, or --log-format.
    const format = logFormat(v, json ? 'json' : 'text');
    const level = logLevel(v);
    // Loaded here, not at the top: pino would cost every other command its start-up.
    const { Logger } = await import('../log.js');
    const logger = Logger.create({ format, level, sink: { write: (line) => io.err(line.replace(/\n$/, '')) } });
    // The ws store reads its token itself; the logger learns it too, so no line can carry it.
    const tokenFile = str(v, 'token-file');
    if (tokenFile !== undefined && isRemoteLocation(location)) logger.addSecret(readTokenFile(tokenFile));
    const log = (event: string, fields: Record<string, unknown>) => logger.log(EXPORT_WARN_EVENTS.has(event) ? 'warn' : 'info', event, fields);
    const store = await openStoreFromFlags(location, v);
    let exp;
    try {
      exp = await startExport({
        store,
        disk: str(v, 'disk')!,
        point: str(v, 'point'),
        encryption,
        ...where,
        writable: v.writable === true,
        overlay,
        cacheBytes,
        tls,
        log,
      });
    } catch (err) {
      await store.close();
      throw err;
    }
    const serving = { url: exp.url, disk: exp.disk, point: exp.point, writable: v.writable === true, tls: !!tls };
    log('serving', serving);
    if (json) io.out(JSON.stringify(serving));
    else io.out(`serving point ${exp.point} of disk ${exp.disk}${v.writable ? ` (writable, overlay ${overlay})` : ' (read-only)'} at ${exp.url}`);
    await new Promise<void>((resolve) => {
      const stop = () => {
        process.off('SIGINT', stop);
        process.off('SIGTERM', stop);
        resolve();
      };
      process.on('SIGINT', stop);
      process.on('SIGTERM', stop);
    });
    const s = exp.stats();
    log('stopping', { connections: s.connections, bytesServed: s.bytesServed, cacheHitRatio: Number(s.cacheHitRatio.toFixed(3)) });
    await exp.close();
    await store.close();
    return 0;
  },
};

function listenAt(listen: string | undefined, socket: string | undefined): { socket?: string; host?: string; port?: number } {
  if (listen !== undefined && socket !== undefined) throw new RnodeError(ErrorCodes.USAGE, 'pass either --listen or --socket, not both');
  if (socket !== undefined) return { socket };
  if (listen === undefined) return { host: '127.0.0.1', port: 10809 };
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(listen);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new RnodeError(ErrorCodes.USAGE, `--listen must be host:port, e.g. 127.0.0.1:10809 (got "${listen}")`);
  return { host: m[1] ?? (m[2] || '127.0.0.1'), port };
}

/** 256MiB, 1GiB, 64M, or plain bytes. */
export function parseBytes(text: string): number {
  const m = /^(\d+)\s*(|k|m|g|t)(?:i?b)?$/i.exec(text.trim());
  const mult: Record<string, number> = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 };
  const n = m ? Number(m[1]) * mult[m[2].toLowerCase()] : NaN;
  if (!Number.isSafeInteger(n) || n < 1) throw new RnodeError(ErrorCodes.USAGE, `--cache must be a size such as 256MiB or 1GiB (got "${text}")`);
  return n;
}
