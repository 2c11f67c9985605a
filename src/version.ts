// The release of this rnode, read once from the package's own package.json (one level above src/ and dist/),
// so `rnode --version`, the help text and the agent's hello never drift from what npm installed.
import fs from 'node:fs';

function readVersion(): string {
  try {
    const v = (JSON.parse(fs.readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version?: unknown }).version;
    return typeof v === 'string' ? v : '0.0.0-unknown';
  } catch {
    // An embedder that bundled the code without package.json: say so rather than invent a release.
    return '0.0.0-unknown';
  }
}

export const VERSION = readVersion();
