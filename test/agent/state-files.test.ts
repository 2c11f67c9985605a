// The agent's state files read back with their shape checked. A truncated outbox.json reset the report seq to 1, so
// the server dropped every later report as a duplicate while the node thought them delivered; {} / [] / null in
// outbox.json, policies.json or disks.json crashed the agent at start (RNODE_INTERNAL); a damaged node.json silently
// made a new node identity; an unparsable policies.json was dropped without a word.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Agent } from '../../src/agent/agent.js';
import type { AgentReport } from '../../src/agent/protocol.js';
import { StateDir, type Outbox } from '../../src/agent/state.js';
import { silentLogger } from '../../src/log.js';
import { lines, runCli } from '../helpers/cli.js';
import { parsedLogs, startAgent, startMs, tmpDir, waitUntil, writeToken } from './helpers.js';

const missed = (disk: string): AgentReport => ({ type: 'rpo.missed', group: 'g', disk, rpoSeconds: 60, lagSeconds: 61, lastPointAt: null });
/** What the server holds after reports d1-d4, each once and in order: [seq, disk]. */
const heldInOrder = (ms: { reports: Array<{ msg: Record<string, unknown> }> }) => ms.reports.map((r) => [r.msg.seq, r.msg.disk]);
const D1_TO_D4 = ['d1', 'd2', 'd3', 'd4'].map((d, i) => [i + 1, d]);

t.test('a truncated outbox.json: later reports are numbered after the last one the server holds, also across a restart', async (t) => {
  const dir = tmpDir(t, 'agent-state');
  const ms = await startMs(t);
  const first = await startAgent(t, ms, dir);
  const node = await ms.waitFor(() => ms.nodes.get(first.agent.nodeId)?.connected && ms.nodes.get(first.agent.nodeId), 10_000, 'registration');
  first.agent.link.report(missed('d1'));
  first.agent.link.report(missed('d2'));
  await ms.waitFor(() => node.lastSeq === 2 && first.agent.link.queuedReports === 0, 10_000, 'two reports stored and acked');
  await first.agent.stop();
  const outbox = path.join(first.stateDir, 'outbox.json');
  fs.writeFileSync(outbox, '{"nextSeq":');

  // Restarted while the server is away: the report made meanwhile cannot know its number yet.
  await ms.stopListening();
  const offline = await startAgent(t, ms, dir);
  t.equal(offline.agent.nodeId, first.agent.nodeId, 'same node');
  const warning = parsedLogs(offline.logs).find((e) => e.msg.startsWith('state file outbox.json is damaged'));
  t.match(warning, { level: 'warn', file: outbox, problem: /^not valid JSON/ }, 'the damage is logged');
  t.equal(fs.existsSync(`${outbox}.damaged`) && fs.readFileSync(`${outbox}.damaged`, 'utf8'), '{"nextSeq":', 'the damaged file is kept for a look');
  offline.agent.link.report(missed('d3'));
  await offline.agent.stop();

  await ms.listen();
  const again = await startAgent(t, ms, dir);
  await ms.waitFor(() => again.agent.link.isRegistered, 10_000, 'registration');
  again.agent.link.report(missed('d4'));
  await ms.waitFor(() => again.agent.link.queuedReports === 0, 10_000, 'every report acked');
  t.same(heldInOrder(ms), D1_TO_D4, 'no report dropped as a duplicate');
});

t.test('renumbered reports are sent only once their new numbers are saved (a crash between would duplicate one)', async (t) => {
  const dir = tmpDir(t, 'agent-state');
  const ms = await startMs(t);
  const first = await startAgent(t, ms, dir);
  await ms.waitFor(() => first.agent.link.isRegistered, 10_000, 'registration');
  first.agent.link.report(missed('d1'));
  await ms.waitFor(() => first.agent.link.queuedReports === 0, 10_000, 'acked');
  await first.agent.stop();
  fs.writeFileSync(path.join(first.stateDir, 'outbox.json'), '{"nextSeq":');
  await ms.stopListening();
  const offline = await startAgent(t, ms, dir);
  offline.agent.link.report(missed('d2'));
  await offline.agent.stop();

  // The save of the renumbered queue takes 400 ms: what the server holds when it ends says whether d2 went first.
  const save = StateDir.prototype.saveOutbox;
  const atSaveEnd: number[] = [];
  StateDir.prototype.saveOutbox = async function (this: StateDir, o: Outbox) {
    if (o.awaitingServerSeq || !o.reports.some((r) => r.msg.disk === 'd2')) return save.call(this, o);
    await new Promise((r) => setTimeout(r, 400));
    await save.call(this, o);
    atSaveEnd.push(ms.reports.length);
  };
  t.teardown(() => {
    StateDir.prototype.saveOutbox = save;
  });
  await ms.listen();
  const again = await startAgent(t, ms, dir);
  await ms.waitFor(() => again.agent.link.isRegistered && again.agent.link.queuedReports === 0, 10_000, 'd2 acked');
  t.equal(atSaveEnd[0], 1, 'the server had only d1 when the renumbered queue was saved');
  t.same(
    ms.reports.map((r) => [r.msg.seq, r.msg.disk]),
    [
      [1, 'd1'],
      [2, 'd2'],
    ],
    'then d2, numbered after d1',
  );
});

const POLICY = { group: 'g1', revision: 1, rpoSeconds: 3600, paused: true, store: { url: '/nowhere' }, disks: [] };

// Each case: the files written, the warnings expected (by message start), what the agent then holds.
const cases: { name: string; files: Record<string, string>; warns: RegExp[]; groups?: string[] }[] = [
  { name: 'outbox.json {}', files: { 'outbox.json': '{}' }, warns: [/^state file outbox\.json is damaged/] },
  { name: 'outbox.json []', files: { 'outbox.json': '[]' }, warns: [/^state file outbox\.json is damaged/] },
  { name: 'outbox.json null', files: { 'outbox.json': 'null' }, warns: [/^state file outbox\.json is damaged/] },
  {
    name: 'outbox.json with a report that is not one',
    files: { 'outbox.json': JSON.stringify({ nextSeq: 3, reports: [{ seq: 2, msg: { type: 'rpo.missed' } }] }) },
    warns: [/^dropped a damaged report of outbox\.json/],
  },
  { name: 'policies.json null', files: { 'policies.json': 'null' }, warns: [/^state file policies\.json is damaged/] },
  { name: 'policies.json {"a":1}', files: { 'policies.json': '{"a":1}' }, warns: [/^state file policies\.json is damaged/] },
  { name: 'policies.json not JSON', files: { 'policies.json': '[{"group":' }, warns: [/^state file policies\.json is damaged/] },
  {
    name: 'policies.json with one damaged policy',
    files: { 'policies.json': JSON.stringify([POLICY, { group: 'g2' }]) },
    warns: [/^dropped a damaged policy of policies\.json/],
    groups: ['g1'],
  },
  { name: 'disks.json null', files: { 'disks.json': 'null' }, warns: [/^state file disks\.json is damaged/] },
  {
    name: 'disks.json with a record that is not one',
    files: { 'disks.json': JSON.stringify({ a: { lastPointAt: 'yesterday' }, b: { lastPoint: 3 } }) },
    warns: [/^dropped a damaged record of disks\.json/],
  },
];

t.test('state files of the wrong shape: a warning naming the file, and the agent starts', async (t) => {
  const ms = await startMs(t);
  await ms.stopListening(); // no policy.sync: what the agent holds is what it read
  for (const c of cases) {
    const dir = tmpDir(t, 'agent-state');
    const stateDir = path.join(dir, 'state-a');
    fs.mkdirSync(stateDir);
    for (const [name, text] of Object.entries(c.files)) fs.writeFileSync(path.join(stateDir, name), text);
    const { agent, logs } = await startAgent(t, ms, dir);
    const warnings = parsedLogs(logs).filter((e) => e.level === 'warn');
    for (const w of c.warns)
      t.ok(
        warnings.some((e) => w.test(e.msg)),
        `${c.name}: warned ${w}`,
      );
    t.same(
      agent.scheduler.list().map((p) => p.group),
      c.groups ?? [],
      `${c.name}: policies held`,
    );
    await agent.stop();
  }
});

t.test('a damaged node.json stops the agent; it never makes a new identity', async (t) => {
  const dir = tmpDir(t, 'agent-state');
  const stateDir = path.join(dir, 'state');
  fs.mkdirSync(stateDir);
  for (const text of ['', '{"nodeId":', 'null', '{}', '{"nodeId":"not an id"}']) {
    fs.writeFileSync(path.join(stateDir, 'node.json'), text);
    await t.rejects(
      Agent.start({ server: 'ws://127.0.0.1:1', tokenFile: writeToken(dir), stateDir, nodeName: 'a' }),
      { code: 'RNODE_STATE_CORRUPT', message: /node\.json is damaged .*restore it from a backup, or remove it to register as a new node/ },
      JSON.stringify(text),
    );
    t.equal(fs.readFileSync(path.join(stateDir, 'node.json'), 'utf8'), text, 'left as it was');
  }
});

t.test('a damaged node.json: one line naming the file, exit 2', async (t) => {
  const dir = tmpDir(t, 'agent-state');
  const state = path.join(dir, 'state');
  fs.mkdirSync(state);
  fs.writeFileSync(path.join(state, 'node.json'), '{"nodeId":');
  const r = await runCli(['agent', '--server', 'ws://127.0.0.1:1', '--token-file', writeToken(dir), '--state-dir', state], { timeoutMs: 15_000 });
  t.equal(r.code, 2, r.stderr);
  const out = lines(r.stderr);
  t.equal(out.length, 1, r.stderr);
  t.match(out[0], /^rnode: RNODE_STATE_CORRUPT: state file \S+node\.json is damaged \(not valid JSON.*\); .*restore it from a backup, or remove it/);
  t.equal(fs.readFileSync(path.join(state, 'node.json'), 'utf8'), '{"nodeId":', 'left as it was');
});

// A state folder restored from an older backup: the server's welcome said ackedSeq 3 while the node's last seq was 1,
// so the node numbered its next reports 2, 3 and the server dropped them as duplicates, without a word.
t.test('a state folder restored from an older backup: new reports are numbered after the last one the server holds', async (t) => {
  const dir = tmpDir(t, 'agent-state');
  const ms = await startMs(t);
  const first = await startAgent(t, ms, dir);
  await ms.waitFor(() => first.agent.link.isRegistered, 10_000, 'registration');
  first.agent.link.report(missed('d1'));
  await ms.waitFor(() => first.agent.link.queuedReports === 0, 10_000, 'd1 acked');
  await first.agent.stop();
  const backup = path.join(dir, 'backup');
  fs.cpSync(first.stateDir, backup, { recursive: true });

  const second = await startAgent(t, ms, dir);
  await ms.waitFor(() => second.agent.link.isRegistered, 10_000, 'registration');
  second.agent.link.report(missed('d2'));
  second.agent.link.report(missed('d3'));
  await ms.waitFor(() => second.agent.link.queuedReports === 0, 10_000, 'd2, d3 acked');
  await second.agent.stop();

  fs.rmSync(first.stateDir, { recursive: true });
  fs.cpSync(backup, first.stateDir, { recursive: true });
  const restored = await startAgent(t, ms, dir);
  await ms.waitFor(() => restored.agent.link.isRegistered, 10_000, 'registration');
  restored.agent.link.report(missed('d4'));
  await ms.waitFor(() => ms.reports.length === 4, 10_000, 'd4 stored');
  t.same(
    ms.reports.map((r) => [r.msg.seq, r.msg.disk]),
    [
      [1, 'd1'],
      [2, 'd2'],
      [3, 'd3'],
      [4, 'd4'],
    ],
    'd4 numbered after d3, not dropped as a duplicate of d2',
  );
  t.match(
    parsedLogs(restored.logs).find((e) => e.level === 'warn' && /numbering continues after them/.test(e.msg)),
    { ackedSeq: 3, lastSeq: 1 },
    'a warning says what happened',
  );
  restored.agent.link.report(missed('d5'));
  await ms.waitFor(() => ms.reports.length === 5, 10_000, 'd5 stored');
  t.equal(ms.reports[4].msg.seq, 5);
});

// A node killed after sending two reports, with only the first one's save of the queue on disk (the ack of it not
// yet saved either): it came back with that report queued, numbered it after the second (which the server held), and
// sent it again. Seen as a second job.accepted of a job in agent/restart.
t.test('a report the server holds, still queued after a kill that lost a later one, is not sent again', async (t) => {
  const dir = tmpDir(t, 'agent-state');
  const ms = await startMs(t);
  const first = await startAgent(t, ms, dir);
  await ms.waitFor(() => first.agent.link.isRegistered, 10_000, 'registration');
  for (const d of ['d1', 'd2', 'd3']) first.agent.link.report(missed(d));
  await ms.waitFor(() => first.agent.link.queuedReports === 0, 10_000, 'd1-d3 acked');
  await first.agent.stop();
  // The queue as the kill left it: d2 saved and not known acked, d3 (sent, held by the server) never saved.
  const outbox = path.join(first.stateDir, 'outbox.json');
  const d2 = ms.reports[1].msg;
  fs.writeFileSync(outbox, JSON.stringify({ nextSeq: 3, reports: [{ seq: 2, msg: d2 }] }));

  const again = await startAgent(t, ms, dir);
  await ms.waitFor(() => again.agent.link.isRegistered, 10_000, 'registration');
  again.agent.link.report(missed('d4'));
  await ms.waitFor(() => ms.reports.length >= 4 && again.agent.link.queuedReports === 0, 10_000, 'every report acked');
  t.same(heldInOrder(ms), D1_TO_D4, 'd2 is not sent again, and d4 is numbered after d3');
});

// A full state folder: every failed state write left its <file>.<pid>.<id>.tmp behind, and nothing removed them; the
// readiness probe left its .probe-<pid> too.
t.test(
  'a state write or probe that fails leaves no file; stale ones are removed at start',
  { skip: process.getuid?.() !== 0 && 'needs root to mount a small tmpfs' },
  async (t) => {
    const dir = tmpDir(t, 'agent-state');
    const mnt = path.join(dir, 'mnt');
    fs.mkdirSync(mnt);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=512k', 'tmpfs', mnt]);
    t.teardown(() => execFileSync('umount', ['-l', mnt]));
    const ms = await startMs(t);
    const a = await startAgent(t, ms, dir, { stateDir: path.join(mnt, 'state') });
    await ms.waitFor(() => a.agent.link.isRegistered, 10_000, 'registration');
    // The registration renumbers the fresh queue: that write must not land on the full disk too (a fourth failure).
    const outbox = path.join(a.stateDir, 'outbox.json');
    await waitUntil(
      () => fs.existsSync(outbox) && !JSON.parse(fs.readFileSync(outbox, 'utf8')).awaitingServerSeq,
      5000,
      'the renumbered queue saved',
    );
    await ms.stopListening(); // the reports stay queued, so each one rewrites the outbox
    const fill = path.join(mnt, 'fill');
    try {
      fs.writeFileSync(fill, Buffer.alloc(1024 * 1024));
    } catch (err) {
      t.equal((err as NodeJS.ErrnoException).code, 'ENOSPC', 'the filesystem is full');
    }
    for (const d of ['d1', 'd2', 'd3']) a.agent.link.report(missed(d));
    await waitUntil(
      () => parsedLogs(a.logs).filter((e) => e.msg === 'could not persist the report queue').length === 3,
      10_000,
      'three failed writes',
    );
    t.same(
      fs.readdirSync(a.stateDir).filter((f) => f.endsWith('.tmp')),
      [],
      'no temp file left',
    );
    // The readiness probe made its file, failed to write it, and left it behind.
    t.equal(a.agent.state.writable(), false, 'the state folder is not writable');
    t.same(
      fs.readdirSync(a.stateDir).filter((f) => f.startsWith('.probe-')),
      [],
      'no probe file left',
    );
    await a.agent.stop();
    fs.rmSync(fill);

    const stale = ['outbox.json.4242.0a1b2c3d.tmp', 'policies.json.17.deadbeef.tmp', '.probe-4242'];
    for (const f of stale) fs.writeFileSync(path.join(a.stateDir, f), '{');
    fs.writeFileSync(path.join(a.stateDir, 'notes.tmp'), 'not ours');
    const b = await startAgent(t, ms, dir, { stateDir: a.stateDir });
    t.same(
      stale.filter((f) => fs.existsSync(path.join(a.stateDir, f))),
      [],
      'the stale temp files of state writes are removed at start',
    );
    t.ok(fs.existsSync(path.join(a.stateDir, 'notes.tmp')), 'nothing else');
    await b.agent.stop();
  },
);

// The record of the secrets used as encryption keys (key-secrets.json): a write that failed left the key in memory
// only, so the next job with that key took it for recorded and nothing reached the disk (after a restart a Management
// Server could name the key as a store credential again); and a read that failed once was kept until a restart.
t.test('key-secrets.json: a failed write is taken back and done again, a failed read is tried again', async (t) => {
  const dir = tmpDir(t, 'key-secrets');
  const log = silentLogger();
  const state = new StateDir(dir);
  const write = state.writeJson.bind(state);
  let failNext = true;
  state.writeJson = async (name: string, value: unknown) => {
    if (name === 'key-secrets.json' && failNext) {
      failNext = false;
      throw Object.assign(new Error('injected: no space left on device'), { code: 'ENOSPC' });
    }
    return write(name, value);
  };
  await t.rejects(state.recordKeySecret('file:disk-key', 'k1', log), /no space/, 'the first job fails: its key is not recorded');
  t.same(await state.keySecrets(log), { refs: [], keyIds: [] }, 'and is not taken for recorded');
  await state.recordKeySecret('file:disk-key', 'k1', log);
  t.same(
    JSON.parse(fs.readFileSync(path.join(dir, 'key-secrets.json'), 'utf8')),
    { refs: ['file:disk-key'], keyIds: ['k1'] },
    'the next job writes it',
  );
  t.same(await new StateDir(dir).keySecrets(log), { refs: ['file:disk-key'], keyIds: ['k1'] }, 'a restart reads it');

  const other = tmpDir(t, 'key-secrets');
  fs.mkdirSync(path.join(other, 'key-secrets.json'));
  const blocked = new StateDir(other);
  await t.rejects(blocked.keySecrets(log), 'a folder in its place: the read fails');
  fs.rmdirSync(path.join(other, 'key-secrets.json'));
  t.same(await blocked.keySecrets(log), { refs: [], keyIds: [] }, 'once it is gone, the next read succeeds');
});

// A welcome or ack with a seq of 2^53 or more was taken: seq + 1 === seq from then on, so the server dropped every later
// report as a duplicate (also after restarts, the outbox then holding no valid nextSeq); and an ack of a seq the node
// never sent dropped reports it had not sent.
t.test('a welcome or ack with a seq the node never sent, or past 2^53 - 1, is refused; the queue is kept', async (t) => {
  const dir = tmpDir(t, 'agent-state');
  const ms = await startMs(t);
  let holdAcks = true;
  let hugeWelcome = false;
  const send = ms.send.bind(ms);
  ms.send = (nodeId, msg) => {
    if (holdAcks && msg.type === 'ack') return true;
    if (hugeWelcome && msg.type === 'welcome') return ms.sendRaw(nodeId, JSON.stringify({ v: 1, id: 'w-huge', ...msg, ackedSeq: 2 ** 53 + 10 }));
    return send(nodeId, msg);
  };
  const a = await startAgent(t, ms, dir);
  const node = await ms.waitFor(() => ms.nodes.get(a.agent.nodeId)?.connected && ms.nodes.get(a.agent.nodeId), 10_000, 'registration');
  a.agent.link.report(missed('d1'));
  await ms.waitFor(() => ms.reports.length === 1, 10_000, 'd1 stored');
  const sent = Number(ms.reports[0].msg.seq);
  const reply = (id: string) => ms.waitFor(() => ms.errors.find((e) => e.msg.replyTo === id)?.msg, 5000, `the refusal of ${id}`);
  for (const [id, seq, why] of [
    ['a1', 1e300, /\/seq: must be <= 9007199254740991/],
    ['a2', 2 ** 53 + 10, /\/seq: must be <= 9007199254740991/],
    ['a3', sent + 1, new RegExp(`ack of seq ${sent + 1}, past the last report this node sent \\(seq ${sent}\\)`)],
  ] as const) {
    ms.sendRaw(node.id, JSON.stringify({ v: 1, type: 'ack', id, seq }));
    t.match(await reply(id), { code: 'RNODE_PROTO_INVALID', message: why }, `ack ${seq} refused`);
  }
  t.equal(a.agent.link.queuedReports, 1, 'the report is still queued');
  ms.sendRaw(node.id, JSON.stringify({ v: 1, type: 'ack', id: 'a4', seq: sent }));
  await waitUntil(() => a.agent.link.queuedReports === 0, 5000, 'the true ack taken');

  hugeWelcome = true;
  holdAcks = false;
  node.ws!.terminate();
  t.match(await reply('w-huge'), { code: 'RNODE_PROTO_INVALID', message: /\/ackedSeq: must be <= 9007199254740991/ }, 'the welcome refused');
  await waitUntil(() => parsedLogs(a.logs).some((e) => e.level === 'error' && /refused the server's welcome/.test(e.msg)), 5000, 'logged');
  t.notOk(a.agent.link.isRegistered, 'not registered on it');
  a.agent.link.report(missed('d2'));
  hugeWelcome = false;
  await ms.waitFor(() => ms.reports.length === 2 && a.agent.link.queuedReports === 0, 10_000, 'd2 stored once a sound welcome came');
  t.same(
    ms.reports.map((r) => [r.msg.seq, r.msg.disk]),
    [
      [sent, 'd1'],
      [sent + 1, 'd2'],
    ],
    'numbering goes on',
  );
});
