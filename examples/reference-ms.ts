// A reference Management Server: the server side of docs/control-protocol.md, small enough to read in one go.
// It authenticates nodes, assigns the disks of each policy to live nodes, dispatches jobs, acknowledges and
// records reports, and when a node stops heartbeating it hands that node's disks and unfinished jobs to the
// others (which continue from the checkpoint in the store; the store lease keeps it to one writer).
// An example, not part of the node: tests and the agent bench run against it, `npm run example:ms` (examples/ms.ts)
// starts it with a sample policy (docs/agent.md), and it keeps its state in memory only. Like any Management Server
// it takes the protocol from the package's `replication-node/protocol` entry (the built dist/agent/protocol.js).
import { EventEmitter } from 'node:events';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { WebSocketServer, WebSocket } from 'ws';
import {
  agentMessages,
  CloseCodes,
  decode,
  messageId,
  PROTOCOL_VERSION,
  ProtoErrors,
  serverMessages,
  checkOutgoing,
  type AgentMessage,
  type Health,
  type Hello,
  type Job,
  type JobProgress,
  type Policy,
} from 'replication-node/protocol';

export interface ReferenceMsOptions {
  token: string;
  host?: string;
  /** 0: any free port. Restarting (listen()) reuses the port first bound. */
  port?: number;
  heartbeatMs?: number;
  /** A node silent this long is declared dead and its work reassigned (default 3 heartbeats). */
  nodeTimeoutMs?: number;
  tls?: { cert: Buffer | string; key: Buffer | string };
  log?: (msg: string, fields?: Record<string, unknown>) => void;
}

export interface MsNode {
  id: string;
  name: string;
  hello: Hello;
  connected: boolean;
  /** False once declared dead (heartbeat timeout); true again when it registers anew. */
  alive: boolean;
  lastSeen: number;
  /** Highest report seq stored from this node. */
  lastSeq: number;
  health?: Health;
  ws?: WebSocket;
}

export interface MsJob {
  job: Job;
  nodeId?: string;
  state: 'pending' | 'dispatched' | 'accepted' | 'completed' | 'failed';
  attempt: number;
  attempts: { nodeId: string; at: number }[];
  progress?: JobProgress;
  completed?: AgentMessage;
  failed?: AgentMessage;
}

export interface MsReport {
  nodeId: string;
  msg: AgentMessage;
  receivedAt: number;
}

export class ReferenceMs extends EventEmitter {
  readonly nodes = new Map<string, MsNode>();
  readonly jobs = new Map<string, MsJob>();
  readonly policies = new Map<string, Policy>();
  /** "group/disk" -> node id. */
  readonly assignment = new Map<string, string>();
  /** Every reliable report stored (deduplicated by node and seq), in arrival order. */
  readonly reports: MsReport[] = [];
  readonly progress: MsReport[] = [];
  /** error messages nodes sent (refusals of what this server sent). */
  readonly errors: MsReport[] = [];
  private httpServer: http.Server | https.Server | undefined;
  private wss: WebSocketServer | undefined;
  private checker: NodeJS.Timeout | undefined;
  private port: number;
  private readonly heartbeatMs: number;
  private readonly nodeTimeoutMs: number;

  private constructor(private readonly o: ReferenceMsOptions) {
    super();
    this.port = o.port ?? 0;
    this.heartbeatMs = o.heartbeatMs ?? 1000;
    this.nodeTimeoutMs = o.nodeTimeoutMs ?? 3 * this.heartbeatMs;
  }

  static async start(o: ReferenceMsOptions): Promise<ReferenceMs> {
    const ms = new ReferenceMs(o);
    await ms.listen();
    return ms;
  }

  get url(): string {
    return `${this.o.tls ? 'wss' : 'ws'}://${this.o.host ?? '127.0.0.1'}:${this.port}`;
  }
  get listening(): boolean {
    return this.httpServer !== undefined;
  }

  private log(msg: string, fields?: Record<string, unknown>): void {
    this.o.log?.(msg, fields);
  }

  /** Starts (or restarts, on the same port) accepting nodes. */
  async listen(): Promise<void> {
    const server = this.o.tls ? https.createServer({ cert: this.o.tls.cert, key: this.o.tls.key }) : http.createServer();
    server.on('request', (_req, res) => {
      res.writeHead(426).end('this is a WebSocket endpoint\n');
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.port, this.o.host ?? '127.0.0.1', () => resolve());
    });
    this.port = (server.address() as AddressInfo).port;
    this.httpServer = server;
    this.wss = new WebSocketServer({ server, maxPayload: 1024 * 1024 });
    this.wss.on('connection', (ws) => this.onConnection(ws));
    this.checker = setInterval(() => this.checkNodes(), Math.max(50, Math.floor(this.heartbeatMs / 2)));
    this.checker.unref();
  }

  /** Stops accepting and drops every connection (an outage); the recorded state stays. */
  async stopListening(): Promise<void> {
    clearInterval(this.checker);
    for (const ws of this.wss?.clients ?? []) ws.terminate();
    await new Promise<void>((r) => (this.wss ? this.wss.close(() => r()) : r()));
    const server = this.httpServer;
    this.httpServer = undefined;
    this.wss = undefined;
    if (server) {
      (server as http.Server).closeAllConnections?.();
      await new Promise<void>((r) => server.close(() => r()));
    }
    for (const n of this.nodes.values()) {
      n.connected = false;
      n.ws = undefined;
    }
  }

  close(): Promise<void> {
    return this.stopListening();
  }

  // ---- what a Management Server does ----

  /** Adds or replaces a protection group; its disks are spread over the live nodes (a VM's all on one). */
  setPolicy(p: Policy): void {
    this.policies.set(p.group, p);
    for (const key of [...this.assignment.keys()]) {
      if (key.startsWith(`${p.group}/`) && !p.disks.some((d) => `${p.group}/${d.disk}` === key)) this.assignment.delete(key);
    }
    this.assignOrphans();
    this.syncAll();
  }

  removePolicy(group: string): void {
    this.policies.delete(group);
    for (const key of [...this.assignment.keys()]) if (key.startsWith(`${group}/`)) this.assignment.delete(key);
    this.syncAll();
  }

  /** Records a job and sends it to `nodeId` or to the least busy live node (or keeps it until one registers). */
  startJob(job: Job, nodeId?: string): MsJob {
    const rec: MsJob = { job, state: 'pending', attempt: job.attempt ?? 1, attempts: [] };
    this.jobs.set(job.jobId, rec);
    this.dispatch(rec, nodeId);
    return rec;
  }

  cancelJob(jobId: string): void {
    const rec = this.jobs.get(jobId);
    if (rec?.nodeId) this.send(rec.nodeId, { type: 'job.cancel', jobId });
  }

  /** Sends a message (envelope added) to a node; false when it is not connected. */
  send(nodeId: string, msg: Record<string, unknown>): boolean {
    const full = { v: PROTOCOL_VERSION, id: messageId('s'), ...msg };
    checkOutgoing(full, serverMessages);
    return this.sendRaw(nodeId, JSON.stringify(full));
  }

  /** Sends any text, valid or not (tests of the node's refusals). */
  sendRaw(nodeId: string, text: string): boolean {
    const ws = this.nodes.get(nodeId)?.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(text);
    return true;
  }

  liveNodes(): MsNode[] {
    return [...this.nodes.values()].filter((n) => n.alive && n.connected);
  }

  /** Polls until fn returns something truthy. */
  async waitFor<T>(fn: () => T | undefined | null | false, timeoutMs = 20_000, what = 'condition'): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = fn();
      if (v) return v;
      if (Date.now() > deadline) throw new Error(`reference MS: timed out after ${timeoutMs} ms waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  reportsOf(type: string, filter: (m: AgentMessage) => boolean = () => true): MsReport[] {
    return this.reports.filter((r) => r.msg.type === type && filter(r.msg));
  }

  // ---- connections ----

  private onConnection(ws: WebSocket): void {
    let node: MsNode | undefined;
    const refuse = (replyTo: string | undefined, code: string, message: string, close?: number) => {
      ws.send(JSON.stringify({ v: PROTOCOL_VERSION, type: 'error', id: messageId('s'), code, message, ...(replyTo ? { replyTo } : {}) }));
      if (close) ws.close(close, code);
    };
    const helloTimer = setTimeout(() => ws.close(CloseCodes.AUTH, 'no hello'), 10_000);
    ws.on('message', (data) => {
      const d = decode<AgentMessage>(data.toString(), agentMessages);
      if (!node) {
        if (!d.ok) {
          refuse(d.replyTo, d.code, d.message, d.code === ProtoErrors.VERSION ? CloseCodes.VERSION : undefined);
          return;
        }
        if (d.msg.type !== 'hello') {
          refuse(d.msg.id, ProtoErrors.INVALID, 'the first message must be hello', CloseCodes.AUTH);
          return;
        }
        clearTimeout(helloTimer);
        const hello = d.msg as unknown as Hello & AgentMessage;
        if (hello.token !== this.o.token) {
          refuse(d.msg.id, ProtoErrors.AUTH, 'the token is not valid for this server', CloseCodes.AUTH);
          return;
        }
        if (!hello.protocols.includes(PROTOCOL_VERSION)) {
          refuse(d.msg.id, ProtoErrors.VERSION, `this server speaks protocol ${PROTOCOL_VERSION}`, CloseCodes.VERSION);
          return;
        }
        node = this.register(hello, ws);
        return;
      }
      node.lastSeen = Date.now();
      if (!d.ok) {
        refuse(d.replyTo, d.code, d.message);
        return;
      }
      this.onMessage(node, d.msg);
    });
    ws.on('close', () => {
      clearTimeout(helloTimer);
      if (node && node.ws === ws) {
        node.connected = false;
        node.ws = undefined;
        this.log('node disconnected', { node: node.name });
        this.emit('disconnected', node);
      }
    });
    ws.on('error', () => undefined);
  }

  private register(hello: Hello & AgentMessage, ws: WebSocket): MsNode {
    const prev = this.nodes.get(hello.node.id);
    if (prev?.ws && prev.ws !== ws) prev.ws.close(CloseCodes.REPLACED, 'the same node connected again');
    const node: MsNode = {
      id: hello.node.id,
      name: hello.node.name,
      hello,
      connected: true,
      alive: true,
      lastSeen: Date.now(),
      lastSeq: prev?.lastSeq ?? 0,
      ws,
      health: prev?.health,
    };
    this.nodes.set(node.id, node);
    this.send(node.id, {
      type: 'welcome',
      nodeId: node.id,
      protocol: PROTOCOL_VERSION,
      heartbeatMs: this.heartbeatMs,
      ackedSeq: node.lastSeq,
      serverTime: new Date().toISOString(),
    });
    this.log('node registered', { node: node.name, id: node.id, returning: !!prev });
    // A node declared dead that comes back may still be running attempts that were handed to others: stop them,
    // or two nodes write the disk in turn and the later one re-reads it all for a second point. A job still pending
    // (no live node took it) is stopped too, though the dispatch below may send its next attempt back here: the node
    // runs that attempt once the cancelled one has stopped, from its checkpoint; left running, the old attempt would
    // make the node refuse the new one as a duplicate, and its own end would be ignored as not the current attempt.
    if (prev && !prev.alive) {
      for (const j of this.jobs.values()) {
        if (j.nodeId !== node.id && j.attempts.some((a) => a.nodeId === node.id) && j.state !== 'completed' && j.state !== 'failed') {
          this.send(node.id, { type: 'job.cancel', jobId: j.job.jobId });
        }
      }
    }
    this.assignOrphans();
    this.syncAll();
    for (const j of this.jobs.values()) if (j.state === 'pending') this.dispatch(j);
    this.emit('registered', node);
    return node;
  }

  private onMessage(node: MsNode, msg: AgentMessage): void {
    switch (msg.type) {
      case 'heartbeat':
        node.health = msg.health as Health;
        return;
      case 'export.status': // best effort like progress (no seq)
      case 'job.progress': {
        this.progress.push({ nodeId: node.id, msg, receivedAt: Date.now() });
        const j = this.jobs.get(String(msg.jobId));
        if (j && j.nodeId === node.id) j.progress = msg as unknown as JobProgress;
        this.emit('progress', node, msg);
        return;
      }
      case 'error':
        this.errors.push({ nodeId: node.id, msg, receivedAt: Date.now() });
        this.emit('node-error', node, msg);
        return;
      case 'hello':
        this.sendRaw(
          node.id,
          JSON.stringify({
            v: PROTOCOL_VERSION,
            type: 'error',
            id: messageId('s'),
            replyTo: msg.id,
            code: ProtoErrors.INVALID,
            message: 'already registered',
          }),
        );
        return;
      default:
        this.onReport(node, msg);
    }
  }

  private onReport(node: MsNode, msg: AgentMessage): void {
    const seq = Number(msg.seq);
    // Reports come in order on one connection; one at or below lastSeq is a resend after a reconnect.
    if (seq > node.lastSeq) {
      node.lastSeq = seq;
      this.reports.push({ nodeId: node.id, msg, receivedAt: Date.now() });
      const j = typeof msg.jobId === 'string' ? this.jobs.get(msg.jobId) : undefined;
      // Only the current attempt moves a job's state (a node declared dead may still report late).
      if (j && j.nodeId === node.id && (msg.attempt ?? 1) === j.attempt) {
        if (msg.type === 'job.accepted' && j.state === 'dispatched') j.state = 'accepted';
        if (msg.type === 'job.completed') {
          j.state = 'completed';
          j.completed = msg;
        }
        if (msg.type === 'job.failed') {
          j.state = 'failed';
          j.failed = msg;
        }
      }
      this.emit('report', node, msg);
    }
    this.send(node.id, { type: 'ack', seq: node.lastSeq });
  }

  // ---- assignment and failover ----

  private dispatch(rec: MsJob, nodeId?: string): void {
    const target = nodeId ? this.nodes.get(nodeId) : this.leastBusy();
    if (!target || !target.connected || !target.alive) {
      rec.state = 'pending';
      rec.nodeId = undefined;
      return;
    }
    rec.nodeId = target.id;
    rec.state = 'dispatched';
    rec.attempts.push({ nodeId: target.id, at: Date.now() });
    rec.job = { ...rec.job, attempt: rec.attempt };
    this.send(target.id, { type: 'job.start', job: rec.job });
    this.log('job dispatched', { jobId: rec.job.jobId, node: target.name, attempt: rec.attempt });
  }

  private leastBusy(exclude?: string): MsNode | undefined {
    const load = (n: MsNode) =>
      [...this.jobs.values()].filter((j) => j.nodeId === n.id && (j.state === 'dispatched' || j.state === 'accepted')).length /
      Math.max(1, n.hello.capacity.slots);
    return this.liveNodes()
      .filter((n) => n.id !== exclude)
      .sort((a, b) => load(a) - load(b))[0];
  }

  private assignOrphans(): void {
    const live = this.liveNodes();
    if (live.length === 0) return;
    const count = (id: string) => [...this.assignment.values()].filter((v) => v === id).length;
    const alive = (id: string | undefined) => id !== undefined && this.nodes.get(id)?.alive === true;
    const leastAssigned = () => live.sort((a, b) => count(a.id) - count(b.id))[0].id;
    for (const p of this.policies.values()) {
      const keys = p.disks.map((d) => `${p.group}/${d.disk}`);
      // A VM's disks run on one node together: its runs take one snapshot of the whole VM (docs/vmware.md). Spread
      // over nodes, each node's VM points held its own disks only, and one run removed the other's live snapshot.
      if (p.vm !== undefined) {
        const target = keys.map((k) => this.assignment.get(k)).find(alive) ?? leastAssigned();
        for (const key of keys) this.assignment.set(key, target);
        continue;
      }
      for (const key of keys) if (!alive(this.assignment.get(key))) this.assignment.set(key, leastAssigned());
    }
  }

  /** The live node a policy assigns the job's (first) disk to, if the disk is in a policy. */
  private diskOwner(job: Job): string | undefined {
    const disk = job.kind === 'replicate' ? job.disks[0]?.disk : job.disk;
    for (const p of this.policies.values()) {
      if (!p.disks.some((d) => d.disk === disk && p.store.url === job.store.url)) continue;
      const owner = this.assignment.get(`${p.group}/${disk}`);
      if (owner && this.nodes.get(owner)?.alive && this.nodes.get(owner)?.connected) return owner;
    }
    return undefined;
  }

  /** What one node should run: each policy cut down to the disks assigned to it. */
  sliceFor(nodeId: string): Policy[] {
    const out: Policy[] = [];
    for (const p of this.policies.values()) {
      const disks = p.disks.filter((d) => this.assignment.get(`${p.group}/${d.disk}`) === nodeId);
      if (disks.length) out.push({ ...p, disks });
    }
    return out;
  }

  private syncAll(): void {
    for (const n of this.liveNodes()) this.send(n.id, { type: 'policy.sync', policies: this.sliceFor(n.id) });
  }

  private checkNodes(): void {
    const now = Date.now();
    for (const n of this.nodes.values()) {
      if (!n.alive || now - n.lastSeen <= this.nodeTimeoutMs) continue;
      n.alive = false;
      n.ws?.terminate();
      this.log('node declared dead: no heartbeat', { node: n.name, silentMs: now - n.lastSeen });
      this.emit('node-dead', n);
      this.assignOrphans();
      // The dead node's unfinished jobs go out before the policies that move its disks, and to the node that now
      // holds the job's disk: a scheduled run of the disk started first (here or on another node) would take the
      // disk, continue the checkpoint itself, and leave the re-run a full re-read of a new point.
      for (const j of this.jobs.values()) {
        if (j.nodeId === n.id && (j.state === 'dispatched' || j.state === 'accepted')) {
          j.attempt++;
          this.log('job reassigned', { jobId: j.job.jobId, from: n.name, attempt: j.attempt });
          this.dispatch(j, this.diskOwner(j.job));
        }
      }
      this.syncAll();
    }
  }
}
