// The CI version of the fault soak (issue 10, item 8): `npm run soak -- --minutes N` runs it for longer. Every
// kept point must restore byte-exact after random store faults, link cuts, writer and serve kills and a full disk.
import t from 'tap';
import { formatCounts, runSoak } from './soak.js';

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
