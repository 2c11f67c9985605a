// The CI version of the fault soak (issue 10, item 8): `npm run soak -- --minutes N` runs it for longer. Every
// kept point must restore byte-exact after random store faults, link cuts, writer and serve kills and a full disk.
import net from 'node:net';
import t from 'tap';
import { formatCounts, leaseWaitMs, runSoak } from './soak.js';

const MINUTES = Number(process.env.RNODE_SOAK_MINUTES ?? 2);

t.test(`fault soak, ${MINUTES} min`, async (t) => {
  const c = await runSoak({ minutes: MINUTES, seed: Number(process.env.RNODE_SOAK_SEED ?? 1) });
  t.comment(formatCounts(c));
  t.equal(c.badRestores, 0, 'no bad restore');
  t.equal(c.badVerifies, 0, 'verify finds every kept point intact');
  t.same(c.problems, [], 'nothing else went wrong');
  t.ok(c.pointsVerified > 0 && c.runs > 0, `${c.pointsVerified} points verified over ${c.runs} runs`);
  t.ok(c.faultsInjected + c.writerKills + c.serveKills + c.linkCuts > 0, 'faults happened');
});

// A `serve` that failed to start (its port taken between the kill and the restart) threw out of the soak and
// ended the whole run; now it is counted and the node comes back on another port.
t.test('a serve that cannot take its port back is a counted event, not the end of the soak', async (t) => {
  const thieves: net.Server[] = [];
  t.teardown(() => {
    for (const s of thieves) s.close();
  });
  const c = await runSoak({
    minutes: 0.25,
    seed: 7,
    episodes: ['killServe'],
    onServeKilled: (port) =>
      new Promise<void>((resolve, reject) => {
        const s = net.createServer();
        thieves.push(s);
        s.once('error', reject);
        s.listen(port, '127.0.0.1', () => resolve());
      }),
  });
  t.comment(formatCounts(c));
  t.ok(c.serveKills > 0, `${c.serveKills} serve kills`);
  t.equal(c.serveStartFailures, c.serveKills, 'each restart on the taken port failed once, and was counted');
  t.same(c.problems, [], 'nothing else went wrong');
  t.equal(c.badRestores, 0, 'no bad restore');
  t.ok(c.pointsVerified > 0, `${c.pointsVerified} points verified`);
});

// The soak's retry waited a fixed second per attempt: 8 attempts fell short of a 5 s lease's 10 s binding time on
// a slow CI machine, and the soak reported a held disk as a failure.
t.test('a held lease is waited out until the time its message names', async (t) => {
  const now = Date.parse('2026-12-06T17:04:20.000Z');
  const msg = 'rnode: RNODE_LEASE_HELD: disk d0 is being written by soak/1/a (lease until 2026-12-06T17:04:27.185Z); wait';
  t.equal(leaseWaitMs(msg, now), 7285);
  t.equal(leaseWaitMs(msg, now + 60_000), 100, 'a time already past: a short pause');
  t.equal(leaseWaitMs('rnode: RNODE_LEASE_HELD: something else', now), 1000);
});
