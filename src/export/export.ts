// The export job the CLI and the agent run: opens a point of a disk (checking its key), builds the chunk cache, the
// images (read-only, or copy-on-write over an overlay) and the NBD server, and reports its URL and counters.
import type { EncryptionKey } from '../crypto/keys.js';
import { ErrorCodes, RnodeError, isRnodeError } from '../errors.js';
import { validateDiskId } from '../repository/names.js';
import { forEachBounded } from '../pipeline/bounded.js';
import { codecWorkers } from '../pipeline/codec-workers.js';
import { readDiskMarker, requireChainSeal } from '../repository/encryption.js';
import { listPointSeqs, loadChain, loadPoint, resolvePoint } from '../repository/points.js';
import { resolveFileOutput } from '../output/file.js';
import type { ObjectStore } from '../store/types.js';
import { ChunkCache, DEFAULT_CACHE_BYTES } from './chunk-cache.js';
import { ChunkIndex } from './chunk-index.js';
import type { ExportCatalog } from './handshake.js';
import { PointImage, type ExportImage } from './image.js';
import { OVERLAY_FLAG, OverlayImage } from './overlay.js';
import { checkListen, listenRefused } from './policy.js';
import { ExportServer } from './server.js';
import { StoppableReads } from './stoppable-reads.js';

export interface ExportOptions {
  store: ObjectStore;
  disk: string;
  /** A point number or 'latest' (default). */
  point?: string;
  encryption?: EncryptionKey;
  /** Where to listen: a unix socket path, or host:port. */
  socket?: string;
  host?: string;
  port?: number;
  writable?: boolean;
  overlay?: string;
  cacheBytes?: number;
  tls?: { cert: string | Buffer; key: string | Buffer };
  concurrency?: number;
  fetchTimeoutMs?: number;
  maxConnections?: number;
  handshakeTimeoutMs?: number;
  log?: (event: string, fields: Record<string, unknown>) => void;
}

/** The events of ExportOptions.log that say a client or a read went wrong (warnings); the others are info. */
export const EXPORT_WARN_EVENTS: ReadonlySet<string> = new Set([
  'chunk-read-failed',
  'request-failed',
  'client-dropped',
  'handshake-timeout',
  'connection-refused',
]);

export interface ExportStats {
  url: string;
  disk: string;
  point: number;
  writable: boolean;
  connections: number;
  activeConnections: number;
  bytesServed: number;
  bytesFetched: number;
  cacheHits: number;
  cacheMisses: number;
  /** hits / (hits + misses), 0 before the first read. */
  cacheHitRatio: number;
  cachedBytes: number;
  chunkErrors: number;
  /** Clients dropped for breaking the protocol, and connections refused over the limit. */
  protocolErrors: number;
  refusedConnections: number;
}

export interface RunningExport {
  readonly url: string;
  readonly disk: string;
  readonly point: number;
  stats(): ExportStats;
  close(): Promise<void>;
}

/** Other points of the disk (<disk>@<n>) opened at once; more are opened again on demand. */
const MAX_OTHER_POINTS = 8;
/** Manifests read at once to learn the points' chunk sizes for NBD_OPT_LIST (once per point). */
const LIST_LOADS = 8;

export async function startExport(o: ExportOptions): Promise<RunningExport> {
  const disk = validateDiskId(o.disk);
  checkListen(o);
  if (o.writable && !o.overlay)
    throw new RnodeError(ErrorCodes.USAGE, '--writable needs --overlay <file>: guest writes go there, never to the store');
  if (o.overlay && !o.writable) throw new RnodeError(ErrorCodes.USAGE, '--overlay is only used with --writable; add --writable or drop --overlay');
  // A mistaken --overlay (a directory, a missing folder, /proc) fails before the store is read, as recover's --out.
  if (o.overlay) await resolveFileOutput(o.overlay, OVERLAY_FLAG);
  // Its reads end at once when the export stops (stoppable-reads.ts).
  const store = new StoppableReads(o.store);
  // The codec workers load their modules while the point loads and the client connects: started by the first read,
  // they did it inside a copy's first second (as recover does, see restore.ts).
  codecWorkers();
  const seq = await resolvePoint(store, disk, o.point, o.encryption);
  const chain = await loadChain(store, disk, seq, o.encryption);
  // The key is checked against the manifests before anything listens: a wrong or missing key fails here.
  const marker = await readDiskMarker(store, disk, o.encryption);
  const seal = requireChainSeal(chain, o.encryption, disk, marker);
  const cache = new ChunkCache({
    store,
    disk,
    chunkSize: chain[0].chunkSize,
    seal,
    cacheBytes: o.cacheBytes ?? DEFAULT_CACHE_BYTES,
    concurrency: o.concurrency,
    fetchTimeoutMs: o.fetchTimeoutMs,
    log: o.log,
  });
  // Retention rebases a kept point under a running export: its chain as the store holds it then, the key checked again.
  const reload = (n: number) => async () => {
    const c = await loadChain(store, disk, n, o.encryption);
    requireChainSeal(c, o.encryption, disk, marker);
    return c;
  };
  let main: ExportImage = new PointImage(new ChunkIndex(store, chain, undefined, seal?.key, reload(seq)), cache);
  let server: ExportServer | undefined;
  try {
    if (o.writable) main = await OverlayImage.open(o.overlay!, main, { disk, point: seq, size: main.size, createdAt: chain[0].createdAt });
    const others = new Map<number, Promise<ExportImage>>();
    // The cache and the index serve one chunk size: a point of another (the disk replicated with another
    // --chunk-size) is left out of the list and refused by name, with one warning per point.
    const sizes = new Map<number, number>();
    const warned = new Set<number>();
    const otherSize = (n: number, size: number): RnodeError => {
      const err = new RnodeError(
        ErrorCodes.USAGE,
        `point ${n} of disk ${disk} has chunks of ${size} bytes, this export's ${chain[0].chunkSize}: export it on its own (--point ${n})`,
      );
      if (!warned.has(n)) {
        warned.add(n);
        o.log?.('request-failed', { export: `${disk}@${n}`, code: err.code, message: err.message });
      }
      return err;
    };
    const catalog: ExportCatalog = {
      async list() {
        if (o.writable) return [disk];
        const seqs = await listPointSeqs(store, disk, o.encryption);
        const unknown = seqs.filter((n) => !sizes.has(n));
        await forEachBounded(
          (async function* () {
            yield* unknown;
          })(),
          LIST_LOADS,
          async (n) => {
            // A point that cannot be read now is listed: opening it says why.
            const m = await loadPoint(store, disk, n, o.encryption).catch(() => undefined);
            if (m) sizes.set(n, m.chunkSize);
          },
        );
        const served = seqs.filter((n) => {
          const size = sizes.get(n);
          if (size === undefined || size === chain[0].chunkSize) return true;
          otherSize(n, size);
          return false;
        });
        return [disk, ...served.map((n) => `${disk}@${n}`)];
      },
      async resolve(name) {
        if (name === '' || name === disk || name === `${disk}@${seq}`) return main;
        const m = /^(.+)@(\d{1,10})$/.exec(name);
        // A writable export serves only the point its overlay sits on: other points would silently ignore the writes.
        if (!m || m[1] !== disk || o.writable) return undefined;
        const n = Number(m[2]);
        let p = others.get(n);
        if (!p) {
          if (others.size >= MAX_OTHER_POINTS) others.delete(others.keys().next().value!);
          p = loadChain(store, disk, n, o.encryption).then((c) => {
            sizes.set(n, c[0].chunkSize);
            if (c[0].chunkSize !== chain[0].chunkSize) throw otherSize(n, c[0].chunkSize);
            const s = requireChainSeal(c, o.encryption, disk, marker);
            return new PointImage(new ChunkIndex(store, c, undefined, s?.key, reload(n)), cache) as ExportImage;
          });
          others.set(n, p);
          p.catch(() => others.delete(n));
        }
        try {
          return await p;
        } catch (err) {
          if (isRnodeError(err, ErrorCodes.POINT_NOT_FOUND)) return undefined;
          throw err;
        }
      },
    };
    server = await ExportServer.start({
      catalog,
      socket: o.socket,
      host: o.host,
      port: o.port,
      tls: o.tls,
      maxConnections: o.maxConnections,
      handshakeTimeoutMs: o.handshakeTimeoutMs,
      log: o.log,
    });
  } catch (err) {
    await main.close?.().catch(() => undefined);
    await cache.close();
    throw listenError(err, o);
  }
  const url = exportUrl({ socket: o.socket, host: o.host, port: server.port }, disk, !!o.tls);
  const srv = server;
  let closing: Promise<void> | undefined;
  return {
    url,
    disk,
    point: seq,
    stats(): ExportStats {
      const c = cache.stats;
      const lookups = c.hits + c.misses;
      return {
        url,
        disk,
        point: seq,
        writable: !!o.writable,
        connections: srv.stats.connections,
        activeConnections: srv.stats.activeConnections,
        bytesServed: srv.stats.bytesServed,
        bytesFetched: c.bytesFetched,
        cacheHits: c.hits,
        cacheMisses: c.misses,
        cacheHitRatio: lookups ? c.hits / lookups : 0,
        cachedBytes: c.cachedBytes,
        chunkErrors: c.errors,
        protocolErrors: srv.stats.protocolErrors,
        refusedConnections: srv.stats.refused,
      };
    },
    close() {
      closing ??= (async () => {
        const sessionsEnd = srv.close(); // closes every client connection at once, then waits for the sessions
        store.stop(); // whose requests still waiting on the store would otherwise hold them (and the overlay's flush)
        await sessionsEnd;
        await main.close?.();
        await cache.close();
      })();
      return closing;
    },
  };
}

/** nbd+unix:///<disk>?socket=<path>, nbd://host:port/<disk>, or nbds... with TLS: what qemu, libnbd and rnode replicate take. */
export function exportUrl(at: { socket?: string; host?: string; port?: number }, disk: string, tls: boolean): string {
  const scheme = tls ? 'nbds' : 'nbd';
  if (at.socket) return `${scheme}+unix:///${encodeURIComponent(disk)}?socket=${encodeURI(at.socket)}`;
  const host = (at.host ?? '127.0.0.1').includes(':') ? `[${at.host}]` : (at.host ?? '127.0.0.1');
  return `${scheme}://${host}:${at.port}/${encodeURIComponent(disk)}`;
}

function listenError(err: unknown, o: ExportOptions): unknown {
  const e = err as NodeJS.ErrnoException;
  const where = o.socket ?? `${o.host}:${o.port}`;
  if (e?.code === 'EADDRINUSE' || e?.code === 'EACCES' || e?.code === 'EADDRNOTAVAIL' || e?.code === 'ENOENT') {
    return listenRefused(where, e.code);
  }
  if (o.tls && /key|cert|pem|asn1/i.test(e?.message ?? '')) {
    return new RnodeError(ErrorCodes.USAGE, `cannot use the TLS certificate/key: ${e.message}; pass a PEM certificate and its private key`);
  }
  return err;
}
