// Whether the openssl CLI is here (.ci/run installs it): the TLS tests' certificates come from it
// (selfSignedCert in replication-node/testing).
import { execFileSync } from 'node:child_process';

export const haveOpenssl = (() => {
  try {
    execFileSync('openssl', ['version'], { stdio: 'pipe' });
    return true;
  } catch {
    return false;
  }
})();
