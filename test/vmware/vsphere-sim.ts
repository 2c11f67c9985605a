// A vSphere (vim25 SOAP over HTTPS) simulator for the VMware source tests: login, property collector,
// tasks, snapshots, reconfigure and QueryChangedDiskAreas with real paging and faults. Its CBT tracks the
// writes a test makes through writeToVmDisk(); each snapshot freezes a copy of the disk images and
// registers it with the stand-in VDDK (dummy-vddk.c) through the dummy's config file.
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes, randomUUID, X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { openRaw } from '../../src/native/index.js';
import { selfSignedCert } from '../../src/testing.js';
import { child, children, el, parseXml, Raw, textOf, type XmlElement } from '../../src/source/vmware/vsphere/xml.js';

export interface SimDiskSpec {
  key: number;
  size: number;
  /** backing.diskMode (default persistent); independent_* disks are not part of snapshots. */
  mode?: string;
  /** A raw device mapping in this compatibility mode (physicalMode cannot be snapshot). */
  rdm?: 'physicalMode' | 'virtualMode';
}
export interface Fingerprint {
  size: number;
  sha256: string;
}

interface Cbt {
  epoch: string;
  seq: number;
  writes: Array<{ afterSeq: number; offset: number; length: number }>;
}

export interface SimDisk {
  key: number;
  label: string;
  /** The live image the "guest" writes to. */
  image: string;
  baseFile: string;
  capacity: number;
  uuid: string;
  cbt: Cbt;
  mode: string;
  rdm?: 'physicalMode' | 'virtualMode';
}

export interface SimSnapshotDisk {
  key: number;
  fileName: string;
  changeId?: string;
  frozen: string;
  capacity: number;
  seq: number;
  epoch: string;
}
export interface SimSnapshot {
  moref: string;
  vm: string;
  name: string;
  description: string;
  createTime: string;
  quiesce: boolean;
  disks: SimSnapshotDisk[];
  /** The VM's disks (key, label, capacity, backing) when it was taken: its config. */
  config: Array<{ d: SimDisk; fileName: string; changeId?: string }>;
}

/** VMware Tools in the guest: running, not installed/running, or running with quiescing that fails. */
export type SimTools = 'running' | 'absent' | 'quiesceFails';

export interface SimVm {
  moref: string;
  name: string;
  changeTrackingEnabled: boolean;
  disks: SimDisk[];
  snapshots: SimSnapshot[];
  tools: SimTools;
  uuid: string;
}

interface SimTask {
  moref: string;
  name: string;
  entity: { type: string; value: string };
  polls: number;
  result?: Raw;
  error?: { fault: string; message: string };
}

export interface SimOptions {
  dir: string;
  user: string;
  password: string;
  /** The stand-in VDDK's config file (the one given to InitEx) and call log. */
  dummyConfig: string;
  dummyLog: string;
  /** Most extents in one QueryChangedDiskAreas answer. */
  maxExtentsPerAnswer?: number;
  /** CBT block size: changed areas are whole blocks. */
  cbtBlock?: number;
}

export interface SnapshotRecord {
  vm: string;
  snapshot: string;
  disks: Map<number, Fingerprint & { changeId?: string }>;
}

const SOAP_ENV = 'http://schemas.xmlsoap.org/soap/envelope/';

/** A changeId epoch in VMware's notation: "52 1f 0a ... 3c-9d ... 44". */
function newEpoch(): string {
  const hex = randomBytes(16).toString('hex').match(/../g)!;
  return `${hex.slice(0, 8).join(' ')}-${hex.slice(8).join(' ')}`;
}

function sha256File(file: string): string {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

export function makeCert(dir: string, cn = '127.0.0.1'): { key: string; cert: string; thumbprint: string } {
  const { key, cert } = selfSignedCert(dir, cn);
  return { key, cert, thumbprint: new X509Certificate(cert).fingerprint };
}

export class VSphereSim {
  readonly opts: Required<SimOptions>;
  readonly vms = new Map<string, SimVm>();
  readonly history: SnapshotRecord[] = [];
  /** SOAP method names in call order. */
  readonly calls: string[] = [];
  /** Extra lines for the dummy VDDK config (fault injection). */
  dummyExtra: string[] = [];
  thumbprint = '';
  port = 0;
  #server?: https.Server;
  #sessions = new Set<string>();
  #tasks = new Map<string, SimTask>();
  #faults: Array<{ method: string; fault: string; message: string; remaining: number }> = [];
  #next = 1;

  constructor(opts: SimOptions) {
    this.opts = { maxExtentsPerAnswer: 1000, cbtBlock: 4096, ...opts };
  }

  static async start(opts: SimOptions, cert?: { key: string; cert: string; thumbprint: string }): Promise<VSphereSim> {
    const sim = new VSphereSim(opts);
    const c = cert ?? makeCert(opts.dir);
    sim.thumbprint = c.thumbprint;
    sim.#server = https.createServer({ key: c.key, cert: c.cert }, (req, res) => sim.#handle(req, res));
    await new Promise<void>((resolve) => sim.#server!.listen(0, '127.0.0.1', resolve));
    sim.port = (sim.#server.address() as AddressInfo).port;
    sim.writeDummyConfig();
    return sim;
  }

  async stop(): Promise<void> {
    this.#server?.closeAllConnections();
    await new Promise<void>((resolve) => (this.#server ? this.#server.close(() => resolve()) : resolve()));
  }

  // ---- test helpers ----

  /** Adds a VM whose disks are sparse images of the given sizes (all zero). */
  addVm(moref: string, disks: SimDiskSpec[], opts: { cbt?: boolean; name?: string } = {}): SimVm {
    const vmDir = path.join(this.opts.dir, 'datastore1', moref);
    fs.mkdirSync(vmDir, { recursive: true });
    const vm: SimVm = {
      moref,
      name: opts.name ?? `test-${moref}`,
      changeTrackingEnabled: opts.cbt ?? true,
      snapshots: [],
      tools: 'running',
      uuid: randomUUID(),
      disks: [],
    };
    this.vms.set(moref, vm);
    for (const d of disks) this.addDisk(moref, d);
    return vm;
  }

  /** Hot-adds a disk (sparse, all zero). */
  addDisk(moref: string, d: SimDiskSpec): SimDisk {
    const vm = this.#vm(moref);
    const vmDir = path.join(this.opts.dir, 'datastore1', moref);
    const image = path.join(vmDir, `disk-${d.key}.img`);
    fs.closeSync(fs.openSync(image, 'w'));
    fs.truncateSync(image, d.size);
    const i = vm.disks.length;
    const disk: SimDisk = {
      key: d.key,
      label: `Hard disk ${i + 1}`,
      image,
      capacity: d.size,
      baseFile: `[datastore1] ${moref}/${moref}${i ? `_${i}` : ''}.vmdk`,
      uuid: `6000C29${randomBytes(12).toString('hex')}`.slice(0, 32),
      cbt: { epoch: newEpoch(), seq: 0, writes: [] },
      mode: d.mode ?? 'persistent',
      ...(d.rdm ? { rdm: d.rdm } : {}),
    };
    vm.disks.push(disk);
    return disk;
  }

  /** Removes a disk from the VM (its image stays on the datastore). */
  removeDisk(moref: string, key: number): void {
    const vm = this.#vm(moref);
    vm.disks = vm.disks.filter((d) => d.key !== key);
  }

  /** Grows a disk; as on vSphere, its CBT starts over (old change ids are answered with FileFault). */
  resizeDisk(moref: string, key: number, size: number): void {
    const d = this.disk(moref, key);
    if (size < d.capacity) throw new Error('sim: disks only grow');
    fs.truncateSync(d.image, size);
    d.capacity = size;
    d.cbt = { epoch: newEpoch(), seq: 0, writes: [] };
  }

  setTools(moref: string, tools: SimTools): void {
    this.#vm(moref).tools = tools;
  }

  /** A snapshot taken by someone else (the VM's owner): rnode must work beside it and leave it alone. */
  userSnapshot(moref: string, name: string): string {
    return this.#takeSnapshot(this.#vm(moref), name, 'taken by the VM owner', false);
  }

  disk(vm: string, key: number): SimDisk {
    const d = this.vms.get(vm)?.disks.find((x) => x.key === key);
    if (!d) throw new Error(`sim: no disk ${key} on ${vm}`);
    return d;
  }

  /** A guest write: updates the live image and, when CBT is on, the change log. */
  writeToVmDisk(vm: string, key: number, offset: number, data: Uint8Array): void {
    const d = this.disk(vm, key);
    if (offset + data.length > d.capacity) throw new Error('sim: write beyond the disk');
    const fd = fs.openSync(d.image, 'r+');
    try {
      let done = 0;
      while (done < data.length) done += fs.writeSync(fd, data, done, data.length - done, offset + done);
    } finally {
      fs.closeSync(fd);
    }
    if (this.vms.get(vm)!.changeTrackingEnabled) d.cbt.writes.push({ afterSeq: d.cbt.seq, offset, length: data.length });
  }

  /** What a CBT reset does (e.g. after a storage vMotion or an unclean shutdown): a new epoch, no history. */
  resetCbt(vm: string): void {
    for (const d of this.vms.get(vm)!.disks) d.cbt = { epoch: newEpoch(), seq: 0, writes: [] };
  }

  /** The next `times` calls of `method` answer with this fault. */
  injectFault(method: string, fault: string, message = '', times = 1): void {
    this.#faults.push({ method, fault, message, remaining: times });
  }

  /** Writes the dummy VDDK's config: credentials, injected faults, and the frozen image of every snapshot disk. */
  writeDummyConfig(): void {
    const lines = [
      `dummy.log=${this.opts.dummyLog}`,
      `dummy.user=${this.opts.user}`,
      `dummy.password=${this.opts.password}`,
      `dummy.thumbprint=${this.thumbprint}`,
      ...this.dummyExtra,
    ];
    for (const vm of this.vms.values()) {
      for (const s of vm.snapshots) for (const d of s.disks) lines.push(`dummy.disk=${s.moref}|${d.fileName}|${d.frozen}`);
    }
    fs.writeFileSync(this.opts.dummyConfig, lines.join('\n') + '\n');
  }

  // ---- HTTP / SOAP ----

  #handle(req: import('node:http').IncomingMessage, res: import('node:http').ServerResponse): void {
    const parts: Buffer[] = [];
    req.on('data', (b: Buffer) => parts.push(b));
    req.on('end', async () => {
      let status = 200;
      let body: string;
      const headers: Record<string, string> = { 'Content-Type': 'text/xml; charset=utf-8' };
      try {
        if (req.method !== 'POST' || req.url !== '/sdk') throw new SimFault('InvalidRequest', 'POST /sdk only', 400);
        const doc = parseXml(Buffer.concat(parts).toString('utf8'));
        const call = child(doc, 'Body')?.children[0];
        if (!call) throw new SimFault('InvalidRequest', 'no SOAP body');
        const method = call.local;
        this.calls.push(method);
        const injected = this.#faults.find((f) => f.method === method && f.remaining > 0);
        if (injected) {
          injected.remaining--;
          throw new SimFault(injected.fault, injected.message);
        }
        const cookie = /vmware_soap_session="?([^";]+)"?/.exec(req.headers.cookie ?? '')?.[1];
        if (method !== 'RetrieveServiceContent' && method !== 'Login' && (!cookie || !this.#sessions.has(cookie))) {
          throw new SimFault('NotAuthenticated', 'The session is not authenticated.');
        }
        const result = await this.#dispatch(method, call, headers, cookie);
        body = el(`${method}Response`, result ?? [], { xmlns: 'urn:vim25' }).xml;
      } catch (err) {
        const f = err instanceof SimFault ? err : new SimFault('SystemError', (err as Error).message);
        status = f.status;
        body = el('soapenv:Fault', [
          el('faultcode', 'ServerFaultCode'),
          el('faultstring', f.message),
          el('detail', el(`${f.fault}Fault`, f.detail ?? [], { xmlns: 'urn:vim25', 'xsi:type': f.fault })),
        ]).xml;
      }
      res.writeHead(status, headers);
      res.end(
        `<?xml version="1.0" encoding="UTF-8"?>\n<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" ` +
          `xmlns:soapenv="${SOAP_ENV}" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n` +
          `<soapenv:Body>${body}</soapenv:Body>\n</soapenv:Envelope>`,
      );
    });
  }

  async #dispatch(method: string, call: XmlElement, headers: Record<string, string>, cookie: string | undefined): Promise<Raw | Raw[] | undefined> {
    switch (method) {
      case 'RetrieveServiceContent':
        return el('returnval', [
          el('rootFolder', 'group-d1', { type: 'Folder' }),
          el('propertyCollector', 'propertyCollector', { type: 'PropertyCollector' }),
          el('about', [
            el('name', 'VMware vCenter Server'),
            el('fullName', 'VMware vCenter Server 7.0.3 build-0 (rnode sim)'),
            el('vendor', 'VMware, Inc.'),
            el('version', '7.0.3'),
            el('build', '0'),
            el('apiType', 'VirtualCenter'),
            el('apiVersion', '7.0.3.0'),
            el('instanceUuid', 'a9b5e4a2-0000-4000-8000-000000000001'),
          ]),
          el('sessionManager', 'SessionManager', { type: 'SessionManager' }),
        ]);
      case 'Login': {
        if (textOf(call, 'userName') !== this.opts.user || textOf(call, 'password') !== this.opts.password) {
          throw new SimFault('InvalidLogin', 'Cannot complete login due to an incorrect user name or password.');
        }
        const id = randomUUID();
        this.#sessions.add(id);
        headers['Set-Cookie'] = `vmware_soap_session="${id}"; Path=/; HttpOnly; Secure;`;
        const now = new Date().toISOString();
        return el('returnval', [
          el('key', id),
          el('userName', this.opts.user),
          el('fullName', this.opts.user),
          el('loginTime', now),
          el('lastActiveTime', now),
          el('locale', 'en'),
          el('messageLocale', 'en'),
        ]);
      }
      case 'Logout':
        if (cookie) this.#sessions.delete(cookie);
        return undefined;
      case 'RetrievePropertiesEx':
        return this.#retrieve(call);
      case 'ReconfigVM_Task': {
        const vm = this.#vm(textOf(call, '_this'));
        const cbt = textOf(call, 'spec', 'changeTrackingEnabled');
        if (cbt !== undefined) {
          const on = cbt === 'true';
          if (on && !vm.changeTrackingEnabled) for (const d of vm.disks) d.cbt = { epoch: newEpoch(), seq: 0, writes: [] };
          vm.changeTrackingEnabled = on;
        }
        return this.#newTask('ReconfigVM_Task', { type: 'VirtualMachine', value: vm.moref });
      }
      case 'CreateSnapshot_Task':
        return this.#createSnapshot(call);
      case 'RemoveSnapshot_Task': {
        const moref = textOf(call, '_this') ?? '';
        const vm = [...this.vms.values()].find((v) => v.snapshots.some((s) => s.moref === moref));
        if (!vm)
          throw new SimFault(
            'ManagedObjectNotFound',
            `The object 'vim.vm.Snapshot:${moref}' has already been deleted or has not been completely created`,
          );
        const snap = vm.snapshots.find((s) => s.moref === moref)!;
        vm.snapshots = vm.snapshots.filter((s) => s !== snap);
        for (const d of snap.disks) fs.rmSync(d.frozen, { force: true });
        this.writeDummyConfig();
        return this.#newTask('RemoveSnapshot_Task', { type: 'VirtualMachineSnapshot', value: moref });
      }
      case 'QueryChangedDiskAreas':
        return this.#queryChanged(call);
      default:
        throw new SimFault('MethodNotFound', `method ${method} is not simulated`);
    }
  }

  #vm(moref: string | undefined): SimVm {
    const vm = moref ? this.vms.get(moref) : undefined;
    if (!vm)
      throw new SimFault(
        'ManagedObjectNotFound',
        `The object 'vim.VirtualMachine:${moref}' has already been deleted or has not been completely created`,
      );
    return vm;
  }

  #newTask(name: string, entity: { type: string; value: string }, result?: Raw, error?: SimTask['error']): Raw {
    const moref = `task-${this.#next++}`;
    this.#tasks.set(moref, { moref, name, entity, polls: 0, result, error });
    return el('returnval', moref, { type: 'Task' });
  }

  #createSnapshot(call: XmlElement): Raw {
    const vm = this.#vm(textOf(call, '_this'));
    if (textOf(call, 'memory') !== 'false') throw new SimFault('InvalidArgument', 'the simulator only takes snapshots without memory');
    const quiesce = textOf(call, 'quiesce') === 'true';
    const entity = { type: 'VirtualMachine', value: vm.moref };
    if (quiesce && vm.tools === 'absent') {
      return this.#newTask('CreateSnapshot_Task', entity, undefined, {
        fault: 'ToolsUnavailable',
        message: 'Cannot complete operation because VMware Tools is not running in this virtual machine.',
      });
    }
    if (quiesce && vm.tools === 'quiesceFails') {
      return this.#newTask('CreateSnapshot_Task', entity, undefined, {
        fault: 'FilesystemQuiesceFault',
        message: 'An error occurred while quiescing the virtual machine.',
      });
    }
    const moref = this.#takeSnapshot(vm, textOf(call, 'name') ?? '', textOf(call, 'description') ?? '', quiesce);
    return this.#newTask(
      'CreateSnapshot_Task',
      entity,
      el('result', moref, { type: 'VirtualMachineSnapshot', 'xsi:type': 'ManagedObjectReference' }),
    );
  }

  #takeSnapshot(vm: SimVm, name: string, description: string, quiesce: boolean): string {
    const moref = `snapshot-${this.#next++}`;
    const snap: SimSnapshot = { moref, vm: vm.moref, name, description, createTime: new Date().toISOString(), quiesce, disks: [], config: [] };
    const record: SnapshotRecord = { vm: vm.moref, snapshot: moref, disks: new Map() };
    for (const d of vm.disks) {
      const fileName = this.#currentFile(vm, d);
      snap.config.push({ d: { ...d }, fileName });
      // Independent disks and physical RDMs are not part of a snapshot: nothing of them is frozen.
      if (d.mode.startsWith('independent') || d.rdm === 'physicalMode') continue;
      const frozen = path.join(path.dirname(d.image), `${moref}-disk-${d.key}.img`);
      execFileSync('cp', ['--sparse=always', d.image, frozen]);
      let changeId: string | undefined;
      if (vm.changeTrackingEnabled) {
        d.cbt.seq++;
        changeId = `${d.cbt.epoch}/${d.cbt.seq}`;
      }
      snap.config[snap.config.length - 1].changeId = changeId;
      snap.disks.push({ key: d.key, fileName, changeId, frozen, capacity: d.capacity, seq: d.cbt.seq, epoch: d.cbt.epoch });
      record.disks.set(d.key, { size: d.capacity, sha256: sha256File(frozen), ...(changeId ? { changeId } : {}) });
    }
    vm.snapshots.push(snap);
    this.history.push(record);
    this.writeDummyConfig();
    return moref;
  }

  /** The disk file the VM writes to now: the base, or the delta of its latest snapshot. */
  #currentFile(vm: SimVm, d: SimDisk): string {
    const n = vm.snapshots.length;
    return n === 0 ? d.baseFile : d.baseFile.replace(/\.vmdk$/, `-${String(n).padStart(6, '0')}.vmdk`);
  }

  #devices(vm: SimVm, disks: Array<{ d: SimDisk; fileName: string; changeId?: string }>): Raw {
    return el('val', this.#deviceList(disks, 'VirtualDevice'), { 'xsi:type': 'ArrayOfVirtualDevice' });
  }

  /** The controller and the disks, each element named `name` (VirtualDevice in an array, device in a config). */
  #deviceList(disks: Array<{ d: SimDisk; fileName: string; changeId?: string }>, name: string): Raw[] {
    return [
      el(
        name,
        [
          el('key', 1000),
          el('deviceInfo', [el('label', 'SCSI controller 0'), el('summary', 'LSI Logic')]),
          el('busNumber', 0),
          ...disks.map(({ d }) => el('device', d.key)),
          el('sharedBus', 'noSharing'),
        ],
        { 'xsi:type': 'VirtualLsiLogicController' },
      ),
      ...disks.map(({ d, fileName, changeId }, i) =>
        el(
          name,
          [
            el('key', d.key),
            el('deviceInfo', [el('label', d.label), el('summary', `${d.capacity / 1024} KB`)]),
            d.rdm
              ? el(
                  'backing',
                  [
                    el('fileName', fileName),
                    el('datastore', 'datastore-11', { type: 'Datastore' }),
                    el('backingObjectId', ''),
                    el('lunUuid', `0200000000${d.uuid}`),
                    el('deviceName', `vml.0200000000${d.uuid}`),
                    el('compatibilityMode', d.rdm),
                    el('diskMode', d.mode),
                    el('uuid', d.uuid),
                    ...(changeId ? [el('changeId', changeId)] : []),
                  ],
                  { 'xsi:type': 'VirtualDiskRawDiskMappingVer1BackingInfo' },
                )
              : el(
                  'backing',
                  [
                    el('fileName', fileName),
                    el('datastore', 'datastore-11', { type: 'Datastore' }),
                    el('backingObjectId', ''),
                    el('diskMode', d.mode),
                    el('split', false),
                    el('writeThrough', false),
                    el('thinProvisioned', true),
                    el('uuid', d.uuid),
                    el('contentId', randomBytes(16).toString('hex')),
                    ...(changeId ? [el('changeId', changeId)] : []),
                    el('digestEnabled', false),
                  ],
                  { 'xsi:type': 'VirtualDiskFlatVer2BackingInfo' },
                ),
            el('controllerKey', 1000),
            el('unitNumber', i),
            el('capacityInKB', Math.floor(d.capacity / 1024)),
            el('capacityInBytes', d.capacity),
            el('shares', [el('shares', 1000), el('level', 'normal')]),
            el('storageIOAllocation', el('limit', -1)),
          ],
          { 'xsi:type': 'VirtualDisk' },
        ),
      ),
    ];
  }

  #retrieve(call: XmlElement): Raw {
    const spec = child(call, 'specSet');
    const paths = children(child(spec, 'propSet'), 'pathSet').map((p) => p.text);
    const objEl = child(child(spec, 'objectSet'), 'obj');
    const type = objEl?.attrs.type;
    const value = objEl?.text ?? '';
    const props: Raw[] = [];
    const prop = (name: string, val: Raw) => props.push(el('propSet', [el('name', name), val]));
    if (type === 'VirtualMachine') {
      const vm = this.#vm(value);
      for (const p of paths) {
        if (p === 'name') prop(p, el('val', vm.name, { 'xsi:type': 'xsd:string' }));
        else if (p === 'config.changeTrackingEnabled') prop(p, el('val', vm.changeTrackingEnabled, { 'xsi:type': 'xsd:boolean' }));
        else if (p === 'config.hardware.device') {
          prop(
            p,
            this.#devices(
              vm,
              vm.disks.map((d) => ({
                d,
                fileName: this.#currentFile(vm, d),
                ...(vm.changeTrackingEnabled && d.cbt.seq > 0 ? { changeId: `${d.cbt.epoch}/${d.cbt.seq}` } : {}),
              })),
            ),
          );
        } else if (p === 'guest.toolsRunningStatus') {
          prop(p, el('val', vm.tools === 'absent' ? 'guestToolsNotRunning' : 'guestToolsRunning', { 'xsi:type': 'xsd:string' }));
        } else if (p === 'snapshot') {
          // Unset when the VM has no snapshot. Each snapshot is the child of the one before (a chain).
          if (vm.snapshots.length === 0) continue;
          const tree = (i: number, name: string): Raw => {
            const sn = vm.snapshots[i];
            return el(name, [
              el('snapshot', sn.moref, { type: 'VirtualMachineSnapshot' }),
              el('vm', vm.moref, { type: 'VirtualMachine' }),
              el('name', sn.name),
              el('description', sn.description),
              el('id', i + 1),
              el('createTime', sn.createTime),
              el('state', 'poweredOn'),
              el('quiesced', sn.quiesce),
              el('backupManifest', ''),
              el('replaySupported', false),
              ...(i + 1 < vm.snapshots.length ? [tree(i + 1, 'childSnapshotList')] : []),
            ]);
          };
          prop(
            p,
            el('val', [el('currentSnapshot', vm.snapshots.at(-1)!.moref, { type: 'VirtualMachineSnapshot' }), tree(0, 'rootSnapshotList')], {
              'xsi:type': 'VirtualMachineSnapshotInfo',
            }),
          );
        } else throw new SimFault('InvalidProperty', `property ${p} is not simulated`);
      }
    } else if (type === 'VirtualMachineSnapshot') {
      const vm = [...this.vms.values()].find((v) => v.snapshots.some((s) => s.moref === value));
      const snap = vm?.snapshots.find((s) => s.moref === value);
      if (!vm || !snap)
        throw new SimFault(
          'ManagedObjectNotFound',
          `The object 'vim.vm.Snapshot:${value}' has already been deleted or has not been completely created`,
        );
      for (const p of paths) {
        if (p === 'config.hardware.device') prop(p, this.#devices(vm, snap.config));
        else if (p === 'config') {
          prop(
            p,
            el(
              'val',
              [
                el('changeVersion', snap.createTime),
                el('modified', snap.createTime),
                el('name', vm.name),
                el('guestFullName', 'Debian GNU/Linux 12 (64-bit)'),
                el('version', 'vmx-19'),
                el('uuid', vm.uuid),
                el('instanceUuid', vm.uuid),
                el('template', false),
                el('guestId', 'debian12_64Guest'),
                el('changeTrackingEnabled', vm.changeTrackingEnabled),
                el('firmware', 'efi'),
                el('hardware', [el('numCPU', 2), el('numCoresPerSocket', 1), el('memoryMB', 4096), ...this.#deviceList(snap.config, 'device')]),
              ],
              { 'xsi:type': 'VirtualMachineConfigInfo' },
            ),
          );
        } else throw new SimFault('InvalidProperty', `property ${p} is not simulated`);
      }
    } else if (type === 'Task') {
      const task = this.#tasks.get(value);
      if (!task)
        throw new SimFault('ManagedObjectNotFound', `The object 'vim.Task:${value}' has already been deleted or has not been completely created`);
      // The first poll sees the task running, so clients have to wait for it.
      const state = task.polls++ === 0 ? 'running' : task.error ? 'error' : 'success';
      prop(
        'info',
        el(
          'val',
          [
            el('key', task.moref),
            el('task', task.moref, { type: 'Task' }),
            el('name', task.name),
            el('descriptionId', task.name),
            el('entity', task.entity.value, { type: task.entity.type }),
            el('state', state),
            el('cancelled', false),
            el('cancelable', false),
            ...(state === 'running' ? [el('progress', 50)] : []),
            ...(state === 'error'
              ? [el('error', [el('fault', [], { 'xsi:type': task.error!.fault }), el('localizedMessage', task.error!.message)])]
              : []),
            ...(state === 'success' && task.result ? [task.result] : []),
            el('queueTime', new Date().toISOString()),
          ],
          { 'xsi:type': 'TaskInfo' },
        ),
      );
    } else {
      throw new SimFault('ManagedObjectNotFound', `The object '${type}:${value}' has already been deleted or has not been completely created`);
    }
    return el('returnval', el('objects', [el('obj', value, { type: type ?? '' }), ...props]));
  }

  async #queryChanged(call: XmlElement): Promise<Raw> {
    const vm = this.#vm(textOf(call, '_this'));
    const snapRef = textOf(call, 'snapshot') ?? '';
    const snap = vm.snapshots.find((s) => s.moref === snapRef);
    if (!snap)
      throw new SimFault(
        'ManagedObjectNotFound',
        `The object 'vim.vm.Snapshot:${snapRef}' has already been deleted or has not been completely created`,
      );
    const key = Number(textOf(call, 'deviceKey'));
    const sd = snap.disks.find((d) => d.key === key);
    if (!sd) throw new SimFault('InvalidArgument', 'A specified parameter was not correct: deviceKey', 500, el('invalidProperty', 'deviceKey'));
    const start = Number(textOf(call, 'startOffset'));
    if (!Number.isSafeInteger(start) || start < 0 || start >= sd.capacity) {
      throw new SimFault('InvalidArgument', 'A specified parameter was not correct: startOffset', 500, el('invalidProperty', 'startOffset'));
    }
    const changeId = textOf(call, 'changeId') ?? '';
    const ctkFault = () =>
      new SimFault(
        'FileFault',
        `Error caused by file /vmfs/volumes/datastore1/${vm.moref}/${vm.moref}-ctk.vmdk`,
        500,
        el('file', `/vmfs/volumes/datastore1/${vm.moref}/${vm.moref}-ctk.vmdk`),
      );
    if (!sd.changeId) throw ctkFault(); // CBT was off when the snapshot was taken
    let areas: Array<{ offset: number; length: number }>;
    if (changeId === '*') {
      areas = await this.#allocated(sd.frozen, this.opts.cbtBlock, sd.capacity);
    } else {
      const i = changeId.lastIndexOf('/');
      const epoch = changeId.slice(0, i);
      const seq = Number(changeId.slice(i + 1));
      if (i <= 0 || !Number.isInteger(seq) || seq < 0) {
        throw new SimFault('InvalidArgument', 'A specified parameter was not correct: changeId', 500, el('invalidProperty', 'changeId'));
      }
      if (epoch !== sd.epoch) throw ctkFault();
      if (seq > sd.seq)
        throw new SimFault('InvalidArgument', 'A specified parameter was not correct: changeId', 500, el('invalidProperty', 'changeId'));
      const disk = vm.disks.find((d) => d.key === key)!;
      const b = this.opts.cbtBlock;
      areas = merge(
        disk.cbt.writes
          .filter((w) => w.afterSeq >= seq && w.afterSeq < sd.seq)
          .map((w) => {
            const a = Math.floor(w.offset / b) * b;
            return { offset: a, length: Math.min(sd.capacity, Math.ceil((w.offset + w.length) / b) * b) - a };
          }),
      );
    }
    // Clip to [start, capacity) and cap the answer; its length ends where the last extent listed ends.
    const from = areas
      .map((a) => ({ offset: Math.max(a.offset, start), length: a.offset + a.length - Math.max(a.offset, start) }))
      .filter((a) => a.length > 0);
    const page = from.slice(0, this.opts.maxExtentsPerAnswer);
    const more = from.length > page.length;
    const length = more ? page[page.length - 1].offset + page[page.length - 1].length - start : sd.capacity - start;
    return el('returnval', [
      el('startOffset', start),
      el('length', length),
      ...page.map((a) => el('changedArea', [el('start', a.offset), el('length', a.length)])),
    ]);
  }

  async #allocated(file: string, block: number, capacity: number): Promise<Array<{ offset: number; length: number }>> {
    const h = await openRaw(file);
    try {
      const raw = await h.allocatedExtents(0, capacity, 1e9);
      return merge(
        raw.map((e) => {
          const a = Math.floor(e.offset / block) * block;
          return { offset: a, length: Math.min(capacity, Math.ceil((e.offset + e.length) / block) * block) - a };
        }),
      );
    } finally {
      await h.close();
    }
  }
}

function merge(list: Array<{ offset: number; length: number }>): Array<{ offset: number; length: number }> {
  const sorted = [...list].sort((a, b) => a.offset - b.offset);
  const out: Array<{ offset: number; length: number }> = [];
  for (const e of sorted) {
    const last = out[out.length - 1];
    if (last && e.offset <= last.offset + last.length) last.length = Math.max(last.length, e.offset + e.length - last.offset);
    else out.push({ ...e });
  }
  return out;
}

class SimFault extends Error {
  constructor(
    readonly fault: string,
    message: string,
    readonly status = 500,
    readonly detail?: Raw,
  ) {
    super(message);
  }
}
