// Validation of control-protocol messages with ajv (JSON Schema 2020-12); ajv's errors become "<JSON pointer>:
// <rule>" naming the field. The message validators are compiled ahead of time (validators.generated.cjs, ajv's
// standalone code, `npm run gen:validators`): compiling them when the agent starts cost 1-1.5 s. A schema without
// a generated validator is compiled here on first use, with the same options, by an ajv loaded only then.
import { createRequire } from 'node:module';
import type { Ajv2020, ErrorObject, Options, ValidateFunction } from 'ajv/dist/2020.js';
import type { TSchema } from '@sinclair/typebox';
import generated from './validators.generated.cjs';

export interface SchemaError {
  /** JSON Pointer of the offending value ('' for the whole message). */
  path: string;
  message: string;
}

// strict: a keyword ajv does not know is a bug in the schema, not something to skip. discriminator: a job's
// "kind" picks the one alternative its errors come from. The first error only: messages come from peers.
export const AJV_OPTIONS: Options = { strict: true, discriminator: true, allErrors: false };

/** The generated validators by schema $id. */
const GENERATED = generated as unknown as Record<string, ValidateFunction | undefined>;
const compiled = new WeakMap<TSchema, ValidateFunction>();
let ajv: Ajv2020 | undefined;

const child = (base: string, key: unknown) => `${base}/${String(key).replace(/~/g, '~0').replace(/\//g, '~1')}`;

function describe(e: ErrorObject): SchemaError {
  const p = e.params as Record<string, unknown>;
  switch (e.keyword) {
    case 'required':
      return { path: child(e.instancePath, p.missingProperty), message: 'is required' };
    case 'additionalProperties':
      return { path: child(e.instancePath, p.additionalProperty), message: 'is not allowed here' };
    case 'discriminator':
      return { path: child(e.instancePath, p.tag), message: `must be one of the kinds this version defines (got ${JSON.stringify(p.tagValue)})` };
    case 'enum':
      return { path: e.instancePath, message: `must be one of ${(p.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(', ')}` };
    case 'const':
      return { path: e.instancePath, message: `must be ${JSON.stringify(p.allowedValue)}` };
    default:
      return { path: e.instancePath, message: e.message ?? `fails ${e.keyword}` };
  }
}

let compiledAtRunTime = 0;
/** How many validators were compiled at run time (none, when the generated module is up to date). */
export const runTimeCompilations = (): number => compiledAtRunTime;

/**
 * The validator of `schema` (whose "#/$defs/<name>" references resolve into `defs`): the generated one for its
 * $id, else compiled now, once.
 */
export function compile(schema: TSchema, defs: Record<string, TSchema>): ValidateFunction {
  let check = compiled.get(schema);
  if (!check) {
    const id = typeof schema.$id === 'string' ? schema.$id : undefined;
    check = (id !== undefined ? GENERATED[id] : undefined) ?? compileNow(schema, defs);
    compiled.set(schema, check);
  }
  return check;
}

function compileNow(schema: TSchema, defs: Record<string, TSchema>): ValidateFunction {
  if (!ajv) {
    const { Ajv2020 } = createRequire(import.meta.url)('ajv/dist/2020.js') as typeof import('ajv/dist/2020.js');
    ajv = new Ajv2020(AJV_OPTIONS);
  }
  compiledAtRunTime++;
  return ajv.compile({ ...schema, $defs: defs });
}

/** Validates `value` against `schema`. */
export function validate(schema: TSchema, value: unknown, defs: Record<string, TSchema>): SchemaError[] {
  const check = compile(schema, defs);
  return check(value) ? [] : (check.errors ?? []).map(describe);
}
