// Secrets travel by reference: a policy names "env:NAME" or "file:NAME" and the node resolves it locally, at
// the moment a run needs it. Resolved values go to the store client's environment and to the logger's
// redaction list, never to disk or to the server.
import fsp from 'node:fs/promises';
import { RnodeError } from '../errors.js';
import type { Logger } from './log.js';
import { ProtoErrors, type SecretRef, type StoreDef } from './protocol.js';
import type { StateDir } from './state.js';

export async function resolveSecret(ref: SecretRef, state: StateDir, log: Logger): Promise<string> {
  const m = /^(env|file):(.+)$/.exec(ref.secretRef);
  if (!m) throw new RnodeError(ProtoErrors.SECRET, `secret reference ${JSON.stringify(ref.secretRef)} is not env:NAME or file:NAME`);
  let value: string | undefined;
  if (m[1] === 'env') value = process.env[m[2]];
  else {
    try {
      value = (await fsp.readFile(state.secretPath(m[2]), 'utf8')).replace(/\r?\n$/, '');
    } catch {
      value = undefined;
    }
  }
  if (value === undefined || value === '') {
    throw new RnodeError(ProtoErrors.SECRET, `secret ${ref.secretRef} is not available on this node; ` +
      (m[1] === 'env' ? `set ${m[2]} in the agent's environment` : `put it in ${state.secretPath(m[2])}`));
  }
  log.addSecret(value);
  return value;
}

/** The environment a store client sees: the node's, plus the store definition's (secrets resolved). */
export async function storeEnv(def: StoreDef, state: StateDir, log: Logger): Promise<NodeJS.ProcessEnv> {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const [k, v] of Object.entries(def.env ?? {})) env[k] = typeof v === 'string' ? v : await resolveSecret(v, state, log);
  return env;
}
