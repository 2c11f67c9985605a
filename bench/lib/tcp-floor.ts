// The floor of a receiving node's work on this machine: a bare TCP transfer of the bytes a replicate sent, from one
// Node process to another on 127.0.0.1, with no WebSocket, no checks and no store. What the receiver spends on it is the
// least any node built on Node's sockets spends per byte, whatever the layers above do. Two ways of reading:
// - "stream": the socket's 'data' events, as `ws` (and so `rnode serve`) reads: Node reads each 64 KiB into a buffer
//   of its own, freed when V8 next collects it;
// - "reused": `net.connect({ onread })`, every read into one buffer allocated once.
// The sender writes 8 MiB at a time (the largest part a replicate sends in one frame). The receiver is measured warm,
// as the bench's node is (it takes a warm-up replicate first): the same number of bytes goes first, unmeasured. Cold,
// most of a stream's reads land in memory the kernel has not mapped yet: 237 MiB took 0.29 s and ~9,900 page faults
// in a fresh process, against 0.11 s and ~340 warm.
// usage: node tcp-floor.js BYTES stream|reused   prints one JSON line: seconds and receiver CPU and page faults over
// the measured bytes, the sender's CPU over all it sent
import { fork } from 'node:child_process';
import net from 'node:net';

const WRITE_BYTES = 8 * 1024 * 1024;
const READ_BYTES = 64 * 1024;

interface Usage {
  user: number;
  sys: number;
  faults: number;
}

function usageSince(cpu: NodeJS.CpuUsage, faults: number): Usage {
  const d = process.cpuUsage(cpu);
  return { user: d.user / 1e6, sys: d.system / 1e6, faults: process.resourceUsage().minorPageFault - faults };
}

/** The sender: listens, writes the warm-up and `bytes` to the first connection with back-pressure, reports its CPU. */
function send(bytes: number): void {
  const server = net.createServer((socket) => {
    const cpu = process.cpuUsage();
    const faults = process.resourceUsage().minorPageFault;
    const data = Buffer.alloc(WRITE_BYTES, 0x5a);
    void (async () => {
      for (let sent = 0; sent < 2 * bytes; sent += WRITE_BYTES) {
        const piece = 2 * bytes - sent >= WRITE_BYTES ? data : data.subarray(0, 2 * bytes - sent);
        if (!socket.write(piece)) await new Promise((resolve) => socket.once('drain', resolve));
      }
      socket.end(() => {
        process.send!({ sender: usageSince(cpu, faults) });
        server.close();
      });
    })();
  });
  server.listen(0, '127.0.0.1', () => process.send!({ port: (server.address() as net.AddressInfo).port }));
}

/** The receiver: starts the sender, connects, reads every byte the chosen way, prints the figures. */
function receive(bytes: number, mode: string): void {
  const sender = fork(new URL(import.meta.url).pathname, [String(bytes), 'send']);
  let senderUsage: Usage | undefined;
  let mine: { seconds: number; receiver: Usage; got: number } | undefined;
  const report = () => {
    if (!senderUsage || !mine) return;
    console.log(JSON.stringify({ mode, bytes: mine.got, seconds: mine.seconds, receiver: mine.receiver, sender: senderUsage }));
    process.exit(mine.got === bytes ? 0 : 1);
  };
  sender.on('message', (m: { port?: number; sender?: Usage }) => {
    if (m.sender) {
      senderUsage = m.sender;
      return report();
    }
    let got = -bytes; // the warm-up's bytes first
    let from: { cpu: NodeJS.CpuUsage; faults: number; t0: number } | undefined;
    const take = (n: number) => {
      got += n;
      if (!from && got >= 0) from = { cpu: process.cpuUsage(), faults: process.resourceUsage().minorPageFault, t0: performance.now() };
    };
    const socket = net.connect({
      port: m.port!,
      host: '127.0.0.1',
      ...(mode === 'reused' ? { onread: { buffer: Buffer.alloc(READ_BYTES), callback: (n: number) => (take(n), true) } } : {}),
    });
    if (mode === 'stream') socket.on('data', (b: Buffer) => take(b.length));
    socket.on('end', () => {
      mine = { seconds: (performance.now() - from!.t0) / 1000, receiver: usageSince(from!.cpu, from!.faults), got };
      report();
    });
  });
}

const [bytes, mode] = [Number(process.argv[2]), process.argv[3]];
if (!(bytes > 0) || !['stream', 'reused', 'send'].includes(mode)) {
  console.error('usage: node tcp-floor.js BYTES stream|reused');
  process.exit(2);
}
if (mode === 'send') send(bytes);
else receive(bytes, mode);
