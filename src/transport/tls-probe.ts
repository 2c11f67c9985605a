// A ws:// URL that names a node started with --tls-cert: the node's TLS layer drops the plain upgrade request, and
// the client saw only "socket hang up" (after its whole connect budget of retries). One TLS handshake with the same
// address tells that case apart, so the error can say to use wss://.
import net from 'node:net';
import tls from 'node:tls';

/** Whether the host and port of url complete a TLS handshake within timeoutMs (the certificate is not checked). */
export function speaksTls(url: string, timeoutMs = 2000): Promise<boolean> {
  const u = new URL(url);
  const host = u.hostname.replace(/^\[(.*)\]$/, '$1');
  const port = Number(u.port || 80);
  return new Promise((resolve) => {
    const socket = tls.connect({ host, port, rejectUnauthorized: false, ...(net.isIP(host) ? {} : { servername: host }) });
    const done = (answer: boolean) => {
      socket.destroy();
      resolve(answer);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('secureConnect', () => done(true));
    socket.once('error', () => done(false));
  });
}
