// Opens the source named on the command line or in a job: a path (raw image or block device) for now;
// nbd:// and vddk:// sources register here as they land.
import { ErrorCodes, RnodeError } from '../errors.js';
import { fileUrlPath } from '../file-url.js';
import { RawSource } from './raw.js';
import type { BlockSource } from './types.js';

export type { BlockSource, Extent } from './types.js';
export { RawSource } from './raw.js';

export type SourceFactory = (location: string, opts: Record<string, unknown>) => Promise<BlockSource>;
const schemes = new Map<string, SourceFactory>();

export function registerSourceScheme(scheme: string, factory: SourceFactory): void {
  schemes.set(scheme, factory);
}
// Loaded for such a source only: a replicate of a file or device needs neither the NBD client nor node:net.
for (const scheme of ['nbd', 'nbd+unix'])
  registerSourceScheme(scheme, async (location, opts) => (await import('./nbd/nbd-source.js')).openNbdSource(location, opts));

export async function openSource(location: string, opts: Record<string, unknown> = {}): Promise<BlockSource> {
  const m = /^([a-z][a-z0-9+.-]*):\/\//i.exec(location);
  if (!m) return RawSource.open(location, rawOptions(opts));
  const scheme = m[1].toLowerCase();
  if (scheme === 'file') return RawSource.open(fileSourcePath(location), rawOptions(opts));
  const factory = schemes.get(scheme);
  if (!factory) {
    throw new RnodeError(
      ErrorCodes.BAD_SOURCE,
      `source scheme "${scheme}://" is not supported; use a file or block device path${[...schemes.keys()].map((s) => `, ${s}://`).join('')}`,
    );
  }
  return factory(location, opts);
}
/** The path a file:// source names (file-url.ts). */
function fileSourcePath(location: string): string {
  try {
    return fileUrlPath(location);
  } catch (err) {
    throw new RnodeError(ErrorCodes.BAD_SOURCE, `source ${location} ${(err as Error).message}; pass file:///absolute/path, or the path itself`);
  }
}

/**
 * The options of a file or device source. One it does not take, or a value it cannot use, is refused: a job's source
 * options come from a Management Server, and a setting silently ignored is a run that is not what was asked.
 */
function rawOptions(opts: Record<string, unknown>): { direct?: boolean } {
  for (const [key, value] of Object.entries(opts)) {
    if (key !== 'direct') {
      throw new RnodeError(ErrorCodes.BAD_SOURCE, `source option "${key}" is not one a file or device source takes (it takes: direct); remove it`);
    }
    if (value !== undefined && typeof value !== 'boolean') {
      throw new RnodeError(ErrorCodes.BAD_SOURCE, `source option direct must be true or false, got ${JSON.stringify(value)?.slice(0, 64)}`);
    }
  }
  return opts as { direct?: boolean };
}

registerSourceScheme('vddk', async (location, opts) => (await import('./vmware/index.js')).openVddkSource(location, opts));
