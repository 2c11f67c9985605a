// The control protocol: every refusal the document promises (not JSON, unknown version, unknown type, schema
// violation, duplicate job, binary frame) comes back as an error message naming the refused id, and the node
// keeps running (heartbeats, then runs a valid job). The schemas in docs/control-protocol.md are the ones the
// code validates with, and the validator handles the subset they use.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { agentMessages, decode, defs, serverMessages } from '../../src/agent/protocol.js';
import { validate } from '../../src/agent/schema.js';
import { KiB, MiB, makeDisk, startAgent, startMs, tmpDir } from './helpers.js';
import { metricValue } from '../helpers/metrics.js';

t.test('invalid messages get an error reply; the agent keeps running', async (t) => {
  const dir = tmpDir(t, 'agent-proto');
  const img = await makeDisk(dir, 'd0', 1 * MiB, 5);
  const ms = await startMs(t);
  const { agent } = await startAgent(t, ms, dir);
  const node = await ms.waitFor(() => ms.nodes.get(agent.nodeId), 10_000, 'registration');
  const reply = (pred: (m: Record<string, unknown>) => boolean, what: string) =>
    ms.waitFor(() => ms.errors.find((e) => pred(e.msg))?.msg, 5000, what);

  ms.sendRaw(node.id, 'this is not json {');
  t.match(await reply((m) => m.code === 'RNODE_PROTO_NOT_JSON', 'not-json'), { type: 'error', v: 1 }, 'not JSON');

  ms.sendRaw(node.id, JSON.stringify({ v: 1, type: 'launch.missiles', id: 'x1' }));
  t.match(await reply((m) => m.replyTo === 'x1', 'x1'), { code: 'RNODE_PROTO_UNKNOWN_TYPE' }, 'unknown type');

  ms.sendRaw(node.id, JSON.stringify({ v: 2, type: 'job.cancel', id: 'x2', jobId: 'j' }));
  t.match(await reply((m) => m.replyTo === 'x2', 'x2'), { code: 'RNODE_PROTO_VERSION', message: /version 2/ }, 'unknown version');

  ms.sendRaw(node.id, JSON.stringify({ v: 1, type: 'job.start', id: 'x3', job: { jobId: 'j3', kind: 'replicate', disks: [] } }));
  t.match(await reply((m) => m.replyTo === 'x3', 'x3'), { code: 'RNODE_PROTO_INVALID', message: /store/ }, 'schema violation named');

  ms.sendRaw(node.id, JSON.stringify({ v: 1, type: 'policy.update', id: 'x4', policy: { group: 'g', revision: 1, rpoSeconds: -1, store: { url: 'x' }, disks: [] } }));
  t.match(await reply((m) => m.replyTo === 'x4', 'x4'), { code: 'RNODE_PROTO_INVALID', message: /rpoSeconds/ }, 'bad policy refused');

  ms.sendRaw(node.id, JSON.stringify([1, 2, 3]));
  await reply((m) => m.code === 'RNODE_PROTO_INVALID' && !m.replyTo && String(m.message).includes('object'), 'array');
  node.ws!.send(Buffer.from([1, 2, 3]), { binary: true });
  await reply((m) => String(m.message).includes('binary'), 'binary');
  ms.sendRaw(node.id, JSON.stringify({ v: 1, type: 'welcome', id: 'x5', nodeId: node.id, protocol: 1, heartbeatMs: 200, ackedSeq: 0 }));
  t.match(await reply((m) => m.replyTo === 'x5', 'x5'), { code: 'RNODE_PROTO_INVALID' }, 'a second welcome is refused');

  const job = { jobId: 'slow', kind: 'replicate' as const, store: { url: path.join(dir, 'store') }, disks: [{ disk: 'd0', source: { location: img } }], chunkSize: 64 * KiB, bandwidth: 1 * MiB };
  ms.startJob(job);
  await ms.waitFor(() => ms.jobs.get('slow')?.state === 'accepted', 5000, 'accepted');
  const dupId = 'x6';
  ms.sendRaw(node.id, JSON.stringify({ v: 1, type: 'job.start', id: dupId, job }));
  t.match(await reply((m) => m.replyTo === dupId, 'dup'), { code: 'RNODE_AGENT_DUPLICATE_JOB' }, 'a job already running is refused');

  await ms.waitFor(() => ms.jobs.get('slow')?.completed, 10_000, 'the job to complete');
  const beats = node.health;
  await new Promise((r) => setTimeout(r, 500));
  t.ok(ms.nodes.get(agent.nodeId)!.connected && node.health !== beats, 'still connected and heartbeating');
  t.ok((await metricValue(agent.metrics.protocolErrors, { direction: 'in', code: 'RNODE_PROTO_INVALID' }))! >= 4, 'refusals counted');
  t.equal(ms.nodes.size, 1, 'never reconnected as a new node');
});

t.test('the server side refuses a bad hello', async (t) => {
  const ms = await startMs(t);
  const { WebSocket } = await import('ws');
  const ws = new WebSocket(ms.url);
  await new Promise((r) => ws.once('open', r));
  const got: any[] = [];
  ws.on('message', (d) => got.push(JSON.parse(d.toString())));
  const closed = new Promise<number>((r) => ws.once('close', (code) => r(code)));
  ws.send(JSON.stringify({ v: 1, type: 'hello', id: 'h1', token: 'nope', protocols: [1], node: { id: 'n1', name: 'n', version: '1' },
    capabilities: { sources: [], stores: [], codecs: [], jobs: [] }, capacity: { slots: 1 } }));
  t.equal(await closed, 4401, 'closed with 4401');
  t.match(got[0], { type: 'error', code: 'RNODE_AUTH', replyTo: 'h1' });
});

t.test('docs/control-protocol.md shows exactly the schemas the code validates with', async (t) => {
  const doc = fs.readFileSync(fileURLToPath(new URL('../../docs/control-protocol.md', import.meta.url)), 'utf8');
  const blocks = [...doc.matchAll(/```json\n([\s\S]*?)\n```/g)].map((m) => JSON.parse(m[1]));
  const byId = new Map(blocks.filter((b) => b.$id).map((b) => [b.$id, b]));
  for (const [side, table] of [['agent', agentMessages], ['server', serverMessages]] as const) {
    for (const [type, schema] of Object.entries(table)) {
      t.same(byId.get(schema.$id), JSON.parse(JSON.stringify(schema)), `${side} ${type} schema in the doc`);
    }
  }
  const docDefs = blocks.find((b) => b.$id === 'rnode-control/v1/$defs');
  t.same(docDefs?.$defs, JSON.parse(JSON.stringify(defs)), 'shared $defs in the doc');
  const types = [...Object.keys(agentMessages), ...Object.keys(serverMessages)];
  for (const type of types) t.ok(doc.includes(`\`${type}\``), `${type} is described`);
});

t.test('validator: the keywords the schemas use', async (t) => {
  const s = { type: 'object' as const, required: ['a'], additionalProperties: false, properties: {
    a: { type: 'integer' as const, minimum: 1, maximum: 3 }, b: { type: 'string' as const, pattern: '^x+$', maxLength: 3 },
    c: { type: 'array' as const, items: { enum: ['p', 'q'] }, minItems: 1 }, d: { oneOf: [{ type: 'string' as const }, { type: 'null' as const }] },
    e: { type: 'number' as const, exclusiveMinimum: 0 }, f: { const: 7 },
  } };
  t.same(validate(s, { a: 2, b: 'xx', c: ['p'], d: null, e: 0.5, f: 7 }), []);
  const errs = validate(s, { a: 2.5, b: 'yyyy', c: [], d: 1, e: 0, f: 8, z: 1 }).map((e) => e.path).sort();
  t.same(errs, ['/a', '/b', '/b', '/c', '/d', '/e', '/f', '/z']);
  t.same(validate(s, {}).map((e) => e.message), ['must have property "a"']);
  t.throws(() => validate({ format: 'uri' } as any, 'x'), /not supported/);
  t.match(decode('{"v":1,"type":"ack","id":"a","seq":-1}', serverMessages), { ok: false, code: 'RNODE_PROTO_INVALID', replyTo: 'a' });
  t.match(decode('{"v":1,"type":"ack","id":"a","seq":3,"future":"field"}', serverMessages), { ok: true }, 'unknown fields are ignored');
});
