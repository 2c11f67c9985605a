// Self-signed certificates made by the openssl CLI for the TLS tests (peer link and agent): one per CN, valid
// for 127.0.0.1 and localhost. haveOpenssl says whether the CLI is here (.ci/run installs it).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export function makeCert(dir: string, cn = '127.0.0.1'): { cert: string; key: string; certFile: string } {
  const certFile = path.join(dir, `${cn}.crt`);
  const keyFile = path.join(dir, `${cn}.key`);
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-days',
      '2',
      '-subj',
      `/CN=${cn}`,
      '-addext',
      `subjectAltName=IP:127.0.0.1,DNS:localhost`,
      '-keyout',
      keyFile,
      '-out',
      certFile,
    ],
    { stdio: 'pipe' },
  );
  return { cert: fs.readFileSync(certFile, 'utf8'), key: fs.readFileSync(keyFile, 'utf8'), certFile };
}

export const haveOpenssl = (() => {
  try {
    execFileSync('openssl', ['version'], { stdio: 'pipe' });
    return true;
  } catch {
    return false;
  }
})();
