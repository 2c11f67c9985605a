// Where an export may listen: a unix socket or loopback in the clear; anywhere else only with TLS, because an
// NBD export hands out a whole disk to whoever connects.
import net from 'node:net';
import { ErrorCodes, RnodeError } from '../errors.js';

export function isLoopback(host: string): boolean {
  if (host === 'localhost') return true;
  if (net.isIPv4(host)) return host.startsWith('127.');
  if (net.isIPv6(host)) return host === '::1' || /^::ffff:127\./i.test(host);
  return false;
}

export function checkListen(o: { socket?: string; host?: string; port?: number; tls?: unknown }): void {
  if (o.socket !== undefined && o.host !== undefined) throw new RnodeError(ErrorCodes.USAGE, 'pass either --socket or --listen, not both');
  if (o.socket !== undefined) return;
  const host = o.host ?? '127.0.0.1';
  if (!isLoopback(host) && !o.tls) {
    throw new RnodeError(
      ErrorCodes.EXPORT_INSECURE,
      `refusing to export a disk on ${host} without TLS: anyone who reaches it could read the disk; ` +
        'pass --tls-cert and --tls-key, or listen on --socket <path> or 127.0.0.1',
    );
  }
}

/** Why an export cannot listen where it was asked: code is an errno, optionally with what it means here. */
export function listenRefused(where: string, code: string, advice = 'pick another --listen address, port or --socket path'): RnodeError {
  return new RnodeError(ErrorCodes.USAGE, `cannot listen on ${where} (${code}); ${advice}`);
}
