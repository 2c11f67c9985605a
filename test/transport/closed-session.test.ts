// A peer that queues reads and hangs up: the node went on reading every queued get from its store, paced by
// --bandwidth, for nobody (256 gets of a pack per session; a replicate beside it failed RNODE_TRANSPORT_UNREACHABLE).
// And a peer could hold the repository's prune lease (prune.<domain>), blocking every sweep of the node's store.
import t from 'tap';
import WebSocket from 'ws';
import { ErrorCodes } from '../../src/errors.js';
import { MemoryStore } from '../../src/store/memory/memory-store.js';
import { encodeFrame, FrameType, TransportErrorCodes } from '../../src/transport/index.js';
import { tmpDir } from '../helpers/images.js';
import { remote, startNode } from './helpers.js';

const KEY = 'disks/x/encryption.json';

t.test('a session that hangs up with gets queued: the node reads none of them after', async (t) => {
  const dir = tmpDir(t, 'ws-dropped-gets');
  const store = new MemoryStore();
  await store.put(KEY, Buffer.from('{"x":1}'));
  // Reads of 50 ms: the node runs a few at once, the rest wait in the session's queue.
  let reads = 0;
  const get = store.get.bind(store);
  store.get = async (key, range) => {
    reads++;
    await new Promise((r) => setTimeout(r, 50));
    return get(key, range);
  };
  const { url } = await startNode(t, dir, { store });
  const ws = new WebSocket(url);
  await new Promise((r, j) => {
    ws.once('open', r);
    ws.once('error', j);
  });
  ws.send(encodeFrame({ type: FrameType.CONTROL, stream: 0, seq: 0, meta: { op: 'hello' } }));
  await new Promise((r) => ws.once('message', r));
  const GETS = 200;
  for (let i = 1; i <= GETS; i++) ws.send(encodeFrame({ type: FrameType.CONTROL, stream: i, seq: i, meta: { op: 'get', key: KEY } }));
  await new Promise((r) => setTimeout(r, 100)); // the node has them queued
  ws.terminate();
  // Until the store has been idle for 300 ms.
  for (let seen = -1; seen !== reads;) {
    seen = reads;
    await new Promise((r) => setTimeout(r, 300));
  }
  t.ok(reads < GETS / 4, `${reads} of the ${GETS} queued gets were read (those running when it hung up, not the queue)`);
});

t.test("a peer cannot take prune's lease of a repository (prune.<domain>)", async (t) => {
  const dir = tmpDir(t, 'ws-prune-lease');
  const { url, store } = await startNode(t, dir);
  const rs = remote(t, url);
  await t.rejects(rs.leases.acquire('prune.plain', 'peer/1/abcd/ffff', 600_000), {
    code: TransportErrorCodes.REJECTED,
    message: /lease of prune\.plain refused: .*taken on the node only/,
  });
  const lease = await store.get('disks/prune.plain/lease.json').catch((err: { code?: string }) => err.code);
  t.equal(lease, ErrorCodes.STORE_NOT_FOUND, 'no lease was written on the node');
  t.match(await rs.leases.acquire('d1', 'peer/1/abcd/ffff', 60_000), { disk: 'd1' }, "a disk's lease is still granted");
});
