// Generates src/agent/validators.generated.cjs from the TypeBox schemas of src/agent/protocol.ts: ajv's standalone
// code of every message validator, keyed by the message schema's $id, so the agent starts without compiling them.
// `npm run gen:validators`; test/agent/validators.test.ts fails when the committed file is not what this produces.
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Ajv2020 } from 'ajv/dist/2020.js';
import standaloneCode from 'ajv/dist/standalone/index.js';
import type { TSchema } from '@sinclair/typebox';
import { agentMessages, defs, serverMessages } from '../src/agent/protocol.js';
import { AJV_OPTIONS } from '../src/agent/schema.js';

export const GENERATED = fileURLToPath(new URL('../src/agent/validators.generated.cjs', import.meta.url));

const HEADER = `// Generated from the schemas of src/agent/protocol.ts by \`npm run gen:validators\`
// (scripts/control-protocol-validators.ts): ajv's standalone validators, one export per message $id. Do not edit.
`;

/** The $id of the one schema the generator compiles: the shared definitions and every message beside them. */
const BUNDLE = 'rnode-control/v1/bundle';

/**
 * The module's text, validated with the agent's own ajv options. The messages are compiled as parts of one
 * schema, each shared definition as one function they all call (inlineRefs: false): per message, with the
 * definitions inlined, the module was 570 KB and took longer to load than a small one.
 */
export function renderValidators(): string {
  const ajv = new Ajv2020({ ...AJV_OPTIONS, inlineRefs: false, code: { source: true, lines: true } });
  const messages: Record<string, TSchema> = {};
  const exports: Record<string, string> = {};
  for (const schema of new Set<TSchema>([...Object.values(agentMessages), ...Object.values(serverMessages)])) {
    const { $id: id, ...rest } = schema;
    if (typeof id !== 'string') throw new Error(`a message schema without $id: ${JSON.stringify(schema).slice(0, 80)}`);
    const name = `message:${id.split('/').pop()}`;
    messages[name] = rest;
    exports[id] = `${BUNDLE}#/$defs/${encodeURIComponent(name)}`;
  }
  ajv.addSchema({ $id: BUNDLE, $defs: { ...defs, ...messages } });
  return `${HEADER}${standaloneCode(ajv, exports)}\n`;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === fs.realpathSync(process.argv[1])) {
  fs.writeFileSync(GENERATED, renderValidators());
  console.log(`wrote ${GENERATED}`);
}
