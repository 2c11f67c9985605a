// SOAP envelopes in and out: fast-xml-parser reads vSphere's answers into a small element tree (names keep their
// prefix and expose a local name); a few helpers write requests. No DTDs, bounded depth and size.
import { XMLParser, XMLValidator } from 'fast-xml-parser';

export interface XmlElement {
  /** Qualified name as written, e.g. "soapenv:Body". */
  name: string;
  /** Name without the namespace prefix, e.g. "Body". */
  local: string;
  attrs: Record<string, string>;
  children: XmlElement[];
  /** Concatenated character data directly inside this element. */
  text: string;
}

export class XmlError extends Error {
  constructor(
    message: string,
    readonly position: number,
  ) {
    super(`${message} at offset ${position}`);
    this.name = 'XmlError';
  }
}

const MAX_DEPTH = 256;

function localName(q: string): string {
  const i = q.indexOf(':');
  return i < 0 ? q : q.slice(i + 1);
}

// preserveOrder keeps document order and repeated names as they came; values stay strings (a MoRef "vm-42" or a
// changeId must not become numbers); CDATA joins the text; comments and processing instructions are dropped.
// htmlEntities decodes numeric character references too (vSphere escapes control characters that way).
const parser = new XMLParser({
  preserveOrder: true,
  ignoreAttributes: false,
  attributeNamePrefix: '',
  parseTagValue: false,
  parseAttributeValue: false,
  trimValues: false,
  processEntities: true,
  htmlEntities: true,
  ignoreDeclaration: true,
  ignorePiTags: true,
});

type Node = Record<string, unknown> & { ':@'?: Record<string, string> };

function offsetOf(input: string, line: number, col: number): number {
  let at = 0;
  for (let l = 1; l < line; l++) {
    const nl = input.indexOf('\n', at);
    if (nl < 0) break;
    at = nl + 1;
  }
  return at + Math.max(0, col - 1);
}

function toElement(node: Node, depth: number): XmlElement {
  if (depth > MAX_DEPTH) throw new XmlError('elements nested too deeply', 0);
  const name = Object.keys(node).find((k) => k !== ':@')!;
  const el: XmlElement = { name, local: localName(name), attrs: { ...node[':@'] }, children: [], text: '' };
  for (const c of node[name] as Node[]) {
    if ('#text' in c) el.text += String(c['#text']);
    else el.children.push(toElement(c, depth + 1));
  }
  return el;
}

/** Parses a document and returns its root element. Throws XmlError on anything malformed. */
export function parseXml(input: string, maxBytes = 64 * 1024 * 1024): XmlElement {
  if (input.length > maxBytes) throw new XmlError(`document larger than ${maxBytes} characters`, 0);
  // fast-xml-parser reads a DOCTYPE's entity declarations and expands them; a SOAP answer never has one.
  const dtd = input.search(/<!DOCTYPE/i);
  if (dtd >= 0) throw new XmlError('DTDs are not accepted', dtd);
  // XML knows five named entities; fast-xml-parser would pass any other through as text (or decode an HTML one).
  if (input.includes('&')) {
    const bare = input.replace(/<!\[CDATA\[[\s\S]*?\]\]>|<!--[\s\S]*?-->/g, (m) => ' '.repeat(m.length));
    const bad = /&(?!(?:lt|gt|amp|quot|apos|#[0-9]+|#x[0-9a-fA-F]+);)[^\s<]{0,16}/.exec(bare);
    if (bad) throw new XmlError(`unknown or unterminated entity "${bad[0]}"`, bad.index);
  }
  const valid = XMLValidator.validate(input);
  if (valid !== true) throw new XmlError(valid.err.msg, offsetOf(input, valid.err.line, valid.err.col));
  let nodes: Node[];
  try {
    nodes = parser.parse(input) as Node[];
  } catch (err) {
    throw new XmlError(err instanceof Error ? err.message : String(err), 0);
  }
  const roots = nodes.filter((n) => !('#text' in n));
  if (roots.length !== 1) throw new XmlError(roots.length ? 'more than one root element' : 'no root element', 0);
  return toElement(roots[0], 1);
}

// ---- navigation ----

export function child(el: XmlElement | undefined, local: string): XmlElement | undefined {
  return el?.children.find((c) => c.local === local);
}

export function children(el: XmlElement | undefined, local: string): XmlElement[] {
  return el ? el.children.filter((c) => c.local === local) : [];
}

/** Follows a path of local names. */
export function path(el: XmlElement | undefined, ...locals: string[]): XmlElement | undefined {
  let cur = el;
  for (const l of locals) cur = child(cur, l);
  return cur;
}

export function textOf(el: XmlElement | undefined, ...locals: string[]): string | undefined {
  return path(el, ...locals)?.text;
}

/** The xsi:type of an element (local part), whatever prefix the document bound to the XSI namespace. */
export function xsiType(el: XmlElement | undefined): string | undefined {
  if (!el) return undefined;
  for (const [k, v] of Object.entries(el.attrs)) if (k !== 'type' && localName(k) === 'type' && k.includes(':')) return localName(v);
  return undefined;
}

// ---- writing ----

export function escapeText(s: string): string {
  return s.replace(/[&<>]/g, (c) => (c === '&' ? '&amp;' : c === '<' ? '&lt;' : '&gt;')).replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f]/g, '');
}

export function escapeAttr(s: string): string {
  return escapeText(s)
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&apos;')
    .replace(/[\t\n\r]/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** Markup that is already serialized; everything else passed to el() is escaped. */
export class Raw {
  constructor(readonly xml: string) {}
}

export type Content = string | number | boolean | Raw | undefined | null | Content[];

function contentToXml(c: Content): string {
  if (c === undefined || c === null) return '';
  if (c instanceof Raw) return c.xml;
  if (Array.isArray(c)) return c.map(contentToXml).join('');
  return escapeText(String(c));
}

/** One element; attributes and text are escaped. Undefined attributes are left out. */
export function el(name: string, content?: Content, attrs: Record<string, string | undefined> = {}): Raw {
  if (!/^[A-Za-z_][\w.-]*(:[A-Za-z_][\w.-]*)?$/.test(name)) throw new Error(`bad XML element name ${name}`);
  const a = Object.entries(attrs)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => ` ${k}="${escapeAttr(v!)}"`)
    .join('');
  const inner = contentToXml(content);
  return new Raw(inner === '' ? `<${name}${a}/>` : `<${name}${a}>${inner}</${name}>`);
}

const PRIMITIVE = new Set(['string', 'boolean', 'int', 'long', 'short', 'byte', 'float', 'double', 'dateTime']);

/**
 * An element as plain JSON, for keeping a vSphere answer as it was returned (e.g. a VM's config in a VM point):
 * text-only elements become strings, names that repeat become arrays, an xsi:type other than a primitive is
 * kept as "_type" and a MoRef's type attribute as "_type" beside "_value".
 */
export function xmlToJson(e: XmlElement): unknown {
  const type = xsiType(e);
  const keep = type && !PRIMITIVE.has(type) ? type : undefined;
  if (e.children.length === 0) {
    const ref = e.attrs.type;
    return keep || ref ? { _type: keep ?? ref, _value: e.text } : e.text;
  }
  const groups = new Map<string, unknown[]>();
  for (const c of e.children) {
    const list = groups.get(c.local) ?? [];
    list.push(xmlToJson(c));
    groups.set(c.local, list);
  }
  const out: Record<string, unknown> = keep ? { _type: keep } : {};
  for (const [k, list] of groups) out[k] = list.length === 1 ? list[0] : list;
  return out;
}
