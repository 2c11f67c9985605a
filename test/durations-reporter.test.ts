// The reporter of `npm test` passes TAP through and ends with durations and, for a log cut to its tail, the
// failed assertions by file, with what the failing file said in comments.
import t from 'tap';
import { Readable } from 'node:stream';
import { text } from 'node:stream/consumers';
// @ts-expect-error: a plain .mjs module without types
import DurationsReporter from './durations-reporter.mjs';

const TAP = `TAP version 14
# Subtest: test/a.test.ts
    # Subtest: scheduling
        ok 1 - points increase
        # gaps: 1.70 1.74
        not ok 2 - runs start about every second (median gap 1.72 s)
          ---
          at:
            lineNumber: 58
          ...
        1..2
    not ok 1 - scheduling # time=812.5ms
    # time=812.5ms
    1..1
not ok 1 - test/a.test.ts # time=1200.5ms
# Subtest: test/b.test.ts
    ok 1 - fine
    1..1
ok 2 - test/b.test.ts # time=300ms
1..2
`;

t.test('durations, slowest first, then the failed assertions by file', async (t) => {
  const out = await text(Readable.from([TAP.slice(0, 100), TAP.slice(100)]).pipe(new DurationsReporter()));
  t.ok(out.startsWith(TAP), 'the TAP stream unchanged');
  const tail = out.slice(TAP.length).split('\n');
  t.match(tail[1], /2 files, 1\.5 s/);
  t.match(tail[2], /1\.2 s {2}✗ test\/a\.test\.ts$/);
  t.match(tail[3], /0\.3 s {4}test\/b\.test\.ts$/);
  t.same(tail.slice(5), [
    '# failed: 1 file(s)',
    '# ✗ test/a.test.ts',
    '#       not ok - runs start about every second (median gap 1.72 s)',
    '#   not ok - scheduling',
    '#     | gaps: 1.70 1.74',
    '',
  ]);
});

t.test('nothing after the durations when every file passed', async (t) => {
  const ok = 'ok 1 - test/b.test.ts # time=300ms\n1..1\n';
  const out = await text(Readable.from([ok]).pipe(new DurationsReporter()));
  t.notMatch(out, /failed/);
});
