// A minimal vim25 SOAP client over HTTPS: log in, read VM and snapshot properties, run snapshot and
// reconfigure tasks, and page through QueryChangedDiskAreas. The server certificate is checked before a byte is sent.
import { createHash } from 'node:crypto';
import http from 'node:http';
import { isIP } from 'node:net';
import tls from 'node:tls';
import { RnodeError } from '../../../errors.js';
import { readRegularFile } from '../../../regular-file.js';
import { faultError, VSphereErrorCodes, VSphereFault } from './errors.js';
import { child, children, el, parseXml, Raw, textOf, xmlToJson, xsiType, type Content, type XmlElement } from './xml.js';

export interface MoRef {
  type: string;
  value: string;
}

export interface VSphereConnectOptions {
  host: string;
  port?: number;
  /** SHA-1 thumbprint of the server certificate ("AA:BB:..", case and separators free). */
  thumbprint?: string;
  /** PEM CA bundle (path) to verify the server certificate against, instead of a thumbprint. */
  caFile?: string;
  /** Per-request timeout (default 120 s). */
  timeoutMs?: number;
}

export interface VirtualDiskInfo {
  key: number;
  label: string;
  capacityBytes: number;
  fileName: string;
  /** CBT change id of this disk in this configuration ("52 1f ... 9c/17"); absent when CBT is off. */
  changeId?: string;
  uuid?: string;
  /** persistent, independent_persistent, independent_nonpersistent... (backing.diskMode) */
  diskMode?: string;
  /** The backing's xsi:type, e.g. VirtualDiskFlatVer2BackingInfo or VirtualDiskRawDiskMappingVer1BackingInfo. */
  backingType?: string;
  /** An RDM's physicalMode or virtualMode. */
  compatibilityMode?: string;
}

export interface VmInfo {
  moref: string;
  name: string;
  changeTrackingEnabled: boolean;
  disks: VirtualDiskInfo[];
}

/** One snapshot of a VM's snapshot tree (VirtualMachineSnapshotTree), flattened. */
export interface SnapshotTreeEntry {
  moref: string;
  name: string;
  description: string;
  createTime: string;
  quiesced: boolean;
}

export interface DiskChangeInfo {
  startOffset: number;
  length: number;
  changedArea: Array<{ start: number; length: number }>;
}

const SOAP_ENV = 'http://schemas.xmlsoap.org/soap/envelope/';
const XSI = 'http://www.w3.org/2001/XMLSchema-instance';
const XSD = 'http://www.w3.org/2001/XMLSchema';
const MAX_RESPONSE = 64 * 1024 * 1024;

/** "aa bb:CC..." -> "AA:BB:CC:..." */
export function normalizeThumbprint(t: string): string {
  const hex = t.replace(/[^0-9a-fA-F]/g, '').toUpperCase();
  if (hex.length !== 40) throw new RnodeError('RNODE_BAD_SOURCE', `"${t}" is not a SHA-1 thumbprint (40 hex digits, e.g. AA:BB:...)`);
  return hex.match(/../g)!.join(':');
}

/** The SHA-1 thumbprint of a DER certificate, in VMware's "AA:BB:.." notation. */
export function thumbprintOf(der: Buffer): string {
  return createHash('sha1').update(der).digest('hex').toUpperCase().match(/../g)!.join(':');
}

const moref = (name: string, r: MoRef) => el(name, r.value, { type: r.type });

/** The CA certificate(s) caFile names: a path that is no regular file is refused, not waited on. */
function readCa(file: string): Buffer {
  try {
    return readRegularFile(file).data;
  } catch (err) {
    const why = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    throw new RnodeError('RNODE_BAD_SOURCE', `cannot read the vSphere CA file ${file} (${why}); check "caFile" in the source config`);
  }
}

export class VSphereClient {
  readonly host: string;
  readonly port: number;
  #thumbprint?: string;
  #verifiedThumbprint?: string;
  #ca?: Buffer;
  #timeoutMs: number;
  #cookie?: string;
  #apiVersion = '7.0';
  #content?: { propertyCollector: MoRef; sessionManager: MoRef; about: { apiVersion: string; fullName: string } };

  constructor(opts: VSphereConnectOptions) {
    if (!opts.host) throw new RnodeError('RNODE_BAD_SOURCE', 'the vSphere host is missing');
    this.host = opts.host;
    this.port = opts.port ?? 443;
    this.#thumbprint = opts.thumbprint ? normalizeThumbprint(opts.thumbprint) : undefined;
    this.#ca = opts.caFile ? readCa(opts.caFile) : undefined;
    this.#timeoutMs = opts.timeoutMs ?? 120_000;
  }

  get about() {
    return this.#content?.about;
  }

  /**
   * The SHA-1 thumbprint of the server's certificate: the one pinned, or, with caFile, the one the CA's chain verified
   * (once a request was made). VDDK checks its connection against it: it takes no CA.
   */
  get serverThumbprint(): string | undefined {
    return this.#thumbprint ?? this.#verifiedThumbprint;
  }

  // ---- transport ----

  #connect(): Promise<tls.TLSSocket> {
    return new Promise((resolve, reject) => {
      const pinned = this.#thumbprint;
      const sock = tls.connect({
        host: this.host,
        port: this.port,
        servername: isIP(this.host) ? undefined : this.host,
        // With a thumbprint the chain is not checked (vCenter certificates are often self-signed): the pin is.
        rejectUnauthorized: !pinned,
        ...(this.#ca ? { ca: this.#ca } : {}),
      });
      const fail = (err: Error) => {
        sock.destroy();
        reject(err);
      };
      sock.setTimeout(this.#timeoutMs, () =>
        fail(
          new RnodeError(VSphereErrorCodes.TIMEOUT, `no TLS handshake with ${this.host}:${this.port} within ${this.#timeoutMs} ms`, {
            retryable: true,
          }),
        ),
      );
      sock.once('error', (err: NodeJS.ErrnoException) => {
        if (err.code && /CERT|SELF_SIGNED|UNABLE_TO|ERR_TLS/.test(err.code)) {
          fail(
            new RnodeError(
              VSphereErrorCodes.TLS,
              `the certificate of ${this.host}:${this.port} is not trusted (${err.code}); pass its SHA-1 thumbprint or the CA that signed it`,
              { cause: err },
            ),
          );
        } else {
          fail(
            new RnodeError(
              VSphereErrorCodes.CONNECT,
              `cannot reach vSphere at ${this.host}:${this.port} (${err.code ?? err.message}); check the host, port and network`,
              { cause: err, retryable: true },
            ),
          );
        }
      });
      sock.once('secureConnect', () => {
        if (pinned) {
          const cert = sock.getPeerCertificate();
          const got = cert?.raw ? thumbprintOf(cert.raw) : '';
          if (got !== pinned) {
            fail(
              new RnodeError(
                VSphereErrorCodes.TLS,
                `the certificate of ${this.host}:${this.port} has thumbprint ${got || '(none)'}, not the ${pinned} configured; ` +
                  'if the certificate was replaced on purpose, update the thumbprint, otherwise do not connect',
              ),
            );
            return;
          }
        }
        // Without a pin the chain was verified (rejectUnauthorized): this certificate is the host's.
        if (!pinned) {
          const cert = sock.getPeerCertificate();
          if (cert?.raw) this.#verifiedThumbprint = thumbprintOf(cert.raw);
        }
        sock.setTimeout(0);
        sock.removeAllListeners('error');
        resolve(sock);
      });
    });
  }

  /** POSTs one SOAP request and returns the response body's first element (or throws the fault). */
  async #invoke(method: string, body: Raw): Promise<XmlElement> {
    const envelope =
      `<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="${SOAP_ENV}" xmlns:xsd="${XSD}" xmlns:xsi="${XSI}">` +
      `<soapenv:Body>${body.xml}</soapenv:Body></soapenv:Envelope>`;
    const sock = await this.#connect();
    const { status, text } = await new Promise<{ status: number; text: string }>((resolve, reject) => {
      const req = http.request(
        {
          host: this.host,
          port: this.port,
          method: 'POST',
          path: '/sdk',
          createConnection: () => sock,
          headers: {
            'Content-Type': 'text/xml; charset=utf-8',
            SOAPAction: `"urn:vim25/${this.#apiVersion}"`,
            Connection: 'close',
            'Content-Length': Buffer.byteLength(envelope),
            ...(this.#cookie ? { Cookie: this.#cookie } : {}),
          },
        },
        (res) => {
          const parts: Buffer[] = [];
          let size = 0;
          res.on('data', (b: Buffer) => {
            size += b.length;
            if (size > MAX_RESPONSE) {
              req.destroy(new Error(`response larger than ${MAX_RESPONSE} bytes`));
              return;
            }
            parts.push(b);
          });
          res.on('end', () => {
            const cookie = res.headers['set-cookie']?.find((c) => /^vmware_soap_session=/.test(c));
            if (cookie) this.#cookie = cookie.split(';')[0];
            resolve({ status: res.statusCode ?? 0, text: Buffer.concat(parts).toString('utf8') });
          });
          res.on('error', reject);
        },
      );
      req.setTimeout(this.#timeoutMs, () =>
        req.destroy(new RnodeError(VSphereErrorCodes.TIMEOUT, `vSphere ${method} got no answer within ${this.#timeoutMs} ms`, { retryable: true })),
      );
      req.on('error', (err) =>
        reject(
          err instanceof RnodeError
            ? err
            : new RnodeError(
                VSphereErrorCodes.CONNECT,
                `vSphere ${method} failed on the network (${(err as NodeJS.ErrnoException).code ?? err.message}); retry`,
                { cause: err, retryable: true },
              ),
        ),
      );
      req.end(envelope);
    });
    let doc: XmlElement;
    try {
      doc = parseXml(text);
    } catch (err) {
      throw new RnodeError(
        VSphereErrorCodes.PROTOCOL,
        `vSphere ${method} answered HTTP ${status} with something that is not XML; is ${this.host}:${this.port} a vCenter or ESXi host?`,
        { cause: err },
      );
    }
    const bodyEl = child(doc, 'Body');
    const fault = child(bodyEl, 'Fault');
    if (fault) {
      const detail = child(fault, 'detail')?.children[0];
      const type = xsiType(detail) ?? detail?.local.replace(/Fault$/, '') ?? 'UnknownFault';
      throw faultError(method, type, (textOf(fault, 'faultstring') ?? '').trim());
    }
    const resp = bodyEl?.children[0];
    if (status !== 200 || !resp || resp.local !== `${method}Response`) {
      throw new RnodeError(VSphereErrorCodes.PROTOCOL, `vSphere ${method} answered HTTP ${status} without a ${method}Response`);
    }
    return resp;
  }

  // ---- session ----

  async retrieveServiceContent() {
    const r = await this.#invoke(
      'RetrieveServiceContent',
      el('RetrieveServiceContent', moref('_this', { type: 'ServiceInstance', value: 'ServiceInstance' }), { xmlns: 'urn:vim25' }),
    );
    const rv = child(r, 'returnval');
    const ref = (n: string): MoRef => {
      const e = child(rv, n);
      if (!e) throw new RnodeError(VSphereErrorCodes.PROTOCOL, `ServiceContent has no ${n}`);
      return { type: e.attrs.type ?? '', value: e.text };
    };
    const about = { apiVersion: textOf(rv, 'about', 'apiVersion') ?? '', fullName: textOf(rv, 'about', 'fullName') ?? '' };
    this.#content = { propertyCollector: ref('propertyCollector'), sessionManager: ref('sessionManager'), about };
    if (/^\d+\.\d+(\.\d+)*$/.test(about.apiVersion)) this.#apiVersion = about.apiVersion;
    return this.#content;
  }

  async #sc() {
    return this.#content ?? this.retrieveServiceContent();
  }

  /** Logs in; the password goes only into the request body, never into an error or a log. */
  async login(user: string, password: string): Promise<void> {
    const sc = await this.#sc();
    await this.#invoke(
      'Login',
      el('Login', [moref('_this', sc.sessionManager), el('userName', user), el('password', password)], { xmlns: 'urn:vim25' }),
    );
  }

  async logout(): Promise<void> {
    if (!this.#cookie) return;
    const sc = await this.#sc();
    try {
      await this.#invoke('Logout', el('Logout', moref('_this', sc.sessionManager), { xmlns: 'urn:vim25' }));
    } finally {
      this.#cookie = undefined;
    }
  }

  // ---- properties ----

  /** Properties of one object by path; missing (unset) properties are absent from the map. */
  async retrieveProperties(obj: MoRef, paths: string[]): Promise<Map<string, XmlElement>> {
    const sc = await this.#sc();
    const spec = el('specSet', [
      el('propSet', [el('type', obj.type), ...paths.map((p) => el('pathSet', p))]),
      el('objectSet', [moref('obj', obj), el('skip', false)]),
    ]);
    const r = await this.#invoke(
      'RetrievePropertiesEx',
      el('RetrievePropertiesEx', [moref('_this', sc.propertyCollector), spec, el('options')], { xmlns: 'urn:vim25' }),
    );
    const out = new Map<string, XmlElement>();
    const objects = children(child(r, 'returnval'), 'objects');
    if (objects.length === 0) {
      throw faultError(
        'RetrievePropertiesEx',
        'ManagedObjectNotFound',
        `The object '${obj.type}:${obj.value}' has already been deleted or has not been completely created`,
      );
    }
    for (const o of objects) {
      for (const ps of children(o, 'propSet')) {
        const name = textOf(ps, 'name');
        const val = child(ps, 'val');
        if (name && val) out.set(name, val);
      }
    }
    return out;
  }

  async vmInfo(vm: string): Promise<VmInfo> {
    const p = await this.retrieveProperties({ type: 'VirtualMachine', value: vm }, [
      'name',
      'config.changeTrackingEnabled',
      'config.hardware.device',
    ]);
    return {
      moref: vm,
      name: p.get('name')?.text ?? vm,
      changeTrackingEnabled: p.get('config.changeTrackingEnabled')?.text === 'true',
      disks: parseDisks(p.get('config.hardware.device')),
    };
  }

  /** The virtual disks of a snapshot as they were when it was taken (their changeIds are the CBT markers). */
  async snapshotDisks(snapshot: string): Promise<VirtualDiskInfo[]> {
    const p = await this.retrieveProperties({ type: 'VirtualMachineSnapshot', value: snapshot }, ['config.hardware.device']);
    return parseDisks(p.get('config.hardware.device'));
  }

  /** The VM's configuration at the snapshot (VirtualMachineConfigInfo) as vSphere returned it, as JSON. */
  async snapshotConfig(snapshot: string): Promise<unknown> {
    const p = await this.retrieveProperties({ type: 'VirtualMachineSnapshot', value: snapshot }, ['config']);
    const c = p.get('config');
    return c ? xmlToJson(c) : null;
  }

  /** Every snapshot of the VM (the whole tree, parents before children); empty when it has none. */
  async listSnapshots(vm: string): Promise<SnapshotTreeEntry[]> {
    const p = await this.retrieveProperties({ type: 'VirtualMachine', value: vm }, ['snapshot']);
    const out: SnapshotTreeEntry[] = [];
    const walk = (list: XmlElement[]) => {
      for (const n of list) {
        out.push({
          moref: textOf(n, 'snapshot') ?? '',
          name: textOf(n, 'name') ?? '',
          description: textOf(n, 'description') ?? '',
          createTime: textOf(n, 'createTime') ?? '',
          quiesced: textOf(n, 'quiesced') === 'true',
        });
        walk(children(n, 'childSnapshotList'));
      }
    };
    walk(children(p.get('snapshot'), 'rootSnapshotList'));
    return out;
  }

  /** guest.toolsRunningStatus: guestToolsRunning, guestToolsNotRunning, guestToolsExecutingScripts (absent: unknown). */
  async toolsRunningStatus(vm: string): Promise<string | undefined> {
    const p = await this.retrieveProperties({ type: 'VirtualMachine', value: vm }, ['guest.toolsRunningStatus']);
    return p.get('guest.toolsRunningStatus')?.text;
  }

  // ---- tasks ----

  async waitForTask(task: MoRef, what: string, timeoutMs = 30 * 60_000): Promise<XmlElement | undefined> {
    const deadline = Date.now() + timeoutMs;
    let delay = 50;
    for (;;) {
      const info = (await this.retrieveProperties(task, ['info'])).get('info');
      const state = textOf(info, 'state');
      if (state === 'success') return child(info, 'result');
      if (state === 'error') {
        const err = child(info, 'error');
        const type = xsiType(child(err, 'fault')) ?? 'SystemError';
        const msg = textOf(err, 'localizedMessage') ?? '';
        throw new VSphereFault(
          VSphereErrorCodes.TASK,
          `vSphere task ${what} (${task.value}) failed with ${type}${msg ? `: ${msg}` : ''}; see the task in vCenter`,
          type,
          msg,
        );
      }
      if (Date.now() > deadline)
        throw new RnodeError(
          VSphereErrorCodes.TIMEOUT,
          `vSphere task ${what} (${task.value}) did not finish within ${Math.round(timeoutMs / 1000)} s`,
        );
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(1000, delay * 2);
    }
  }

  async #task(method: string, body: Content[], thisRef: MoRef, what: string): Promise<XmlElement | undefined> {
    const r = await this.#invoke(method, el(method, [moref('_this', thisRef), ...body], { xmlns: 'urn:vim25' }));
    const rv = child(r, 'returnval');
    if (!rv) throw new RnodeError(VSphereErrorCodes.PROTOCOL, `vSphere ${method} returned no task`);
    return this.waitForTask({ type: rv.attrs.type ?? 'Task', value: rv.text }, what);
  }

  /** Turns CBT on (or off); it takes effect at the VM's next snapshot or power cycle. */
  async setChangeTracking(vm: string, enabled: boolean): Promise<void> {
    await this.#task(
      'ReconfigVM_Task',
      [el('spec', el('changeTrackingEnabled', enabled))],
      { type: 'VirtualMachine', value: vm },
      'ReconfigVM (changeTrackingEnabled)',
    );
  }

  /** Creates a snapshot without memory and returns its MoRef value. */
  async createSnapshot(vm: string, name: string, opts: { description?: string; quiesce?: boolean } = {}): Promise<string> {
    const result = await this.#task(
      'CreateSnapshot_Task',
      [el('name', name), el('description', opts.description ?? ''), el('memory', false), el('quiesce', opts.quiesce ?? false)],
      { type: 'VirtualMachine', value: vm },
      `CreateSnapshot ${name}`,
    );
    if (!result?.text) throw new RnodeError(VSphereErrorCodes.PROTOCOL, 'CreateSnapshot_Task succeeded without a snapshot reference');
    return result.text;
  }

  async removeSnapshot(snapshot: string): Promise<void> {
    await this.#task(
      'RemoveSnapshot_Task',
      [el('removeChildren', false), el('consolidate', true)],
      { type: 'VirtualMachineSnapshot', value: snapshot },
      `RemoveSnapshot ${snapshot}`,
    );
  }

  // ---- CBT ----

  /** One answer of QueryChangedDiskAreas: the areas changed since changeId ('*' = allocated) from startOffset on. */
  async queryChangedDiskAreas(vm: string, snapshot: string, deviceKey: number, startOffset: number, changeId: string): Promise<DiskChangeInfo> {
    const r = await this.#invoke(
      'QueryChangedDiskAreas',
      el(
        'QueryChangedDiskAreas',
        [
          moref('_this', { type: 'VirtualMachine', value: vm }),
          moref('snapshot', { type: 'VirtualMachineSnapshot', value: snapshot }),
          el('deviceKey', deviceKey),
          el('startOffset', startOffset),
          el('changeId', changeId),
        ],
        { xmlns: 'urn:vim25' },
      ),
    );
    const rv = child(r, 'returnval');
    const num = (e: XmlElement | undefined, n: string) => {
      const v = Number(textOf(e, n));
      if (!Number.isSafeInteger(v) || v < 0) throw new RnodeError(VSphereErrorCodes.PROTOCOL, `QueryChangedDiskAreas returned a bad ${n}`);
      return v;
    };
    return {
      startOffset: num(rv, 'startOffset'),
      length: num(rv, 'length'),
      changedArea: children(rv, 'changedArea').map((a) => ({ start: num(a, 'start'), length: num(a, 'length') })),
    };
  }
}

function parseDisks(devices: XmlElement | undefined): VirtualDiskInfo[] {
  const out: VirtualDiskInfo[] = [];
  for (const d of devices?.children ?? []) {
    if (xsiType(d) !== 'VirtualDisk') continue;
    const backing = child(d, 'backing');
    const bytes = textOf(d, 'capacityInBytes');
    const kb = textOf(d, 'capacityInKB');
    const changeId = textOf(backing, 'changeId');
    out.push({
      key: Number(textOf(d, 'key')),
      label: textOf(d, 'deviceInfo', 'label') ?? '',
      capacityBytes: bytes !== undefined ? Number(bytes) : Number(kb ?? 0) * 1024,
      fileName: textOf(backing, 'fileName') ?? '',
      ...(changeId ? { changeId } : {}),
      ...(textOf(backing, 'uuid') ? { uuid: textOf(backing, 'uuid') } : {}),
      ...(textOf(backing, 'diskMode') ? { diskMode: textOf(backing, 'diskMode') } : {}),
      ...(xsiType(backing) ? { backingType: xsiType(backing) } : {}),
      ...(textOf(backing, 'compatibilityMode') ? { compatibilityMode: textOf(backing, 'compatibilityMode') } : {}),
    });
  }
  return out;
}
