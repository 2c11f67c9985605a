// replication-node/testing: the fakes and generators tests, benchmarks and examples use; not the node's API.
// Importing it registers the mem:// store scheme (an in-process MemoryStore per name: the same name, the same store).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { MemoryStore } from './store/memory/memory-store.js';
import { registerStoreScheme } from './store/schemes.js';

export { MemoryStore };
export { FaultyStore, type Fault } from './store/wrappers/faulty.js';
export { generateSampleDisk, scatterWrites, fillMixed, Prng } from './sample/sample-disk.js';
/** The addon's change-hash runs, as an incremental reads with them: the bench's floor of that scan. */
export { changeHashes } from './native/index.js';

const memoryStores = new Map<string, MemoryStore>();
registerStoreScheme('mem', async (url) => {
  const name = url.host + url.pathname;
  let store = memoryStores.get(name);
  if (!store) memoryStores.set(name, (store = new MemoryStore(`mem://${name}`)));
  return store;
});

/**
 * A self-signed certificate and key for `cn`, valid two days for 127.0.0.1 and localhost, made by the openssl CLI in
 * dir: what the TLS tests, the vSphere simulator and the wss:// benchmark serve with (`rnode serve --tls-cert --tls-key`)
 * and trust (--ca certFile).
 */
export function selfSignedCert(dir: string, cn = '127.0.0.1'): { cert: string; key: string; certFile: string; keyFile: string } {
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
  // Private, as rnode requires of --tls-key (older openssl releases wrote the key with the umask's mode).
  fs.chmodSync(keyFile, 0o600);
  return { cert: fs.readFileSync(certFile, 'utf8'), key: fs.readFileSync(keyFile, 'utf8'), certFile, keyFile };
}
