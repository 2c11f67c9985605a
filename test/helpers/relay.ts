// A TCP relay to a local server that a test can cut at once: every connection through it dropped, new ones refused,
// as a peer or a service dying (or a link lost for good) looks to the other end.
import type { Test } from 'tap';
import net from 'node:net';

export interface Relay {
  port: number;
  /** http://127.0.0.1:<port>, for clients that take an endpoint URL. */
  endpoint: string;
  cut(): void;
}

/** Relays 127.0.0.1:<its port> to 127.0.0.1:target until cut(); closed at t's end. */
export async function relay(t: Pick<Test, 'teardown'>, target: number): Promise<Relay> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(target, '127.0.0.1');
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => undefined);
      s.on('close', () => sockets.delete(s));
    }
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const cut = () => {
    if (server.listening) server.close();
    for (const s of sockets) s.destroy();
  };
  t.teardown(cut);
  const port = (server.address() as net.AddressInfo).port;
  return { port, endpoint: `http://127.0.0.1:${port}`, cut };
}
