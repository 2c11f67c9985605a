// The log lines of the long-running commands (pino): one JSON object per line with time, level and msg first-class,
// context from child loggers, levels below the minimum dropped, secrets masked by member name and by registered
// value; the text format renders the same events as one human line each, with the same secrets masked.
import t from 'tap';
import { Logger, silentLogger } from '../../src/log.js';

function capture(level: 'debug' | 'info' | 'warn' | 'error' = 'info', format: 'json' | 'text' = 'json') {
  const lines: string[] = [];
  const log = Logger.create({
    sink: {
      write: (l) => {
        lines.push(l);
      },
    },
    level,
    format,
  });
  return { log, lines, parsed: () => lines.map((l) => JSON.parse(l) as Record<string, any>) };
}

t.test('fields, levels and context', async (t) => {
  const { log, lines, parsed } = capture('info');
  log.debug('not shown');
  log
    .child({ nodeId: 'n1' })
    .child({ jobId: 'j1' })
    .info('point committed', { point: 3, big: 2n ** 60n });
  log.warn('careful');
  t.equal(lines.length, 2, 'debug is below info');
  t.ok(
    lines.every((l) => l.endsWith('\n') && !l.slice(0, -1).includes('\n')),
    'one line each',
  );
  const [a, b] = parsed();
  t.match(a, { level: 'info', msg: 'point committed', nodeId: 'n1', jobId: 'j1', point: 3 });
  t.match(a.time, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/, 'ISO time');
  t.notOk('pid' in a || 'hostname' in a, 'no pid or hostname');
  t.equal(b.level, 'warn');
  const err = Object.assign(new Error('boom'), { code: 'RNODE_STORE_IO' });
  log.error('failed', { err });
  t.same(parsed()[2].err, { name: 'Error', message: 'boom', code: 'RNODE_STORE_IO' }, 'errors as name, message, code');
  silentLogger().error('nothing', { x: 1 });
});

t.test('secrets: by member name and by registered value', async (t) => {
  const { log, lines, parsed } = capture('debug');
  const child = log.child({ nodeId: 'n1' });
  child.info('connecting', { token: 'tok-123456', store: { env: { password: 'pw-abcdef', secretRef: 'env:X' } }, tokenFile: '/etc/rnode/token' });
  const e = parsed()[0];
  t.equal(e.token, '***');
  t.equal(e.store.env.password, '***');
  t.equal(e.store.env.secretRef, 'env:X', 'a secret reference is not a secret');
  t.equal(e.tokenFile, '/etc/rnode/token', 'a path to a secret is not a secret');
  child.addSecret('hunter2"\\x');
  log.addSecret('abc');
  log.info('the server said: wrong token hunter2"\\x', { detail: 'was hunter2"\\x', short: 'abc' });
  const last = lines[lines.length - 1];
  t.notOk(last.includes('hunter2'), 'a registered value is masked wherever it is, escaped or not');
  t.match(
    JSON.parse(last),
    { msg: 'the server said: wrong token ***', detail: 'was ***', short: 'abc' },
    'values under 4 characters are not registered',
  );
});

t.test('text lines: one per event, fields as key=value, secrets masked as in JSON', async (t) => {
  const { log, lines } = capture('info', 'text');
  const child = log.child({ nodeId: 'n1' });
  child.debug('not shown');
  child.info('point committed', { point: 3, disk: 'd0', sizes: [1, 2], note: 'two\nlines' });
  child.warn('careful', { err: Object.assign(new Error('boom'), { code: 'RNODE_STORE_IO' }) });
  t.equal(lines.length, 2, 'debug is below info');
  t.ok(
    lines.every((l) => l.endsWith('\n') && !l.slice(0, -1).includes('\n')),
    'one line each, newlines in values escaped',
  );
  t.match(lines[0], /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z point committed nodeId=n1 point=3 disk=d0 sizes=\[1,2\] note=two\\nlines\n$/);
  t.match(lines[1], /Z WARN careful nodeId=n1 err=\{"name":"Error","message":"boom","code":"RNODE_STORE_IO"\}\n$/, 'other levels are named');

  child.info('connecting', { token: 'tok-123456', store: { env: { password: 'pw-abcdef', secretRef: 'env:X' } } });
  child.addSecret('hunter2"\\x');
  log.info('the server said: wrong token hunter2"\\x', { detail: 'was hunter2"\\x' });
  const [masked, registered] = lines.slice(2);
  t.match(masked, / token=\*\*\* store=\{"env":\{"password":"\*\*\*","secretRef":"env:X"\}\}/, 'members that name secrets');
  t.notOk(masked.includes('tok-123456') || masked.includes('pw-abcdef'));
  t.notOk(registered.includes('hunter2'), 'a registered value is masked in text too');
  t.match(registered, /the server said: wrong token \*\*\* detail=was \*\*\*/);

  // A peer's text (a server's error message) with terminal escapes: they recoloured the operator's terminal.
  log.warn('the server refused a message of this node', { message: 'hi\r\n \u001b[31mRED\u001b[0m \u009b2J\u0007', code: 'RNODE_X\tY' });
  const peer = lines[4];
  t.notOk(
    [...peer.slice(0, -1)].some((c) => c.charCodeAt(0) < 0x20 || (c.charCodeAt(0) >= 0x7f && c.charCodeAt(0) <= 0x9f)),
    'no control character is written raw',
  );
  t.match(peer, / message=hi\\n \\u001b\[31mRED\\u001b\[0m \\u009b2J\\u0007 code=RNODE_X\\u0009Y\n$/, 'each is written as its \\u escape');
});
