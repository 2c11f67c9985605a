// `npm run soak -- --minutes N [--seed S]`: the fault soak of test/soak/soak.ts, its counts printed at the end;
// exits 1 when any kept point did not restore byte-exact or anything else went wrong.
import { formatCounts, runSoak } from './soak.js';

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const minutes = Number(arg('minutes') ?? process.env.RNODE_SOAK_MINUTES ?? 2);
const seed = arg('seed') !== undefined ? Number(arg('seed')) : Math.floor(Math.random() * 1e6);
console.log(`soak: ${minutes} min, seed ${seed}`);
const c = await runSoak({ minutes, seed, log: (l) => console.log(l) });
console.log(formatCounts(c));
process.exitCode = c.badRestores || c.badVerifies || c.problems.length ? 1 : 0;
