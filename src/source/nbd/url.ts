// Parses NBD source URLs (the NBD URI form qemu and libnbd use, plus rnode's bitmap/checkpoint parameters):
//   nbd+unix:///<export>?socket=<path>[&bitmap=<since>][&checkpoint=<new>]
//   nbd://<host>[:<port>]/<export>[?bitmap=<since>][&checkpoint=<new>]
import { ErrorCodes, RnodeError } from '../../errors.js';
import { redact } from '../../store/schemes.js';
import type { NbdTarget } from './connection.js';

export const DEFAULT_NBD_PORT = 10809;

export interface NbdUrl {
  target: NbdTarget;
  exportName: string;
  /** Dirty bitmap recording writes since the previous point (the marker it must match). */
  bitmap?: string;
  /** Bitmap started at this point's snapshot: the marker saved with the point. */
  checkpoint?: string;
  /** Canonical form for messages and manifests (no secrets: NBD URLs carry none that rnode accepts). */
  location: string;
}

const PARAMS = new Set(['socket', 'bitmap', 'checkpoint']);

/** The URL is shown as store URLs are: without user:password@ or a secret-looking parameter's value. */
function bad(url: string, why: string): RnodeError {
  return new RnodeError(
    ErrorCodes.BAD_SOURCE,
    `NBD source "${redact(url)}" is not valid: ${why}; use nbd+unix:///EXPORT?socket=PATH or nbd://HOST:PORT/EXPORT, with optional bitmap=NAME&checkpoint=NAME`,
  );
}

function bitmapName(url: string, key: string, value: string | null): string | undefined {
  if (value === null) return undefined;
  // qemu limits bitmap names to 1023 bytes; control characters would end up in messages and manifests.
  // eslint-disable-next-line no-control-regex
  if (value.length === 0 || Buffer.byteLength(value) > 1023 || /[\u0000-\u001f\u007f]/.test(value)) {
    throw bad(url, `${key}= must be a bitmap name of 1 to 1023 printable bytes`);
  }
  return value;
}

/**
 * The query's parameters, percent-decoded as a URI's are (qemu and libnbd read them so): a '+' is a plus, not the
 * space of form encoding (a bitmap named c+1 was looked up as "c 1", and the socket p+q.sock as "p q.sock").
 */
function queryParams(url: string, search: string): Map<string, string> {
  const params = new Map<string, string>();
  for (const part of search.replace(/^\?/, '').split('&')) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    let key: string;
    let value: string;
    try {
      key = decodeURIComponent(eq < 0 ? part : part.slice(0, eq));
      value = eq < 0 ? '' : decodeURIComponent(part.slice(eq + 1));
    } catch {
      throw bad(url, 'a parameter is not valid percent-encoding');
    }
    if (!PARAMS.has(key)) throw bad(url, `parameter "${key}" is not supported`);
    // Given twice, the first would win silently: the bitmap read may not be the one meant.
    if (params.has(key)) throw bad(url, `parameter "${key}" is given more than once`);
    params.set(key, value);
  }
  return params;
}

export function parseNbdUrl(url: string): NbdUrl {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    const port = /^[a-z+]+:\/\/[^/?#]*:(\d+)(?:[/?#]|$)/i.exec(url)?.[1];
    throw bad(url, port !== undefined && Number(port) > 65535 ? `port ${port} is out of range (1 to 65535)` : 'it is not a URL');
  }
  const scheme = u.protocol.replace(/:$/, '').toLowerCase();
  if (scheme !== 'nbd' && scheme !== 'nbd+unix') {
    throw bad(url, scheme === 'nbds' || scheme === 'nbds+unix' ? 'TLS (nbds) is not supported yet' : `scheme ${scheme}: is not an NBD scheme`);
  }
  const params = queryParams(url, u.search);
  if (u.username || u.password) throw bad(url, 'NBD URLs carry no credentials');
  if (u.hash) throw bad(url, 'a #fragment has no meaning here');
  let exportName: string;
  try {
    exportName = decodeURIComponent(u.pathname.replace(/^\//, ''));
  } catch {
    throw bad(url, 'the export name is not valid percent-encoding');
  }
  if (Buffer.byteLength(exportName) > 4096) throw bad(url, 'the export name is longer than 4096 bytes');
  const bitmap = bitmapName(url, 'bitmap', params.get('bitmap') ?? null);
  const checkpoint = bitmapName(url, 'checkpoint', params.get('checkpoint') ?? null);
  const socket = params.get('socket') ?? null;

  let target: NbdTarget;
  if (scheme === 'nbd+unix') {
    if (u.host) throw bad(url, 'nbd+unix URLs take no host (three slashes: nbd+unix:///EXPORT?socket=PATH)');
    if (!socket) throw bad(url, 'socket=PATH is required');
    target = { path: socket };
  } else {
    if (socket !== null) throw bad(url, 'socket= belongs to nbd+unix URLs');
    if (!u.hostname) throw bad(url, 'a host is required');
    const port = u.port ? Number(u.port) : DEFAULT_NBD_PORT;
    if (port === 0) throw bad(url, 'port 0 is out of range (1 to 65535)');
    target = { host: u.hostname.replace(/^\[(.*)\]$/, '$1'), port };
  }

  // Slashes stay readable in socket paths; everything else that needs it is percent-encoded.
  const enc = (v: string) => encodeURIComponent(v).replace(/%2F/gi, '/');
  const q: string[] = [];
  if ('path' in target) q.push(`socket=${enc(target.path)}`);
  if (bitmap !== undefined) q.push(`bitmap=${enc(bitmap)}`);
  if (checkpoint !== undefined) q.push(`checkpoint=${enc(checkpoint)}`);
  const query = q.length ? `?${q.join('&')}` : '';
  const exp = encodeURIComponent(exportName);
  const location = 'path' in target ? `nbd+unix:///${exp}${query}` : `nbd://${u.host}${u.port ? '' : `:${DEFAULT_NBD_PORT}`}/${exp}${query}`;
  return { target, exportName, bitmap, checkpoint, location };
}
