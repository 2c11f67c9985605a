// prune-crash.test.ts, continued: a SIGKILL at each step of the sweep, repack and index compaction.
import t from 'tap';
import { FAILPOINTS, crashTests } from '../helpers/prune-crash.js';

crashTests(t, FAILPOINTS.slice(4));
