// The rnode process's set-up for a one-chunk-job command (src/cli/one-job.ts). Regressions it guards: codec workers
// started for a command that runs no chunk job (a node start each, wasted), and chunk buffers wiped and kept at the
// end of a job in a process that exits right after (30-120 ms at the end of a 16 MiB recover).
import t from 'tap';
import { prepareForCommand } from '../../src/cli/one-job.js';
import { recycleShared, takeShared } from '../../src/pipeline/shared-slots.js';

t.test('other commands and --help start no workers, and returned buffers are still kept for reuse', async (t) => {
  for (const argv of [[], ['--version'], ['points', '--store', 's', '--disk', 'd'], ['recover', '--help'], ['verify', '-h'], ['agent']]) {
    t.equal(await prepareForCommand(argv), undefined, `rnode ${argv.join(' ')}`);
  }
  const b = takeShared(8192);
  b[0] = 7;
  recycleShared(b);
  const again = takeShared(8192);
  t.equal(again, b, 'the returned buffer is handed out again');
  t.equal(again[0], 0, 'wiped first');
});

t.test('recover: the codec workers start, and returned buffers are dropped', async (t) => {
  const workers = await prepareForCommand(['recover', '--store', 's', '--disk', 'd', '--out', 'o']);
  t.ok(workers, 'workers started');
  t.teardown(() => workers?.close());
  await workers!.ready();
  const b = takeShared(8192);
  recycleShared(b);
  t.not(takeShared(8192), b, 'a new buffer, not the returned one');
});
