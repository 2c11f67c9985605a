// Generates the message reference of docs/control-protocol.md from the TypeBox schemas the code validates with
// (src/agent/protocol.ts): `npm run docs:protocol`. The prose above the marker line is kept as written; everything
// below it is replaced. test/agent/protocol.test.ts fails when the committed file is not what this produces.
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { agentMessages, defs, serverMessages, PROTOCOL_VERSION } from '../src/agent/protocol.js';

export const DOC = fileURLToPath(new URL('../docs/control-protocol.md', import.meta.url));
export const MARKER = '<!-- Generated below from src/agent/protocol.ts by `npm run docs:protocol`: edit the schemas, not this text. -->';

type S = Record<string, unknown> & {
  $ref?: string;
  type?: string;
  const?: unknown;
  enum?: unknown[];
  description?: string;
  properties?: Record<string, S>;
  required?: string[];
  items?: S;
  patternProperties?: Record<string, S>;
  anyOf?: S[];
  oneOf?: S[];
  additionalProperties?: boolean | S;
};

const code = (v: unknown) => `\`${typeof v === 'string' ? v : JSON.stringify(v)}\``;
const cell = (text: string) => text.replace(/\|/g, '\\|').replace(/\n/g, ' ');
const defName = (ref: string) => ref.replace(/^#\/\$defs\//, '');

/** One line saying what a value must be: its type, bounds and pattern; shared definitions as links. */
function typeOf(s: S): string {
  if (s.$ref) return `[${defName(s.$ref)}](#def-${defName(s.$ref)})`;
  if ('const' in s) return code(s.const);
  if (s.enum) return s.enum.map(code).join(' or ');
  const alternatives = s.anyOf ?? s.oneOf;
  if (alternatives) return alternatives.map(typeOf).join(' or ');
  const bounds: string[] = [];
  const n = (k: string) => s[k] as number | undefined;
  if (s.type === 'string') {
    const [min, max] = [n('minLength'), n('maxLength')];
    if (min !== undefined && max !== undefined) bounds.push(`${min}..${max} characters`);
    else if (max !== undefined) bounds.push(`at most ${max} characters`);
    else if (min !== undefined) bounds.push(`at least ${min} characters`);
    if (s.pattern) bounds.push(`matching ${code(s.pattern)}`);
  } else if (s.type === 'integer' || s.type === 'number') {
    if (n('minimum') !== undefined) bounds.push(`≥ ${n('minimum')}`);
    if (n('exclusiveMinimum') !== undefined) bounds.push(`> ${n('exclusiveMinimum')}`);
    if (n('maximum') !== undefined) bounds.push(`≤ ${n('maximum')}`);
  } else if (s.type === 'array') {
    if (n('minItems') !== undefined) bounds.push(`at least ${n('minItems')}`);
    if (n('maxItems') !== undefined) bounds.push(`at most ${n('maxItems')}`);
    return `array of ${s.items ? typeOf(s.items) : 'anything'}${bounds.length ? ` (${bounds.join(', ')})` : ''}`;
  } else if (s.type === 'object' && s.patternProperties) {
    return `map of name to ${Object.values(s.patternProperties).map(typeOf).join(' or ')}`;
  }
  return `${s.type ?? 'any'}${bounds.length ? ` ${bounds.join(', ')}` : ''}`;
}

/** Table rows for an object's members; members that are objects themselves get rows of their own (a.b). */
function rows(s: S, prefix = ''): string[] {
  const out: string[] = [];
  const required = new Set(s.required ?? []);
  for (const [name, p] of Object.entries(s.properties ?? {})) {
    const field = `${prefix}${name}`;
    const nested = p.type === 'object' && p.properties && Object.keys(p.properties).length > 0;
    out.push(`| \`${field}\` | ${cell(nested ? 'object' : typeOf(p))} | ${required.has(name) ? 'yes' : ''} | ${cell(p.description ?? '')} |`);
    if (nested) out.push(...rows(p, `${field}.`));
  }
  return out;
}

function table(s: S): string[] {
  const r = rows(s);
  if (r.length === 0) return [];
  const closed = s.additionalProperties === false ? 'Other members are refused.' : 'Other members are ignored.';
  return ['| field | value | required | description |', '|---|---|---|---|', ...r, '', closed, ''];
}

const json = (s: unknown) => ['<details><summary>JSON Schema</summary>', '', '```json', JSON.stringify(s, null, 2), '```', '', '</details>', ''];

function message(type: string, s: S, sameAs?: string): string[] {
  const head = [`#### \`${type}\``, ''];
  if (sameAs) return [...head, `Same schema as \`${type}\` ${sameAs}.`, ''];
  return [...head, s.description ?? '', '', ...table(s), ...json(s)];
}

function definition(name: string, s: S): string[] {
  const out = [`#### <a id="def-${name}"></a>\`${name}\``, ''];
  if (s.description) out.push(s.description, '');
  if (s.oneOf) {
    const tag = (s.discriminator as { propertyName: string } | undefined)?.propertyName;
    out.push(`One of the following, chosen by ${tag ? code(tag) : 'the first that matches'}:`, '');
    for (const alt of s.oneOf) {
      const kind = tag ? (alt.properties?.[tag] as S | undefined)?.const : undefined;
      out.push(`**${kind !== undefined ? `${tag}: ${code(kind)}` : 'alternative'}**: ${alt.description ?? ''}`, '', ...table(alt));
    }
  } else if (s.properties) {
    out.push(...table(s));
  } else {
    out.push(`${typeOf(s)}.`, '');
  }
  return [...out, ...json(s)];
}

/** The generated part of the document, from the marker line to the end. */
export function renderReference(): string {
  const plain = (x: unknown) => JSON.parse(JSON.stringify(x)) as S;
  const agentTypes = Object.keys(agentMessages);
  const serverTypes = Object.keys(serverMessages);
  const lines = [
    MARKER,
    '',
    '## Message reference',
    '',
    `Version ${PROTOCOL_VERSION}. Node to server: ${agentTypes.map(code).join(', ')}. Server to node: ${serverTypes.map(code).join(', ')}.`,
    '',
    'Every message also carries the envelope (`v`, `type`, `id`). A value written as a link is one of the shared',
    'definitions at the end (`#/$defs/<name>` in the JSON Schemas).',
    '',
    '### node → server',
    '',
    ...agentTypes.flatMap((t) => message(t, plain(agentMessages[t as keyof typeof agentMessages]))),
    '### server → node',
    '',
    ...serverTypes.flatMap((t) =>
      message(t, plain(serverMessages[t as keyof typeof serverMessages]), t in agentMessages ? 'above (node → server)' : undefined),
    ),
    '### Shared definitions',
    '',
    ...Object.entries(defs).flatMap(([name, s]) => definition(name, plain(s))),
  ];
  return (
    lines
      .join('\n')
      .replace(/\n{3,}/g, '\n\n')
      .trimEnd() + '\n'
  );
}

/** The whole document: the written prose up to the marker, then the generated reference. */
export function renderDoc(current: string): string {
  const at = current.indexOf(MARKER);
  if (at < 0) throw new Error(`${DOC} has no marker line; put it where the generated reference starts:\n${MARKER}`);
  return current.slice(0, at) + renderReference();
}

if (process.argv[1] && fileURLToPath(import.meta.url) === fs.realpathSync(process.argv[1])) {
  const before = fs.readFileSync(DOC, 'utf8');
  const after = renderDoc(before);
  fs.writeFileSync(DOC, after);
  console.log(`docs/control-protocol.md: ${before === after ? 'already up to date' : 'message reference regenerated'}`);
}
