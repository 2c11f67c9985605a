// Validation of control-protocol messages with ajv (JSON Schema 2020-12): each message schema is compiled once,
// together with the shared $defs; ajv's errors become "<JSON pointer>: <rule>" naming the field.
import { Ajv2020, type ErrorObject, type ValidateFunction } from 'ajv/dist/2020.js';
import type { TSchema } from '@sinclair/typebox';

export interface SchemaError {
  /** JSON Pointer of the offending value ('' for the whole message). */
  path: string;
  message: string;
}

// strict: a keyword ajv does not know is a bug in the schema, not something to skip. discriminator: a job's
// "kind" picks the one alternative its errors come from. The first error only: messages come from peers.
const ajv = new Ajv2020({ strict: true, discriminator: true, allErrors: false });
const compiled = new WeakMap<TSchema, ValidateFunction>();

const child = (base: string, key: unknown) => `${base}/${String(key).replace(/~/g, '~0').replace(/\//g, '~1')}`;

function describe(e: ErrorObject): SchemaError {
  const p = e.params as Record<string, unknown>;
  switch (e.keyword) {
    case 'required': return { path: child(e.instancePath, p.missingProperty), message: 'is required' };
    case 'additionalProperties': return { path: child(e.instancePath, p.additionalProperty), message: 'is not allowed here' };
    case 'discriminator': return { path: child(e.instancePath, p.tag), message: `must be one of the kinds this version defines (got ${JSON.stringify(p.tagValue)})` };
    case 'enum': return { path: e.instancePath, message: `must be one of ${(p.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(', ')}` };
    case 'const': return { path: e.instancePath, message: `must be ${JSON.stringify(p.allowedValue)}` };
    default: return { path: e.instancePath, message: e.message ?? `fails ${e.keyword}` };
  }
}

/** The compiled validator of `schema` (whose "#/$defs/<name>" references resolve into `defs`), compiled once. */
export function compile(schema: TSchema, defs: Record<string, TSchema>): ValidateFunction {
  let check = compiled.get(schema);
  if (!check) {
    check = ajv.compile({ ...schema, $defs: defs });
    compiled.set(schema, check);
  }
  return check;
}

/** Validates `value` against `schema`. */
export function validate(schema: TSchema, value: unknown, defs: Record<string, TSchema>): SchemaError[] {
  const check = compile(schema, defs);
  return check(value) ? [] : (check.errors ?? []).map(describe);
}
