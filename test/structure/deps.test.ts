// The shape of src/ holds: no import circle and no upward arrow between layers (.dependency-cruiser.cjs). A
// violation fails `npm test` with the path of modules that breaks the rule, e.g. "no-circular: a.ts → b.ts → a.ts".
import t from 'tap';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { ROOT } from '../helpers/cli.js';

t.test('dependency rules: no circles, no upward imports', { timeout: 120_000 }, async (t) => {
  const bin = path.join(ROOT, 'node_modules', 'dependency-cruiser', 'bin', 'dependency-cruise.mjs');
  const r = spawnSync(process.execPath, [bin, 'src', '--config', '.dependency-cruiser.cjs', '--output-type', 'json'], {
    cwd: ROOT,
    encoding: 'utf8',
    maxBuffer: 64 << 20,
  });
  t.equal(r.error, undefined, 'dependency-cruiser ran');
  const result = JSON.parse(r.stdout) as {
    summary: {
      violations: Array<{ rule: { name: string }; from: string; to: string; cycle?: Array<string | { name: string }> }>;
      totalCruised: number;
    };
  };
  t.ok(result.summary.totalCruised > 50, `cruised ${result.summary.totalCruised} modules`);
  const lines = result.summary.violations.map((v) => {
    const cycle = v.cycle?.map((c) => (typeof c === 'string' ? c : c.name));
    return `${v.rule.name}: ${cycle ? [v.from, ...cycle].join(' → ') : `${v.from} → ${v.to}`}`;
  });
  t.same(lines, [], lines.length ? `violations:\n${lines.join('\n')}` : 'none');
});
