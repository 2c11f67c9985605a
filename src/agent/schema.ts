// A validator for the subset of JSON Schema (draft 2020-12 keywords) that docs/control-protocol.md uses:
// type, const, enum, properties, required, additionalProperties, items, min/max(Length|Items|imum), pattern,
// oneOf and local $ref into "#/$defs/...". Anything else in a schema is a bug in the schema: it throws.

export interface JsonSchema {
  $id?: string;
  $ref?: string;
  description?: string;
  type?: JsonType | JsonType[];
  const?: unknown;
  enum?: unknown[];
  properties?: Record<string, JsonSchema>;
  required?: string[];
  additionalProperties?: boolean | JsonSchema;
  items?: JsonSchema;
  minItems?: number;
  maxItems?: number;
  minLength?: number;
  maxLength?: number;
  pattern?: string;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  oneOf?: JsonSchema[];
}

export type JsonType = 'object' | 'array' | 'string' | 'integer' | 'number' | 'boolean' | 'null';

const KNOWN = new Set(['$id', '$ref', 'description', 'type', 'const', 'enum', 'properties', 'required',
  'additionalProperties', 'items', 'minItems', 'maxItems', 'minLength', 'maxLength', 'pattern', 'minimum',
  'maximum', 'exclusiveMinimum', 'oneOf', '$defs', '$schema', 'title']);

export interface SchemaError {
  /** JSON Pointer of the offending value ('' for the whole message). */
  path: string;
  message: string;
}

function typeOf(v: unknown): JsonType {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  if (typeof v === 'number') return Number.isInteger(v) ? 'integer' : 'number';
  return typeof v as JsonType;
}

function typeMatches(v: unknown, t: JsonType): boolean {
  const actual = typeOf(v);
  return actual === t || (t === 'number' && actual === 'integer');
}

function deepEqual(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

const pointer = (base: string, key: string | number) => `${base}/${String(key).replace(/~/g, '~0').replace(/\//g, '~1')}`;

/** Validates `value` against `schema`; `defs` resolves "#/$defs/<name>" references. Returns all errors found. */
export function validate(schema: JsonSchema, value: unknown, defs: Record<string, JsonSchema> = {}, path = ''): SchemaError[] {
  const errors: SchemaError[] = [];
  for (const k of Object.keys(schema)) if (!KNOWN.has(k)) throw new Error(`schema keyword "${k}" is not supported by src/agent/schema.ts`);
  if (schema.$ref !== undefined) {
    const m = /^#\/\$defs\/(.+)$/.exec(schema.$ref);
    const target = m ? defs[m[1]] : undefined;
    if (!target) throw new Error(`unresolvable $ref ${schema.$ref}`);
    errors.push(...validate(target, value, defs, path));
  }
  if (schema.type !== undefined) {
    const types = Array.isArray(schema.type) ? schema.type : [schema.type];
    if (!types.some((t) => typeMatches(value, t))) {
      return [...errors, { path, message: `must be ${types.join(' or ')}, got ${typeOf(value)}` }];
    }
  }
  if ('const' in schema && !deepEqual(value, schema.const)) errors.push({ path, message: `must be ${JSON.stringify(schema.const)}` });
  if (schema.enum && !schema.enum.some((e) => deepEqual(e, value))) {
    errors.push({ path, message: `must be one of ${schema.enum.map((e) => JSON.stringify(e)).join(', ')}` });
  }
  if (typeof value === 'string') {
    if (schema.minLength !== undefined && value.length < schema.minLength) errors.push({ path, message: `must be at least ${schema.minLength} characters` });
    if (schema.maxLength !== undefined && value.length > schema.maxLength) errors.push({ path, message: `must be at most ${schema.maxLength} characters` });
    if (schema.pattern !== undefined && !new RegExp(schema.pattern, 'u').test(value)) errors.push({ path, message: `must match ${schema.pattern}` });
  }
  if (typeof value === 'number') {
    if (schema.minimum !== undefined && value < schema.minimum) errors.push({ path, message: `must be >= ${schema.minimum}` });
    if (schema.exclusiveMinimum !== undefined && value <= schema.exclusiveMinimum) errors.push({ path, message: `must be > ${schema.exclusiveMinimum}` });
    if (schema.maximum !== undefined && value > schema.maximum) errors.push({ path, message: `must be <= ${schema.maximum}` });
  }
  if (Array.isArray(value)) {
    if (schema.minItems !== undefined && value.length < schema.minItems) errors.push({ path, message: `must have at least ${schema.minItems} items` });
    if (schema.maxItems !== undefined && value.length > schema.maxItems) errors.push({ path, message: `must have at most ${schema.maxItems} items` });
    if (schema.items) value.forEach((item, i) => errors.push(...validate(schema.items!, item, defs, pointer(path, i))));
  }
  if (typeOf(value) === 'object') {
    const obj = value as Record<string, unknown>;
    for (const r of schema.required ?? []) if (!(r in obj)) errors.push({ path, message: `must have property "${r}"` });
    for (const [k, v] of Object.entries(obj)) {
      const ps = schema.properties?.[k];
      if (ps) errors.push(...validate(ps, v, defs, pointer(path, k)));
      else if (schema.additionalProperties === false) errors.push({ path: pointer(path, k), message: 'is not allowed here' });
      else if (typeof schema.additionalProperties === 'object') errors.push(...validate(schema.additionalProperties, v, defs, pointer(path, k)));
    }
  }
  if (schema.oneOf) {
    const results = schema.oneOf.map((s) => validate(s, value, defs, path));
    const passing = results.filter((r) => r.length === 0).length;
    if (passing > 1) errors.push({ path, message: 'matches more than one alternative' });
    else if (passing === 0) {
      // The alternative that came closest explains the problem best (e.g. the one whose "kind" matched).
      errors.push(...results.reduce((a, b) => (b.length < a.length ? b : a)));
    }
  }
  return errors;
}
