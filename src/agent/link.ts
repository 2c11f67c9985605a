// The node's one connection to its Management Server: dialled outbound (works through NAT), hello with the
// token, heartbeats, reconnect with capped exponential backoff and jitter. Reports go through a persisted
// outbox with sequence numbers: they survive disconnects and restarts, and are dropped only once acknowledged.
import { EventEmitter } from 'node:events';
import WebSocket from 'ws';
import { readRegularFile } from '../regular-file.js';
import { isTlsFailure } from '../transport/errors.js';
import type { Logger } from '../log.js';
import type { AgentMetrics } from './metrics.js';
import {
  agentMessages,
  checkOutgoing,
  decode,
  MAX_SEQ,
  MAX_TOKEN_CHARS,
  messageId,
  PROTOCOL_VERSION,
  ProtoErrors,
  serverMessages,
  SUBPROTOCOL,
  CloseCodes,
  type AgentReport,
  type Hello,
  type ServerMessage,
} from './protocol.js';
import { drained, type Outbox, type StateDir } from './state.js';
import { timerDelay } from '../timer-delay.js';

export interface LinkOptions {
  url: string;
  tokenFile: string;
  /** PEM CA bundle for wss:// servers with a private CA. */
  ca?: Buffer;
  state: StateDir;
  log: Logger;
  metrics: AgentMetrics;
  hello: () => Omit<Hello, 'token' | 'protocols' | 'lastSeq'>;
  backoff?: { initialMs?: number; maxMs?: number };
  /** Drop the oldest reports beyond this many (a server gone for weeks must not fill the disk). */
  maxQueued?: number;
}

export class ServerLink extends EventEmitter {
  private ws: WebSocket | undefined;
  private registered = false;
  private everRegistered = false;
  private stopped = false;
  private attempt = 0;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private heartbeatTimer: NodeJS.Timeout | undefined;
  private outbox: Outbox = { nextSeq: 1, reports: [] };
  private saving: Promise<void> = Promise.resolve();
  /**
   * Set while renumbered reports wait for their new numbers to be on disk: sent before, a crash would leave the old
   * numbering on disk, and the next start would number a report the server holds again (a duplicate).
   */
  private holdReports = false;
  /**
   * The highest seq this node may have sent (by an earlier run too): the server cannot hold a report numbered past it,
   * and an ack of one would drop reports it never got.
   */
  private sentThrough = 0;
  private missedPongs = 0;
  heartbeat: () => object = () => ({});

  constructor(private readonly o: LinkOptions) {
    super();
  }

  get isRegistered(): boolean {
    return this.registered;
  }
  get wasRegistered(): boolean {
    return this.everRegistered;
  }
  get queuedReports(): number {
    return this.outbox.reports.length;
  }

  /**
   * Loads the report queue, runs `beforeConnect` (the reports it makes are queued first, and no server message is
   * handled before it is done), then dials the server.
   */
  async start(beforeConnect?: () => Promise<void>): Promise<void> {
    this.outbox = await this.o.state.loadOutbox(this.o.log);
    this.sentThrough = this.outbox.nextSeq - 1;
    this.o.metrics.reportsQueued.set({}, this.outbox.reports.length);
    await beforeConnect?.();
    this.connect();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.reconnectTimer);
    clearInterval(this.heartbeatTimer);
    const ws = this.ws;
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.close(1000, 'node shutting down');
      await new Promise((r) => {
        ws.once('close', r);
        setTimeout(r, 1000).unref();
      });
    }
    ws?.terminate();
    await drained(() => this.saving);
  }

  /** Whether a report matching `test` waits in the queue (not yet acknowledged). */
  holdsReport(test: (msg: Record<string, unknown>) => boolean): boolean {
    return this.outbox.reports.some((r) => test(r.msg));
  }

  /** Queues a report (persisted) and sends it now when connected. */
  report(r: AgentReport): void {
    const msg = { v: PROTOCOL_VERSION, id: messageId('r'), seq: this.outbox.nextSeq++, at: new Date().toISOString(), ...r };
    if (!this.conforms(msg)) return;
    this.outbox.reports.push({ seq: msg.seq, msg });
    const max = this.o.maxQueued ?? 10_000;
    if (this.outbox.reports.length > max) {
      const dropped = this.outbox.reports.splice(0, this.outbox.reports.length - max);
      this.o.log.warn('report queue full; dropped the oldest reports', { dropped: dropped.length });
    }
    this.persist();
    if (this.registered && !this.holdReports) this.sendRaw(msg);
  }

  /** Sends a best-effort message (progress, heartbeat, error) if registered; dropped otherwise. */
  send(msg: Record<string, unknown>): boolean {
    if (!this.registered) return false;
    const full = { v: PROTOCOL_VERSION, id: messageId(), ...msg };
    return this.conforms(full) && this.sendRaw(full);
  }

  /** Our own messages are checked too; one that does not conform is a bug, logged, never sent (nor fatal). */
  private conforms(msg: Record<string, unknown>): boolean {
    try {
      checkOutgoing(msg, agentMessages);
      return true;
    } catch (err) {
      this.o.log.error('bug: an outgoing message does not match the protocol; not sent', { type: msg.type, err: (err as Error).message });
      return false;
    }
  }

  private sendRaw(msg: Record<string, unknown>): boolean {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(msg));
    if (typeof msg.seq === 'number' && msg.seq > this.sentThrough) this.sentThrough = msg.seq;
    return true;
  }

  private persist(): void {
    const snapshot = { ...this.outbox, reports: [...this.outbox.reports] };
    this.o.metrics.reportsQueued.set({}, snapshot.reports.length);
    this.saving = this.saving
      .then(() => this.o.state.saveOutbox(snapshot))
      .catch((err) => this.o.log.error('could not persist the report queue', { err }));
  }

  private connect(): void {
    if (this.stopped) return;
    let token: string;
    try {
      token = readRegularFile(this.o.tokenFile).data.toString('utf8').trim();
      if (!token) throw new Error('the file is empty');
      // The protocol's limit (hello.token): sent, it was refused on this side as a bug of the node's, on every attempt.
      if (token.length > MAX_TOKEN_CHARS)
        throw new Error(`the token is ${token.length} characters long, more than the ${MAX_TOKEN_CHARS} the protocol allows`);
    } catch (err) {
      // Re-read on every attempt: an operator may fix the file without restarting the node.
      this.o.log.error('cannot read the token file; will retry', { tokenFile: this.o.tokenFile, err: (err as Error).message });
      this.scheduleReconnect();
      return;
    }
    this.o.log.addSecret(token);
    const ws = new WebSocket(this.o.url, SUBPROTOCOL, { ca: this.o.ca, handshakeTimeout: 10_000, maxPayload: 16 * 1024 * 1024 });
    this.ws = ws;
    let welcomeTimer: NodeJS.Timeout | undefined;
    /** Why the connection failed, for the close line: alone, code 1006 says nothing an operator can act on. */
    let failure: string | undefined;
    /** Why this node refused the server's welcome (or what came instead of it). */
    let refusedWelcome: string | undefined;
    // Not registered, nothing else can follow: try again after the backoff (the next welcome may be sound).
    const refuseWelcome = (replyTo: string | undefined, code: string, message: string) => {
      this.refuse(replyTo, code, message);
      refusedWelcome = message;
      ws.close(1002, 'invalid welcome');
    };
    ws.on('open', () => {
      this.missedPongs = 0;
      const hello = {
        v: PROTOCOL_VERSION,
        type: 'hello',
        id: messageId('h'),
        token,
        protocols: [PROTOCOL_VERSION],
        // Not claimed while the numbering waits for the server's.
        lastSeq: this.outbox.awaitingServerSeq ? undefined : this.outbox.nextSeq - 1,
        ...this.o.hello(),
      };
      // Throwing here would be an uncaught exception in ws's handler: a hello that does not conform fails this attempt.
      if (!this.conforms(hello)) {
        ws.terminate();
        return;
      }
      ws.send(JSON.stringify(hello));
      welcomeTimer = setTimeout(() => {
        this.o.log.warn('no welcome from the server within 10 s; reconnecting');
        ws.terminate();
      }, 10_000);
    });
    ws.on('pong', () => {
      this.missedPongs = 0;
    });
    ws.on('message', (data, isBinary) => {
      if (isBinary) {
        this.refuse(undefined, ProtoErrors.INVALID, 'binary frames are not part of the control protocol');
        return;
      }
      const d = decode<ServerMessage>(data.toString(), serverMessages);
      if (!d.ok) {
        if (this.registered) this.refuse(d.replyTo, d.code, d.message);
        else refuseWelcome(d.replyTo, d.code, d.message);
        return;
      }
      const msg = d.msg;
      if (!this.registered) {
        if (msg.type === 'error') {
          this.o.log.error('server refused the node', { code: msg.code, message: msg.message });
          return;
        }
        if (msg.type !== 'welcome') {
          this.refuse(msg.id, ProtoErrors.INVALID, `expected welcome before ${msg.type}`);
          return;
        }
        const welcome = msg as Extract<ServerMessage, { type: 'welcome' }>;
        const problem = this.welcomeProblem(welcome);
        if (problem) {
          refuseWelcome(msg.id, ProtoErrors.INVALID, problem);
          return;
        }
        clearTimeout(welcomeTimer);
        this.onWelcome(welcome);
        return;
      }
      if (msg.type === 'ack') {
        if (msg.seq > this.sentThrough) {
          this.refuse(
            msg.id,
            ProtoErrors.INVALID,
            `ack of seq ${msg.seq}, past the last report this node sent (seq ${this.sentThrough}); its queued reports are kept`,
          );
          return;
        }
        this.onAck(msg.seq);
        return;
      }
      if (msg.type === 'welcome') {
        this.refuse(msg.id, ProtoErrors.INVALID, 'welcome was already received on this connection');
        return;
      }
      this.emit('message', msg);
    });
    ws.on('close', (code, reason) => {
      clearTimeout(welcomeTimer);
      clearInterval(this.heartbeatTimer);
      const was = this.registered;
      this.registered = false;
      this.o.metrics.connected.set({}, 0);
      if (this.ws === ws) this.ws = undefined;
      const why = reason.toString();
      if (code === CloseCodes.AUTH) this.o.log.error('the server refused the token; fix the token file (it is re-read on every attempt)', { code });
      else if (code === CloseCodes.VERSION) this.o.log.error("the server does not speak this node's protocol version", { code, reason: why });
      else if (code === CloseCodes.REPLACED)
        // Two nodes with one id (a copied state folder) replace each other at every reconnect, and the server drops
        // one's reports as duplicates of the other's.
        this.o.log.error(
          'another process registered with this node id, and the server dropped this connection; ' +
            'give every node a state folder of its own (a copy of one is the same node to the server)',
          { code, reason: why },
        );
      else if (refusedWelcome !== undefined)
        this.o.log.error("could not register: this node refused the server's welcome; will retry", { code, err: refusedWelcome, server: this.o.url });
      else if (!was && failure) this.o.log.warn('could not reach the server; will retry', { code, err: failure, server: this.o.url });
      else
        this.o.log.warn(was ? 'disconnected from the server' : 'could not register with the server', {
          code,
          reason: why,
          ...(failure ? { err: failure } : {}),
        });
      if (was) this.emit('disconnected');
      this.scheduleReconnect();
    });
    ws.on('error', (err: Error & { code?: string }) => {
      // An untrusted certificate fails before 'open': the hello (and the token in it) was never sent. It will not
      // fix itself, so it is an error every attempt, saying what to pass.
      if (isTlsFailure(err)) {
        this.o.metrics.errors.inc({ code: ProtoErrors.TLS });
        this.o.log.error(`TLS to the server failed; pass --ca <pem> with the CA that signed the server's certificate (the token was not sent)`, {
          code: ProtoErrors.TLS,
          tlsError: err.code,
          err: err.message,
          server: this.o.url,
          ca: this.o.ca ? 'given' : 'none',
        });
      } else {
        failure = err.message;
        this.o.log.debug('connection error', { err: err.message });
      }
    });
  }

  private onWelcome(w: Extract<ServerMessage, { type: 'welcome' }>): void {
    this.registered = true;
    this.everRegistered = true;
    this.attempt = 0;
    this.o.metrics.connected.set({}, 1);
    this.o.log.info('registered with the server', { heartbeatMs: w.heartbeatMs, ackedSeq: w.ackedSeq, queued: this.outbox.reports.length });
    // The server holds reports this node does not remember numbering (a state folder restored from an older backup):
    // numbered on from its own last seq, every new report would be dropped as a duplicate of one the server holds.
    // Numbered past what this node sent: its queued reports never got there, and an ack of them would drop them.
    const behindServer = !this.outbox.awaitingServerSeq && w.ackedSeq > this.sentThrough;
    if (behindServer) {
      this.o.log.warn(
        "the server holds reports numbered past this node's last one (was the state folder restored from a backup?); numbering continues after them",
        {
          ackedSeq: w.ackedSeq,
          lastSeq: this.outbox.nextSeq - 1,
        },
      );
    }
    // Reports it sent that the server holds go first: a node killed after sending two reports, with only the first
    // one's save on disk, came back with that one queued, renumbered it after the second, and sent it again.
    if (behindServer) this.onAck(this.sentThrough);
    const renumbered = this.outbox.awaitingServerSeq === true || behindServer;
    if (renumbered) this.numberAfter(w.ackedSeq);
    if (w.ackedSeq > this.sentThrough) this.sentThrough = w.ackedSeq;
    this.onAck(w.ackedSeq);
    // What the server does not have yet, in order; it acks as it stores them. Renumbered ones once their numbers
    // are saved (persist queues the save; `saving` settles when it is written, or logged as failed).
    const ws = this.ws;
    const sendQueued = () => {
      this.holdReports = false;
      if (this.ws === ws && this.registered) for (const r of this.outbox.reports) this.sendRaw(r.msg);
    };
    if (renumbered) {
      this.holdReports = true;
      void this.saving.then(sendQueued);
    } else sendQueued();
    this.heartbeatTimer = setInterval(() => this.beat(), timerDelay(w.heartbeatMs));
    this.beat();
    this.emit('registered');
  }

  /** Why this node cannot take a welcome (its report numbers would run out past ackedSeq); undefined when it can. */
  private welcomeProblem(w: Extract<ServerMessage, { type: 'welcome' }>): string | undefined {
    const renumbers = this.outbox.awaitingServerSeq === true || w.ackedSeq > this.sentThrough;
    // Room for 2^32 more reports: no node makes that many, so a server holding numbers this high is broken.
    if (renumbers && w.ackedSeq > MAX_SEQ - 2 ** 32) {
      return `welcome.ackedSeq ${w.ackedSeq} leaves this node too few report numbers (seqs end at ${MAX_SEQ}); its queued reports are kept`;
    }
    return undefined;
  }

  private beat(): void {
    const ws = this.ws;
    if (!ws || !this.registered) return;
    // A half-open connection shows as pings without pongs: give up on it after three.
    if (++this.missedPongs > 3) {
      this.o.log.warn('the server stopped answering pings; reconnecting');
      ws.terminate();
      return;
    }
    ws.ping();
    // A throw here would be uncaught (a timer's) and end the node: a node that cannot tell its health still beats.
    let health: object;
    try {
      health = this.heartbeat();
    } catch (err) {
      this.o.log.error('could not gather the health for a heartbeat; sent the ping alone', { err });
      return;
    }
    this.send({ type: 'heartbeat', health });
  }

  /**
   * Numbers the queued reports after the server's last seq (unknown while they were queued, or past this node's own):
   * with lower numbers the server would drop them as duplicates of reports it holds.
   */
  private numberAfter(ackedSeq: number): void {
    // New objects: a snapshot still waiting to be written keeps the numbers it had.
    const reports = this.outbox.reports.map((r, i) => ({ seq: ackedSeq + 1 + i, msg: { ...r.msg, seq: ackedSeq + 1 + i } }));
    this.outbox = { nextSeq: ackedSeq + 1 + reports.length, reports };
    this.o.log.info('report numbering continues after the last report the server holds', { ackedSeq, queued: reports.length });
    this.persist();
  }

  private onAck(seq: number): void {
    const before = this.outbox.reports.length;
    this.outbox.reports = this.outbox.reports.filter((r) => r.seq > seq);
    if (this.outbox.reports.length !== before) this.persist();
  }

  /** Answers a message we cannot take with an error, and carries on. */
  refuse(replyTo: string | undefined, code: string, message: string): void {
    this.o.metrics.protocolErrors.inc({ direction: 'in', code });
    this.o.metrics.errors.inc({ code });
    this.o.log.warn('refused a message from the server', { code, message, replyTo });
    const msg = { v: PROTOCOL_VERSION, type: 'error', id: messageId('e'), code, message: message.slice(0, 4000), ...(replyTo ? { replyTo } : {}) };
    this.sendRaw(msg);
  }

  private scheduleReconnect(): void {
    if (this.stopped) return;
    const initial = this.o.backoff?.initialMs ?? 500;
    const max = this.o.backoff?.maxMs ?? 30_000;
    const ceiling = Math.min(max, initial * 2 ** Math.min(this.attempt, 20));
    // Equal jitter: at least half the ceiling, so a fleet restarting together spreads out but never hammers.
    const delay = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
    this.attempt++;
    this.o.metrics.reconnects.inc();
    this.o.log.debug('reconnecting', { inMs: delay, attempt: this.attempt });
    this.reconnectTimer = setTimeout(() => this.connect(), delay);
  }
}
