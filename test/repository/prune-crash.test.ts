// A SIGKILL at every step of prune (the CLI as a child, RNODE_FAILPOINT=prune-*): afterwards every point still listed
// reads back byte-exact, `rnode check --read-data` is ok, and the next prune finishes the work (same end state as a
// run that was never killed: the kept points read back, nothing unused is left after the grace periods).
import t from 'tap';
import { FAILPOINTS, crashTests, uninterruptedTest } from '../helpers/prune-crash.js';

uninterruptedTest(t);
crashTests(t, FAILPOINTS.slice(0, 4));
