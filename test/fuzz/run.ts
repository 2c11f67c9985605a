// `npm run fuzz -- --minutes N [--target name]`: runs the fuzz properties of test/fuzz/targets.ts round-robin for
// a time budget (also RNODE_FUZZ_MINUTES), keeps going after a finding, and prints executions and findings.
import fc from 'fast-check';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { property } from './props.js';
import { targets } from './targets.js';

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const minutes = Number(arg('minutes') ?? process.env.RNODE_FUZZ_MINUTES ?? 1);
const only = arg('target');
const chosen = targets.filter((t) => !only || t.name === only);
if (!chosen.length || !(minutes > 0)) {
  console.error(`usage: npm run fuzz -- --minutes N [--target ${targets.map((t) => t.name).join('|')}]`);
  process.exit(2);
}
const findingsDir = fs.mkdtempSync(path.join(os.tmpdir(), 'rnode-fuzz-findings-'));
const stats = new Map(chosen.map((t) => [t.name, { runs: 0, findings: 0, ms: 0 }]));
const seen = new Set<string>();
const deadline = Date.now() + minutes * 60_000;
// ms per target per round: short budgets still reach every target.
const slice = Math.max(1000, Math.min(10_000, (minutes * 60_000) / chosen.length));
console.log(`fuzzing ${chosen.map((t) => t.name).join(', ')} for ${minutes} min; findings go to ${findingsDir}`);

while (Date.now() < deadline) {
  for (const target of chosen) {
    if (Date.now() >= deadline) break;
    const s = stats.get(target.name)!;
    const t0 = Date.now();
    const seed = (Math.random() * 2 ** 31) | 0;
    const d = await fc.check(property(target), {
      seed,
      numRuns: 10_000_000,
      interruptAfterTimeLimit: Math.min(slice, deadline - Date.now()),
      markInterruptAsFailure: false,
    });
    s.runs += d.numRuns;
    s.ms += Date.now() - t0;
    if (d.failed) {
      const err = d.errorInstance as Error | undefined;
      const sig = `${target.name}: ${String(err?.message ?? err)
        .split('\n')[0]
        .replace(/\d+/g, 'N')}`;
      s.findings++;
      const input = d.counterexample?.[0] as Buffer | undefined;
      if (input) fs.writeFileSync(path.join(findingsDir, `${target.name}-${seed}.bin`), input);
      if (!seen.has(sig)) {
        seen.add(sig);
        console.log(`FINDING ${target.name} (seed ${seed}): ${String(err?.message ?? err).slice(0, 500)}`);
        if (input) console.log(`  input (${input.length} bytes): ${input.toString('base64').slice(0, 400)}`);
      }
    }
  }
}
let total = 0;
for (const [name, s] of stats) {
  total += s.runs;
  console.log(
    `${name.padEnd(14)} ${String(s.runs).padStart(10)} executions  ${(s.runs / Math.max(1, s.ms / 1000)).toFixed(0).padStart(7)}/s  ${s.findings} failing run(s)`,
  );
}
console.log(`total ${total} executions in ${minutes} min; ${seen.size} distinct finding(s)`);
process.exitCode = seen.size ? 1 : 0;
