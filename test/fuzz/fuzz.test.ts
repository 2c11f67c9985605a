// Fuzzing in the regular suite (issue 10, item 8): every parser of outside bytes gets a few seconds of fast-check
// inputs (random bytes, and mutations of the seed corpus in test/fuzz/corpus/). `npm run fuzz -- --minutes N`
// runs the same properties for longer (test/fuzz/run.ts). A counterexample is printed shrunk, with its seed.
import t from 'tap';
import fc from 'fast-check';
import { property } from './props.js';
import { seeds, targets } from './targets.js';

/** Per target; thirteen targets at 2 s stay under the suite's ~30 s budget for fuzzing. */
const MS_PER_TARGET = Number(process.env.RNODE_FUZZ_MS ?? 2000);

for (const target of targets) {
  t.test(`fuzz ${target.name}`, async (t) => {
    const corpus = seeds(target.name);
    t.ok(corpus.length > 0, `${corpus.length} seed(s) in test/fuzz/corpus/${target.name}`);
    // The seeds themselves must satisfy the contract (most are accepted and round-trip).
    for (const s of corpus) await target.run(s);
    let runs = 0;
    const started = Date.now();
    await fc.assert(property(target), {
      numRuns: 1_000_000,
      interruptAfterTimeLimit: MS_PER_TARGET,
      markInterruptAsFailure: false,
      reporter: (d) => {
        runs = d.numRuns;
        if (d.failed) throw new Error(fc.defaultReportMessage(d) ?? 'failed');
      },
    });
    t.ok(runs > 50, `${target.name}: ${runs} inputs in ${Date.now() - started} ms, contract held`);
  });
}
