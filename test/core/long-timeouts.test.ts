// Regression: setTimeout takes at most 2^31 - 1 ms; Node runs a longer delay after 1 ms. So "very long" timeouts
// fired at once: `rnode serve --handshake-timeout 2147484` (or more) dropped every connection as a handshake timeout,
// a store URL's ?requestTimeoutMs=3000000000 failed every request after ~1 ms "got no answer within 3000000000 ms",
// and an agent export with leaseSeconds 3000000 stopped as lease-expired 6 ms after it started (1e306: RNODE_INTERNAL,
// an invalid date). Such values now wait the longest a timer can (src/timer-delay.ts).
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { requestDeadlineMs, requestTimeoutMs } from '../../src/store/common.js';
import { MAX_TIMER_MS, timerDelay } from '../../src/timer-delay.js';
import { CLI, ensureBuilt, runCli } from '../helpers/cli.js';
import { randomData, tmpDir } from '../helpers/images.js';
import { spawnServe } from '../transport/helpers.js';

t.test('a serve with a handshake timeout past the longest timer takes a replicate', async (t) => {
  ensureBuilt();
  const dir = tmpDir(t, 'long-timeouts');
  const tok = path.join(dir, 'token');
  fs.writeFileSync(tok, 'a-token-of-enough-length-0123456789\n', { mode: 0o600 });
  const serve = await spawnServe(t, CLI, [
    '--listen',
    '127.0.0.1:0',
    '--store',
    path.join(dir, 'recv'),
    '--token-file',
    tok,
    '--handshake-timeout',
    '3000000',
  ]);
  const img = path.join(dir, 'd.img');
  fs.writeFileSync(img, randomData(256 * 1024, 4));
  const r = await runCli(['replicate', '--source', img, '--target', serve.url, '--token-file', tok, '--disk', 'd', '--cache-dir', 'none']);
  t.equal(r.code, 0, `replicate over the link (stderr: ${r.stderr})`);
  t.notMatch(serve.log(), /handshake-timeout|handshake timeout/, 'no connection dropped as a handshake timeout');
});

t.test("a store URL's requestTimeoutMs past the longest timer is the longest timer", async (t) => {
  t.equal(requestTimeoutMs(new URL('s3://b/p?requestTimeoutMs=3000000000')), MAX_TIMER_MS);
  t.equal(requestTimeoutMs(new URL('s3://b/p?requestTimeoutMs=5000')), 5000, 'a usual value as given');
  t.equal(requestDeadlineMs(120_000, 2e12), MAX_TIMER_MS, "a 2 TB disk's upload deadline (a gs:// restore output) is the longest timer");
  t.equal(requestDeadlineMs(120_000, 64 * 1000), 121_000, 'a pack at 64 KiB/s on top of the timeout');
  t.equal(timerDelay(1e306), MAX_TIMER_MS);
  t.equal(timerDelay(Infinity), MAX_TIMER_MS);
  t.equal(timerDelay(-5), 0);
});
