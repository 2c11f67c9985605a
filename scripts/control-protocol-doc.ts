// Rewrites the JSON schema blocks of docs/control-protocol.md from the schemas the code validates with
// (src/agent/protocol.ts), so the document cannot drift: `npm run docs:protocol`. test/agent/protocol.test.ts
// fails when a block differs.
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { agentMessages, defs, serverMessages } from '../src/agent/protocol.js';

const file = fileURLToPath(new URL('../docs/control-protocol.md', import.meta.url));
const byId = new Map<string, unknown>();
for (const table of [agentMessages, serverMessages]) for (const s of Object.values(table)) byId.set(s.$id, s);
const doc = fs.readFileSync(file, 'utf8');
let missing = 0;
const out = doc.replace(/```json\n([\s\S]*?)\n```/g, (block, body: string) => {
  const id = (JSON.parse(body) as { $id?: string }).$id;
  if (id === undefined) return block;
  const current = id === 'rnode-control/v1/$defs' ? { ...(JSON.parse(body) as object), $defs: defs } : byId.get(id);
  if (current === undefined) { missing++; return block; }
  return '```json\n' + JSON.stringify(current, null, 2) + '\n```';
});
fs.writeFileSync(file, out);
console.log(`docs/control-protocol.md: schema blocks rewritten${missing ? `; ${missing} block(s) name a schema the code no longer has` : ''}`);
