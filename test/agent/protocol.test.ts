// The control protocol: every refusal the document promises (not JSON, unknown version, unknown type, schema
// violation, duplicate job, binary frame) comes back as an error message naming the refused id, and the node
// keeps running (heartbeats, then runs a valid job). docs/control-protocol.md's reference is generated from the
// schemas the code validates with, and refusals name the offending field.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { agentMessages, checkOutgoing, decode, defs, MAX_DEPTH, serverMessages } from '../../src/agent/protocol.js';
import { DOC, MARKER, renderDoc } from '../../scripts/control-protocol-doc.js';
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

  ms.sendRaw(
    node.id,
    JSON.stringify({ v: 1, type: 'policy.update', id: 'x4', policy: { group: 'g', revision: 1, rpoSeconds: -1, store: { url: 'x' }, disks: [] } }),
  );
  t.match(await reply((m) => m.replyTo === 'x4', 'x4'), { code: 'RNODE_PROTO_INVALID', message: /rpoSeconds/ }, 'bad policy refused');

  // A port past 65535 fitted the pattern, and the export then failed in node's listen with RNODE_INTERNAL.
  const exportSpec = { exportId: 'e1', store: { url: path.join(dir, 'store') }, disk: 'd0', listen: '127.0.0.1:99999' };
  ms.sendRaw(node.id, JSON.stringify({ v: 1, type: 'export.start', id: 'x7', export: exportSpec }));
  t.match(await reply((m) => m.replyTo === 'x7', 'x7'), { code: 'RNODE_PROTO_INVALID', message: /\/export\/listen/ }, 'a port past 65535 is refused');

  ms.sendRaw(node.id, JSON.stringify([1, 2, 3]));
  await reply((m) => m.code === 'RNODE_PROTO_INVALID' && !m.replyTo && String(m.message).includes('object'), 'array');
  node.ws!.send(Buffer.from([1, 2, 3]), { binary: true });
  await reply((m) => String(m.message).includes('binary'), 'binary');
  ms.sendRaw(node.id, JSON.stringify({ v: 1, type: 'welcome', id: 'x5', nodeId: node.id, protocol: 1, heartbeatMs: 200, ackedSeq: 0 }));
  t.match(await reply((m) => m.replyTo === 'x5', 'x5'), { code: 'RNODE_PROTO_INVALID' }, 'a second welcome is refused');

  const job = {
    jobId: 'slow',
    kind: 'replicate' as const,
    store: { url: path.join(dir, 'store') },
    disks: [{ disk: 'd0', source: { location: img } }],
    chunkSize: 64 * KiB,
    bandwidth: 1 * MiB,
  };
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

// A policy whose source.options nested 200,000 arrays deep (far under the 16 MiB frame limit) was applied and run;
// then every JSON.stringify of the policies overflowed the stack, and no policy of any group was persisted again,
// without a word to the server.
t.test('a message nested absurdly deep is refused, and policies are still persisted', async (t) => {
  const dir = tmpDir(t, 'agent-proto-deep');
  const img = await makeDisk(dir, 'd0', 1 * MiB, 5);
  const ms = await startMs(t);
  const { agent, stateDir, logs } = await startAgent(t, ms, dir);
  const node = await ms.waitFor(() => ms.nodes.get(agent.nodeId), 10_000, 'registration');
  const reply = (id: string) => ms.waitFor(() => ms.errors.find((e) => e.msg.replyTo === id)?.msg, 5000, `the reply to ${id}`);
  const store = { url: path.join(dir, 'store') };
  const deep = (levels: number) => '['.repeat(levels) + ']'.repeat(levels);
  // Each message as text: the deep value cannot go through JSON.stringify.
  const withOptions = (envelope: Record<string, unknown>, options: string) => JSON.stringify(envelope).replace('"OPTIONS"', `{"nested":${options}}`);
  const policy = (group: string) => ({
    group,
    revision: 1,
    rpoSeconds: 3600,
    store,
    chunkSize: 64 * KiB,
    disks: [{ disk: 'd0', source: { location: img, options: 'OPTIONS' } }],
  });

  ms.sendRaw(node.id, withOptions({ v: 1, type: 'policy.update', id: 'p1', policy: policy('deep') }, deep(200_000)));
  t.match(
    await reply('p1'),
    {
      code: 'RNODE_PROTO_INVALID',
      message: /^invalid policy\.update message: \/policy\/disks\/0\/source\/options\/nested\/0\/.*nested more than 64 levels/,
    },
    'the policy is refused, naming where',
  );
  ms.sendRaw(node.id, withOptions({ v: 1, type: 'policy.sync', id: 'p2', policies: [policy('deep')] }, deep(100)));
  t.match(await reply('p2'), { code: 'RNODE_PROTO_INVALID' }, 'in a policy.sync too');
  const job = { jobId: 'jd', kind: 'replicate', store, disks: [{ disk: 'd0', source: { location: img, options: 'OPTIONS' } }] };
  ms.sendRaw(node.id, withOptions({ v: 1, type: 'job.start', id: 'j1', job }, deep(200_000)));
  t.match(await reply('j1'), { code: 'RNODE_PROTO_INVALID', message: /nested more than 64 levels/ }, 'a job too');
  t.same(
    agent.scheduler.list().map((p) => p.group),
    [],
    'nothing applied',
  );

  // Options nested a little (as deep as a source could want) are taken, and every policy is persisted.
  ms.sendRaw(node.id, withOptions({ v: 1, type: 'policy.update', id: 'p3', policy: policy('fine') }, deep(40)));
  // policy.update, not the reference server's setPolicy: its policy.sync would drop the group it does not know.
  const good = { ...policy('good'), disks: [{ disk: 'd0', source: { location: img } }] };
  ms.sendRaw(node.id, JSON.stringify({ v: 1, type: 'policy.update', id: 'p4', policy: good }));
  const saved = () => {
    try {
      return JSON.parse(fs.readFileSync(path.join(stateDir, 'policies.json'), 'utf8')) as { group: string }[];
    } catch {
      return [];
    }
  };
  await ms.waitFor(() => saved().length === 2, 10_000, 'both policies persisted');
  t.same(
    saved()
      .map((p) => p.group)
      .sort(),
    ['fine', 'good'],
    'policies.json holds both',
  );
  t.same(
    ms.reportsOf('job.accepted', (m) => m.jobId === 'jd'),
    [],
    'the deep job was never accepted',
  );
  t.same(
    logs.filter((l) => l.includes('could not persist')),
    [],
    'no persistence failure logged',
  );
  t.ok(ms.nodes.get(agent.nodeId)!.connected, 'still connected');
});

t.test('the server side refuses a bad hello', async (t) => {
  const ms = await startMs(t);
  const { WebSocket } = await import('ws');
  const ws = new WebSocket(ms.url);
  await new Promise((r) => ws.once('open', r));
  const got: any[] = [];
  ws.on('message', (d) => got.push(JSON.parse(d.toString())));
  const closed = new Promise<number>((r) => ws.once('close', (code) => r(code)));
  ws.send(
    JSON.stringify({
      v: 1,
      type: 'hello',
      id: 'h1',
      token: 'nope',
      protocols: [1],
      node: { id: 'n1', name: 'n', version: '1' },
      capabilities: { sources: [], stores: [], codecs: [], jobs: [] },
      capacity: { slots: 1 },
    }),
  );
  t.equal(await closed, 4401, 'closed with 4401');
  t.match(got[0], { type: 'error', code: 'RNODE_AUTH', replyTo: 'h1' });
});

t.test('docs/control-protocol.md is what `npm run docs:protocol` makes of the schemas', async (t) => {
  const doc = fs.readFileSync(DOC, 'utf8');
  t.ok(doc.includes(MARKER), 'the doc has the marker line the generated reference starts at');
  // A stale doc fails here: run `npm run docs:protocol` and commit the result.
  t.equal(doc, renderDoc(doc), 'the committed doc is up to date with src/agent/protocol.ts');
  const types = [...Object.keys(agentMessages), ...Object.keys(serverMessages)];
  for (const type of types) t.ok(doc.includes(`#### \`${type}\``), `${type} is described`);
  for (const name of Object.keys(defs)) t.ok(doc.includes(`id="def-${name}"`), `shared definition ${name} is described`);
  const blocks = [...doc.matchAll(/```json\n([\s\S]*?)\n```/g)].map((m) => JSON.parse(m[1]) as { $id?: string });
  for (const [type, schema] of Object.entries({ ...agentMessages, ...serverMessages })) {
    t.same(
      blocks.find((b) => b.$id === schema.$id),
      JSON.parse(JSON.stringify(schema)),
      `${type}: its JSON Schema is shown`,
    );
  }
});

t.test('refusals name the field and keep the stable codes', async (t) => {
  const refuse = (msg: unknown, table: typeof serverMessages | typeof agentMessages = serverMessages) => {
    const d = decode(JSON.stringify(msg), table);
    return d.ok ? undefined : { code: d.code, message: d.message, errors: d.errors };
  };
  const env = { v: 1, id: 'a' };
  t.match(refuse({ ...env, type: 'ack', seq: -1 }), {
    code: 'RNODE_PROTO_INVALID',
    message: 'invalid ack message: /seq: must be >= 0',
    errors: [{ path: '/seq' }],
  });
  t.match(refuse({ ...env, type: 'job.start', job: { jobId: 'j', kind: 'replicate', disks: [] } }), {
    errors: [{ path: '/job/store', message: 'is required' }],
  });
  t.match(refuse({ ...env, type: 'job.start', job: { jobId: 'j', kind: 'launch', store: { url: 'x' } } }), {
    errors: [{ path: '/job/kind', message: /must be one of "replicate"/ }],
  });
  t.match(
    refuse({ ...env, type: 'job.start', job: { jobId: 'j', kind: 'verify', store: { url: 'x' }, disk: 'd', keep: 1 } }),
    { errors: [{ path: '/job/keep', message: 'is not allowed here' }] },
    'the errors come from the kind the job names',
  );
  t.match(
    refuse({
      ...env,
      type: 'policy.update',
      policy: { group: 'g', revision: 1, rpoSeconds: 1, store: { url: 'x', env: { K: { secretRef: 'nope' } } }, disks: [] },
    }),
    { errors: [{ path: /^\/policy\/store\/env\/K/ }] },
  );
  t.match(
    refuse({ ...env, type: 'policy.update', policy: { group: 'g', revision: 1, rpoSeconds: 1, store: { url: 'x' }, disks: [], compression: 'zip' } }),
    { errors: [{ path: '/policy/compression', message: 'must be one of "lz4", "lz4-blocks", "none"' }] },
  );
  t.match(
    refuse(
      { ...env, type: 'rpo.missed', seq: 1, at: 'yesterday', group: 'g', disk: 'd', rpoSeconds: 1, lagSeconds: 2, lastPointAt: null },
      agentMessages,
    ),
    { errors: [{ path: '/at', message: /must match pattern/ }] },
  );
  const listen = (l: string) => refuse({ ...env, type: 'export.start', export: { exportId: 'e', store: { url: 'x' }, disk: 'd', listen: l } });
  for (const l of ['127.0.0.1:0', ':80', '[::1]:00080', 'localhost:59999', 'h:64999', 'h:65535']) t.equal(listen(l), undefined, `listen ${l}`);
  for (const l of ['127.0.0.1:65536', 'h:65540', 'h:65600', 'h:66000', 'h:70000', 'h:99999', 'h:100000', 'h:-1'])
    t.match(listen(l), { code: 'RNODE_PROTO_INVALID', errors: [{ path: '/export/listen' }] }, `listen ${l} is refused`);
  // The library's own checks named the CLI's flags (--point, --keep) with RNODE_USAGE; the schema names the field.
  const job = (fields: Record<string, unknown>) => ({ ...env, type: 'job.start', job: { jobId: 'j', store: { url: 'x' }, disk: 'd', ...fields } });
  for (const point of ['../../x', '1e3', '-1', '']) {
    t.match(
      refuse(job({ kind: 'verify', point })),
      { code: 'RNODE_PROTO_INVALID', errors: [{ path: '/job/point', message: /must match pattern/ }] },
      `verify point ${JSON.stringify(point)}`,
    );
  }
  t.equal(refuse(job({ kind: 'verify', point: 'all' })), undefined, 'verify takes "all"');
  t.equal(refuse(job({ kind: 'recover', point: '12', out: '/dev/null' })), undefined, 'a point number');
  t.match(refuse(job({ kind: 'recover', point: 'all', out: '/dev/null' })), { errors: [{ path: '/job/point' }] }, 'recover takes no "all"');
  t.match(refuse(job({ kind: 'prune', keep: 1e300 })), {
    code: 'RNODE_PROTO_INVALID',
    errors: [{ path: '/job/keep', message: /must be <= 9007199254740991/ }],
  });
  t.match(refuse({ ...env, type: 'toString' }), { code: 'RNODE_PROTO_UNKNOWN_TYPE' }, "only a table's own types");
  t.match(decode('{"v":1,"type":"ack","id":"a","seq":3,"future":"field"}', serverMessages), { ok: true }, 'unknown fields are ignored');
  // The message and 63 arrays in it: 64 levels, taken; one more is refused, naming where.
  const nested = (levels: number) => `{"v":1,"type":"ack","id":"a","seq":3,"future":${'['.repeat(levels)}${']'.repeat(levels)}}`;
  t.match(decode(nested(MAX_DEPTH - 1), serverMessages), { ok: true }, `${MAX_DEPTH} levels`);
  t.match(
    decode(nested(MAX_DEPTH), serverMessages),
    {
      ok: false,
      code: 'RNODE_PROTO_INVALID',
      replyTo: 'a',
      message: /^invalid ack message: \/future\/0\/0\/0\/0\/0\/0\/0\/0\/0\/0\/0\/…: nested more than 64 levels deep$/,
    },
    `${MAX_DEPTH + 1} levels`,
  );
  t.throws(() => checkOutgoing({ ...env, type: 'ack', seq: 1.5 }, serverMessages), /outgoing ack does not match its schema: \/seq: must be integer/);
});

// A recover job whose cloud out carried credentials failed with "RNODE_USAGE: --out s3://... carries credentials":
// a flag the server does not have, and a code outside the protocol's error table.
t.test('a job.start whose out the node cannot take is refused naming job.out, before it is accepted', async (t) => {
  const dir = tmpDir(t, 'agent-proto');
  const ms = await startMs(t);
  const { agent, logs } = await startAgent(t, ms, dir);
  await ms.waitFor(() => ms.nodes.get(agent.nodeId)?.connected, 10_000, 'registration');
  const job = { jobId: 'r1', kind: 'recover', store: { url: path.join(dir, 'store') }, disk: 'd0', out: 's3://AK:SECRETPW@bucket/key' };
  ms.sendRaw(agent.nodeId, JSON.stringify({ v: 1, type: 'job.start', id: 'x-out', job }));
  const refusal = await ms.waitFor(() => ms.errors.find((e) => e.msg.replyTo === 'x-out')?.msg, 5000, 'the refusal');
  t.match(refusal, { code: 'RNODE_PROTO_INVALID', message: /^job\.out s3:\/\/bucket\/key carries credentials; give them in the environment/ });
  t.notMatch(String(refusal.message), /SECRETPW|--out/, 'no credential, no CLI flag');
  t.equal(ms.reportsOf('job.accepted', (m) => m.jobId === 'r1').length, 0, 'never accepted');
  t.notOk(
    logs.some((l) => l.includes('SECRETPW')),
    'nor logged',
  );
});
