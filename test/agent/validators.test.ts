// The control-protocol validators are generated ahead of time (src/agent/validators.generated.cjs, ajv standalone
// code): the committed module is what `npm run gen:validators` makes of today's schemas, loading the protocol
// compiles nothing at run time, and the generated validators refuse and accept like the ajv-compiled ones.
import t from 'tap';
import fs from 'node:fs';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { GENERATED, renderValidators } from '../../scripts/control-protocol-validators.js';
import { agentMessages, decode, defs, serverMessages } from '../../src/agent/protocol.js';
import { AJV_OPTIONS, compile, runTimeCompilations } from '../../src/agent/schema.js';

t.test('the committed validators are what `npm run gen:validators` makes of the schemas', async (t) => {
  // A stale module fails here: run `npm run gen:validators` and commit the result.
  t.equal(fs.readFileSync(GENERATED, 'utf8'), renderValidators(), 'src/agent/validators.generated.cjs is up to date with src/agent/protocol.ts');
});

t.test('every message validator comes from the generated module', async (t) => {
  // protocol.ts asked for every validator when it loaded.
  t.equal(runTimeCompilations(), 0, 'no schema was compiled at run time');
  const schemas = new Set([...Object.values(agentMessages), ...Object.values(serverMessages)]);
  t.ok(schemas.size >= 20, `${schemas.size} message schemas`);
});

t.test('generated and run-time compiled validators agree', async (t) => {
  const ajv = new Ajv2020(AJV_OPTIONS);
  const samples: Array<[string, unknown]> = [
    [
      'job.start',
      {
        v: 1,
        type: 'job.start',
        id: 'm1',
        job: { jobId: 'j1', kind: 'replicate', store: { url: '/s' }, disks: [{ disk: 'd', source: { location: '/x' } }] },
      },
    ],
    ['job.start', { v: 1, type: 'job.start', id: 'm1', job: { jobId: 'j1', kind: 'bogus' } }],
    ['job.start', { v: 1, type: 'job.start', id: 'm1', job: { jobId: 'j1', kind: 'replicate', store: { url: '' }, disks: [] } }],
    ['welcome', { v: 1, type: 'welcome', id: 'w', nodeId: 'n1', protocol: 1, heartbeatMs: 50, ackedSeq: 0 }],
    ['welcome', { v: 1, type: 'welcome', id: 'w', nodeId: 'n1', protocol: 1, heartbeatMs: 500, ackedSeq: 0, extra: 1 }],
    ['policy.remove', { v: 1, type: 'policy.remove', id: 'p', group: 'ö' }],
    ['ack', { v: 1, type: 'ack', id: 'a', seq: 3 }],
    // retention.graceSeconds: at least a lease's 10 min (docs/prune.md)
    ...[599, 600].map((graceSeconds): [string, unknown] => [
      'policy.update',
      {
        v: 1,
        type: 'policy.update',
        id: 'u',
        policy: {
          group: 'g',
          revision: 1,
          rpoSeconds: 60,
          retention: { keep: 3, graceSeconds },
          store: { url: '/s' },
          disks: [{ disk: 'd', source: { location: '/x' } }],
        },
      },
    ]),
  ];
  const runtime = new Map<string, ReturnType<typeof ajv.compile>>();
  // Where a rule sits in the schema (schemaPath) differs: the generator calls shared definitions, not inlines them.
  const seen = (errors: typeof ajv.errors) =>
    (errors ?? []).map(({ instancePath, keyword, params, message }) => ({ instancePath, keyword, params, message }));
  let refused = 0;
  for (const [type, msg] of samples) {
    const schema = serverMessages[type as keyof typeof serverMessages];
    const generated = compile(schema, defs);
    if (!runtime.has(type)) runtime.set(type, ajv.compile({ ...schema, $defs: defs }));
    const check = runtime.get(type)!;
    const ok = generated(msg);
    t.equal(ok, check(msg), `${type}: the same verdict (${ok})`);
    t.same(seen(generated.errors), seen(check.errors), `${type}: the same errors`);
    if (!ok) refused++;
    const d = decode(JSON.stringify(msg), serverMessages);
    t.equal(d.ok, ok, 'decode uses it');
  }
  t.ok(refused >= 3 && refused < samples.length, `${refused} of ${samples.length} samples refused`);
});
