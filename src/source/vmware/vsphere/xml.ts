// A small XML reader and writer for SOAP envelopes: elements, attributes, text, entities, CDATA, comments.
// No DTDs, no external entities, bounded depth and size; names keep their prefix and expose a local name.

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
  constructor(message: string, readonly position: number) {
    super(`${message} at offset ${position}`);
    this.name = 'XmlError';
  }
}

const MAX_DEPTH = 256;
const NAME = /[A-Za-z_][\w.\-]*(?::[A-Za-z_][\w.\-]*)?/y;

function localName(q: string): string {
  const i = q.indexOf(':');
  return i < 0 ? q : q.slice(i + 1);
}

function decodeEntities(s: string, at: number): string {
  if (!s.includes('&')) return s;
  return s.replace(/&(#x[0-9a-fA-F]+|#[0-9]+|[a-zA-Z]+);?/g, (m, e: string) => {
    if (!m.endsWith(';')) throw new XmlError(`unterminated entity "${m}"`, at);
    if (e[0] === '#') {
      const cp = e[1] === 'x' ? parseInt(e.slice(2), 16) : parseInt(e.slice(1), 10);
      if (!Number.isFinite(cp) || cp < 0 || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) throw new XmlError(`bad character reference "${m}"`, at);
      return String.fromCodePoint(cp);
    }
    switch (e) {
      case 'lt': return '<';
      case 'gt': return '>';
      case 'amp': return '&';
      case 'quot': return '"';
      case 'apos': return "'";
      default: throw new XmlError(`unknown entity "${m}"`, at);
    }
  });
}

/** Parses a document and returns its root element. Throws XmlError on anything malformed. */
export function parseXml(input: string, maxBytes = 64 * 1024 * 1024): XmlElement {
  if (input.length > maxBytes) throw new XmlError(`document larger than ${maxBytes} characters`, 0);
  let pos = 0;
  const stack: XmlElement[] = [];
  let root: XmlElement | undefined;

  const readName = (): string => {
    NAME.lastIndex = pos;
    const m = NAME.exec(input);
    if (!m) throw new XmlError('expected a name', pos);
    pos += m[0].length;
    return m[0];
  };
  const skipSpace = () => { while (pos < input.length && /\s/.test(input[pos])) pos++; };
  const addText = (t: string) => {
    if (stack.length) stack[stack.length - 1].text += t;
    else if (t.trim()) throw new XmlError('text outside the root element', pos);
  };

  if (input.charCodeAt(0) === 0xfeff) pos = 1;
  while (pos < input.length) {
    const lt = input.indexOf('<', pos);
    if (lt < 0) { addText(decodeEntities(input.slice(pos), pos)); break; }
    if (lt > pos) addText(decodeEntities(input.slice(pos, lt), pos));
    pos = lt;
    if (input.startsWith('<?', pos)) {
      const end = input.indexOf('?>', pos);
      if (end < 0) throw new XmlError('unterminated processing instruction', pos);
      pos = end + 2;
    } else if (input.startsWith('<!--', pos)) {
      const end = input.indexOf('-->', pos);
      if (end < 0) throw new XmlError('unterminated comment', pos);
      pos = end + 3;
    } else if (input.startsWith('<![CDATA[', pos)) {
      const end = input.indexOf(']]>', pos);
      if (end < 0) throw new XmlError('unterminated CDATA', pos);
      addText(input.slice(pos + 9, end));
      pos = end + 3;
    } else if (input.startsWith('<!', pos)) {
      throw new XmlError('DTDs are not accepted', pos);
    } else if (input.startsWith('</', pos)) {
      pos += 2;
      const name = readName();
      skipSpace();
      if (input[pos] !== '>') throw new XmlError('expected ">"', pos);
      pos++;
      const open = stack.pop();
      if (!open || open.name !== name) throw new XmlError(`closing tag </${name}> does not match <${open?.name ?? ''}>`, pos);
    } else {
      pos++;
      const name = readName();
      const el: XmlElement = { name, local: localName(name), attrs: {}, children: [], text: '' };
      for (;;) {
        skipSpace();
        if (input.startsWith('/>', pos) || input[pos] === '>') break;
        if (pos >= input.length) throw new XmlError('unterminated start tag', pos);
        const an = readName();
        skipSpace();
        if (input[pos] !== '=') throw new XmlError('expected "=" after an attribute name', pos);
        pos++;
        skipSpace();
        const q = input[pos];
        if (q !== '"' && q !== "'") throw new XmlError('expected a quoted attribute value', pos);
        const end = input.indexOf(q, pos + 1);
        if (end < 0) throw new XmlError('unterminated attribute value', pos);
        const raw = input.slice(pos + 1, end);
        if (raw.includes('<')) throw new XmlError('"<" in an attribute value', pos);
        if (Object.prototype.hasOwnProperty.call(el.attrs, an)) throw new XmlError(`duplicate attribute ${an}`, pos);
        el.attrs[an] = decodeEntities(raw, pos);
        pos = end + 1;
      }
      const selfClosing = input[pos] === '/';
      pos += selfClosing ? 2 : 1;
      if (stack.length) stack[stack.length - 1].children.push(el);
      else if (root) throw new XmlError('more than one root element', pos);
      else root = el;
      if (!selfClosing) {
        if (stack.length >= MAX_DEPTH) throw new XmlError('elements nested too deeply', pos);
        stack.push(el);
      }
    }
  }
  if (stack.length) throw new XmlError(`unclosed element <${stack[stack.length - 1].name}>`, pos);
  if (!root) throw new XmlError('no root element', pos);
  return root;
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
  return s.replace(/[&<>]/g, (c) => (c === '&' ? '&amp;' : c === '<' ? '&lt;' : '&gt;'))
    .replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f]/g, '');
}

export function escapeAttr(s: string): string {
  return escapeText(s).replace(/"/g, '&quot;').replace(/'/g, '&apos;').replace(/[\t\n\r]/g, (c) => `&#${c.charCodeAt(0)};`);
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
  if (!/^[A-Za-z_][\w.\-]*(:[A-Za-z_][\w.\-]*)?$/.test(name)) throw new Error(`bad XML element name ${name}`);
  const a = Object.entries(attrs).filter(([, v]) => v !== undefined).map(([k, v]) => ` ${k}="${escapeAttr(v!)}"`).join('');
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
