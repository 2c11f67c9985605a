// Self-signed certificates for the TLS tests (peer link and agent): replication-node/testing makes them with the
// openssl CLI. haveOpenssl says whether the CLI is here (.ci/run installs it).
import { execFileSync } from 'node:child_process';

export { selfSignedCert as makeCert } from '../../src/testing.js';

export const haveOpenssl = (() => {
  try {
    execFileSync('openssl', ['version'], { stdio: 'pipe' });
    return true;
  } catch {
    return false;
  }
})();
