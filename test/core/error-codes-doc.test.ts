// docs/cli.md lists every error code a command can end with, and the exit code it gives: a Management Server or an
// operator reads them there. The table must follow src/errors.ts (a code added without a line here fails).
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { ErrorCodes, RnodeError } from '../../src/errors.js';

const doc = fs.readFileSync(path.join(import.meta.dirname, '..', '..', 'docs', 'cli.md'), 'utf8');
const rows = new Map([...doc.matchAll(/^\| `(RNODE_[A-Z_]+)` \| ([0-9 /]+) \|/gm)].map((m) => [m[1], m[2].trim()] as const));

t.test('every error code has its line in docs/cli.md, with the exit code the CLI gives it', async (t) => {
  for (const code of Object.values(ErrorCodes)) {
    const exit = rows.get(code);
    t.ok(exit, `${code} is in the table`);
    if (!exit || code === ErrorCodes.CANCELLED) continue;
    t.equal(exit, new RnodeError(code, 'x').isUsage ? '2' : '1', `${code}: the exit code`);
  }
  for (const code of rows.keys()) t.ok(Object.values<string>(ErrorCodes).includes(code), `${code} in the table is a real code`);
});
