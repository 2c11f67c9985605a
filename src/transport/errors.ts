// Stable error codes of the peer link (RNODE_TRANSPORT_*), each with a sentence that says what to do.
// They reuse RnodeError, so the CLI maps them like every other operational failure (exit 1).
import { RnodeError } from '../errors.js';

export const TransportErrorCodes = {
  /** Missing or wrong bearer token: nothing was accepted. */
  AUTH: 'RNODE_TRANSPORT_AUTH',
  /** The peer sent bytes that are not a valid frame or message (or broke the credit/sequence rules). */
  PROTOCOL: 'RNODE_TRANSPORT_PROTOCOL',
  /** The peer speaks a protocol version this node does not. */
  VERSION: 'RNODE_TRANSPORT_VERSION',
  /** TLS failed: untrusted certificate, pin mismatch, unreadable cert/key files. */
  TLS: 'RNODE_TRANSPORT_TLS',
  /** The receiving node could not be reached (or stayed unreachable past the reconnect budget). */
  UNREACHABLE: 'RNODE_TRANSPORT_UNREACHABLE',
  /** A handshake, request or idle connection took longer than allowed. */
  TIMEOUT: 'RNODE_TRANSPORT_TIMEOUT',
  /** The receiving node is at --max-sessions. */
  BUSY: 'RNODE_TRANSPORT_BUSY',
  /** The receiving node validated an object and refused to store it (bad chunk, bad table, unknown key). */
  REJECTED: 'RNODE_TRANSPORT_REJECTED',
  /** The store was closed while requests were pending. */
  CLOSED: 'RNODE_TRANSPORT_CLOSED',
} as const;

const TLS_ERRNO = /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ERR_TLS|SSL|EPROTO/;

/** True when a socket error is TLS failing (untrusted or mismatched certificate, handshake), not the network. */
export function isTlsFailure(err: Error & { code?: string }): boolean {
  return TLS_ERRNO.test(err.code ?? '') || /certificate|ssl|tls/i.test(err.message);
}

/**
 * What a TLS handshake with a server that answers in plain text looks like to OpenSSL (a ws:// node, or an HTTP
 * server, behind a wss:// URL): no --ca or pin can help there.
 */
export function isPlainTextPeer(err: Error): boolean {
  return /wrong version number|packet length too long|http request/i.test(err.message);
}

/** An OpenSSL error as one line: its reason, without the source file and line it appends after a newline. */
export function oneLineTlsError(err: Error): string {
  const first = err.message.split('\n')[0];
  const reason = /:SSL routines:[^:]*:([^:]+)/.exec(first)?.[1];
  return reason ?? first.replace(/\s+$/, '');
}

export function transportError(
  code: string,
  message: string,
  opts: { cause?: unknown; retryable?: boolean; details?: Record<string, unknown> } = {},
): RnodeError {
  return new RnodeError(code, message, opts);
}

export function protocolError(why: string, details: Record<string, unknown> = {}): RnodeError {
  return new RnodeError(TransportErrorCodes.PROTOCOL, `peer sent an invalid frame: ${why}; check that both nodes run compatible rnode versions`, {
    details,
  });
}
