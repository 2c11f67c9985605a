// Prune's marks as writers see them: the packs a prune has marked for deletion (two-phase delete, see
// docs/repository-v2.md "Prune"). A writer never reuses a chunk from a marked pack, refreshes the marks at every
// checkpoint, and re-checks the packs it reused before it commits. prune owns the object and its format; this is
// the reader writers need: marks live in r2/<domain>/prune/marks (envelope PRUNE_MARKS, JSON
// {format:'rnode-prune-marks', marks:[{pack, at}]}); none means nothing is marked.
import { ErrorCodes, isRnodeError } from '../errors.js';
import type { ObjectStore } from '../store/types.js';
import type { Domain } from './domain.js';
import { EnvelopeKind, envelopeContext, openEnvelope, sealEnvelope } from './envelope.js';
import { r2 } from './names.js';

export const PRUNE_MARKS_NAME = 'marks';

export interface PruneMarks {
  format: 'rnode-prune-marks';
  marks: Array<{ pack: string; at: string }>;
}

export function encodePruneMarks(domain: Domain, m: PruneMarks): Buffer {
  return sealEnvelope(EnvelopeKind.PRUNE_MARKS, envelopeContext.prune(domain.name, PRUNE_MARKS_NAME), Buffer.from(JSON.stringify(m)), domain.key);
}

export function decodePruneMarks(b: Buffer, domain: Domain): PruneMarks {
  const what = r2.prune(domain.name, PRUNE_MARKS_NAME);
  const m = JSON.parse(openEnvelope(b, EnvelopeKind.PRUNE_MARKS, envelopeContext.prune(domain.name, PRUNE_MARKS_NAME), what, domain.key).toString('utf8'));
  return { format: 'rnode-prune-marks', marks: Array.isArray(m?.marks) ? m.marks : [] };
}

/** The ids of the packs prune has marked in the domain (empty when it has marked none). */
export async function markedPacks(store: ObjectStore, domain: Domain): Promise<Set<string>> {
  try {
    return new Set(decodePruneMarks(await store.get(r2.prune(domain.name, PRUNE_MARKS_NAME)), domain).marks.map((x) => x.pack));
  } catch (err) {
    if (isRnodeError(err, ErrorCodes.STORE_NOT_FOUND)) return new Set();
    throw err;
  }
}
