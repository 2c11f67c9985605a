// The agent's one way to open the store a job or an export names: the store.env map becomes the client's
// environment (cloud credentials, secrets by reference) and, for ws:// and wss://, typed RemoteAccess settings.
import type { Logger } from '../log.js';
import { openStore, type RemoteAccess, type WrapOptions, type WrappedStore } from '../store/index.js';
import type { StoreDef } from './protocol.js';
import { refuseKeyAsCredential, storeEnv } from './secrets.js';
import type { StateDir } from './state.js';

/**
 * The store.env names that reach a ws:// or wss:// target (control protocol, store.env): file paths on this node and
 * a fingerprint, never the token itself. They are read from the store definition here, at the boundary, and passed
 * down as typed settings; nothing below the agent reads them from an environment.
 */
const REMOTE_STORE_ENV = { tokenFile: 'RNODE_TOKEN_FILE', caFile: 'RNODE_CA_FILE', pinSha256: 'RNODE_PIN_SHA256' } as const;

/** Opens def's store; wrap carries a replicate job's bandwidth limit (src/store/wrap.ts), as the CLI's does. */
export async function openStoreOf(def: StoreDef, state: StateDir, log: Logger, wrap?: WrapOptions): Promise<WrappedStore> {
  const env = await storeEnv(def, state, log);
  const remote: RemoteAccess = {};
  for (const [field, name] of Object.entries(REMOTE_STORE_ENV) as [keyof typeof REMOTE_STORE_ENV, string][]) {
    if (def.env?.[name] !== undefined && env[name]) remote[field] = env[name];
  }
  // ws:// and wss:// stores come with the peer transport, which registers them; it is loaded only for such a store.
  if (/^wss?:\/\//i.test(def.url)) {
    const { readTokenFile } = await import('../transport/index.js');
    // The token goes to the peer the URL names: a file holding one of the node's keys must not be read for it.
    if (remote.tokenFile) {
      remote.token = readTokenFile(remote.tokenFile);
      await refuseKeyAsCredential(Buffer.from(remote.token), `store.env.${REMOTE_STORE_ENV.tokenFile} (${remote.tokenFile})`, state, log);
    }
  }
  return openStore(def.url, { env, ...(Object.keys(remote).length > 0 ? { remote } : {}), ...(wrap ? { wrap } : {}) });
}
