// The node's state directory: its persisted identity, the policies it runs, the last point of every scheduled
// disk, the jobs it runs and the reports not yet acknowledged by the server. Every file is replaced atomically
// (temp + rename), so a node killed at any moment restarts with a consistent view. Every file read back is
// checked: a damaged identity stops the node (a new one would orphan it at the server), a damaged cache is set
// aside and rebuilt.
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { ErrorCodes, RnodeError } from '../errors.js';
import { jsonSyntaxProblem } from '../json-text.js';
import type { Logger } from '../log.js';
import { agentMessages, checkOutgoing, isId, jobKinds, policyProblem, type JobKind, type Policy } from './protocol.js';
import { makeDirs, unusablePath } from '../store/fs/dirs.js';
import { tryLockExclusive } from '../native/index.js';

export interface NodeIdentity {
  nodeId: string;
  createdAt: string;
}
export interface DiskRecord {
  /** When the newest point's run started (the point holds the disk as of about then). */
  lastPointAt?: string;
  lastPoint?: number;
  /** When the current RPO miss was reported (cleared by the next point). */
  missedReportedAt?: string;
}
export interface StoredReport {
  seq: number;
  msg: Record<string, unknown>;
}
export interface Outbox {
  nextSeq: number;
  reports: StoredReport[];
  /**
   * The file was missing or damaged, so the last seq the server stored is unknown: these numbers are provisional
   * until the next welcome says it (ackedSeq), and none of these reports was sent yet.
   */
  awaitingServerSeq?: true;
}

/** A job accepted and not yet ended, as jobs.json keeps it: enough to report how it ended if the node dies first. */
export interface AcceptedJob {
  jobId: string;
  kind: JobKind;
  attempt?: number;
  scheduled?: boolean;
  group?: string;
}

/** An export being served, as exports.json keeps it: a node killed while it served one says so at its restart. */
export interface ServedExport {
  exportId: string;
}

/**
 * The secrets this node has used as encryption keys: their references and key ids (one-way fingerprints, as reports
 * carry them), never their values. A secret recorded here is never sent as a store credential (secrets.ts).
 */
export interface KeySecrets {
  refs: string[];
  keyIds: string[];
}

/** A state file as read: its JSON, or why it is not JSON. */
type Read = { value: unknown; damaged?: undefined } | { value?: undefined; damaged: string };

/** Held (flock) by the agent that uses the folder; holds its pid. */
const LOCK_FILE = 'agent.lock';
/** What writeJson names its temp files: <file>.<pid>.<8 hex>.tmp */
const TEMP_FILE = /^[^/]+\.\d+\.[0-9a-f]{8}\.tmp$/;
/** The readiness probe's file: .probe-<pid> */
const PROBE_FILE = /^\.probe-\d+$/;

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isTime = (v: unknown) => typeof v === 'string' && Number.isFinite(Date.parse(v));
const isSeq = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 1;

/**
 * Waits for a chain of state writes (a promise its owner replaces with each write it queues) to settle, including
 * writes queued while it waits: what the node handed to the state dir is on disk before it stops.
 */
export async function drained(chain: () => Promise<void>): Promise<void> {
  let seen: Promise<void>;
  do {
    seen = chain();
    await seen;
  } while (seen !== chain());
}

export class StateDir {
  /** The open lock file: its flock is this agent's claim on the folder, dropped by the kernel when the process dies. */
  private lockFd: number | undefined;

  /** key-secrets.json as loaded once, then kept current in memory: jobs record into it concurrently. */
  private keySecretsLoad: Promise<KeySecrets> | undefined;
  private keySecretsSaving: Promise<void> = Promise.resolve();

  constructor(readonly dir: string) {}

  /**
   * Opens the folder for one agent: a second agent on it would share the node id (the server replaces one connection
   * with the other) and the report numbers (the server drops one's reports as duplicates of the other's).
   */
  static async open(dir: string): Promise<StateDir> {
    try {
      await makeDirs(path.join(dir, 'secrets'), 0o700); // not Node's recursive mkdir: it spins forever under /proc
    } catch (err) {
      throw unusablePath(`state folder ${dir}`, err) ?? err;
    }
    const state = new StateDir(dir);
    state.lock();
    await state.removeStaleTemps(); // only now: another agent's writes in flight are not ours to remove
    return state;
  }

  private lock(): void {
    const file = this.file(LOCK_FILE);
    let fd: number;
    try {
      fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
    } catch (err) {
      throw unusablePath(`state file ${file}`, err) ?? err;
    }
    if (!tryLockExclusive(fd)) {
      const pid = /^\d+/.exec(fs.readFileSync(fd, 'utf8'))?.[0];
      fs.closeSync(fd);
      throw new RnodeError(
        ErrorCodes.STATE_IN_USE,
        `another agent${pid ? ` (pid ${pid})` : ''} uses the state folder ${this.dir}; ` +
          'stop that agent first, or give this one a --state-dir of its own',
        { details: { stateDir: this.dir, ...(pid ? { pid: Number(pid) } : {}) } },
      );
    }
    // The pid is only for the message above: the flock, not the file's contents, says whether the folder is held.
    fs.ftruncateSync(fd, 0);
    fs.writeSync(fd, `${process.pid}\n`, 0);
    this.lockFd = fd;
  }

  /** Gives the folder up (the agent stopped); another agent may open it next. */
  close(): void {
    if (this.lockFd === undefined) return;
    fs.closeSync(this.lockFd);
    this.lockFd = undefined;
  }

  /**
   * Temp files a write left behind when it failed or the process died mid-write (they never become state), and the
   * probe file of an agent that died while probing.
   */
  private async removeStaleTemps(): Promise<void> {
    for (const name of await fsp.readdir(this.dir)) {
      if (TEMP_FILE.test(name) || PROBE_FILE.test(name)) await fsp.rm(this.file(name), { force: true });
    }
  }

  private file(name: string): string {
    return path.join(this.dir, name);
  }

  /** Where replicate runs keep this node's change hashes (src/jobs/replicate/change-hashes.ts). */
  get cacheDir(): string {
    return this.file('cache');
  }

  /** undefined when the file does not exist. */
  private async read(name: string): Promise<Read | undefined> {
    let text: string;
    try {
      text = await fsp.readFile(this.file(name), 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw unusablePath(`state file ${this.file(name)}`, err) ?? err;
    }
    try {
      return { value: JSON.parse(text) };
    } catch (err) {
      return { damaged: jsonSyntaxProblem(err, text) };
    }
  }

  /** Moves a damaged file out of the way, kept for a look, and says what the node does without it. */
  private async setAside(name: string, problem: string, log: Logger, without: string): Promise<void> {
    const file = this.file(name);
    try {
      await fsp.rename(file, `${file}.damaged`);
    } catch (err) {
      throw unusablePath(`state file ${file}`, err) ?? err;
    }
    log.warn(`state file ${name} is damaged; kept it as ${name}.damaged and ${without}`, { file, problem });
  }

  async writeJson(name: string, value: unknown): Promise<void> {
    const target = this.file(name);
    const tmp = `${target}.${process.pid}.${randomUUID().slice(0, 8)}.tmp`;
    try {
      const fh = await fsp.open(tmp, 'w', 0o600);
      try {
        await fh.writeFile(JSON.stringify(value));
        await fh.sync();
      } finally {
        await fh.close();
      }
      await fsp.rename(tmp, target);
    } catch (err) {
      // A full disk fails every write: without this each one would leave its temp file behind.
      await fsp.rm(tmp, { force: true }).catch(() => undefined);
      throw err;
    }
  }

  /** The node id, created on first start and kept across restarts. */
  async identity(): Promise<NodeIdentity> {
    const file = this.file('node.json');
    const read = await this.read('node.json');
    if (read) {
      const problem = read.damaged ?? identityProblem(read.value);
      if (problem === undefined) return read.value as NodeIdentity;
      throw new RnodeError(
        ErrorCodes.STATE_CORRUPT,
        `state file ${file} is damaged (${problem}); it holds the id the Management Server knows this node by: ` +
          'restore it from a backup, or remove it to register as a new node',
      );
    }
    const id: NodeIdentity = { nodeId: `node-${randomUUID()}`, createdAt: new Date().toISOString() };
    await this.writeJson('node.json', id);
    return id;
  }

  /** The policies last received; damaged ones are dropped (the server sends every policy again at registration). */
  async loadPolicies(log: Logger): Promise<Policy[]> {
    return this.loadList<Policy>('policies.json', policyProblem, log, {
      without: 'runs no policy until the server sends them at registration',
      dropped: 'dropped a damaged policy of policies.json; the server sends it again at registration',
    });
  }
  savePolicies(p: Policy[]): Promise<void> {
    return this.writeJson('policies.json', p);
  }

  /** Each disk's last point; a damaged record only makes its disk run at once (and restarts its RPO clock). */
  async loadDisks(log: Logger): Promise<Record<string, DiskRecord>> {
    const without = 'runs its disks at once, their RPO clocks started anew';
    const read = await this.read('disks.json');
    if (!read) return {};
    if (read.damaged !== undefined || !isObject(read.value)) {
      await this.setAside('disks.json', read.damaged ?? 'not a JSON object', log, without);
      return {};
    }
    const entries = Object.entries(read.value).filter(([disk, rec]) => {
      const why = diskRecordProblem(rec);
      if (why !== undefined) log.warn(`dropped a damaged record of disks.json; the node ${without}`, { disk, problem: why });
      return why === undefined;
    });
    // fromEntries: a key such as "__proto__" stays a key.
    return Object.fromEntries(entries) as Record<string, DiskRecord>;
  }
  saveDisks(d: Record<string, DiskRecord>): Promise<void> {
    return this.writeJson('disks.json', d);
  }

  /**
   * The reports not yet acknowledged. Without a sound file the next seq is unknown, and starting again at 1 would make
   * the server drop every later report as a duplicate: the numbers wait for the server's (Outbox.awaitingServerSeq).
   */
  async loadOutbox(log: Logger): Promise<Outbox> {
    const fresh: Outbox = { nextSeq: 1, reports: [], awaitingServerSeq: true };
    const read = await this.read('outbox.json');
    if (!read) return fresh;
    const problem = read.damaged ?? outboxProblem(read.value);
    if (problem !== undefined) {
      await this.setAside('outbox.json', problem, log, 'lost the reports it held; new reports are numbered after the last one the server holds');
      // Written now: a restart before the next welcome must still know that the numbers are provisional.
      await this.saveOutbox(fresh);
      return fresh;
    }
    const held = read.value as Outbox;
    const reports: StoredReport[] = [];
    for (const r of held.reports) {
      const why = reportProblem(r, reports.at(-1)?.seq ?? 0);
      if (why !== undefined) log.warn('dropped a damaged report of outbox.json', { seq: isObject(r) ? r.seq : undefined, problem: why });
      else reports.push(r as StoredReport);
    }
    // A report numbered at or above nextSeq: never hand out its number again.
    const nextSeq = Math.max(held.nextSeq, (reports.at(-1)?.seq ?? 0) + 1);
    return { nextSeq, reports, ...(held.awaitingServerSeq ? { awaitingServerSeq: true } : {}) };
  }
  saveOutbox(o: Outbox): Promise<void> {
    return this.writeJson('outbox.json', o);
  }

  /**
   * The jobs accepted and not ended when the node last stopped: a node killed mid-job never sent their end, and the
   * server would wait for it forever. Damaged entries are dropped (logged): their jobs are the server's to time out.
   */
  async loadAcceptedJobs(log: Logger): Promise<AcceptedJob[]> {
    return this.loadList<AcceptedJob>('jobs.json', acceptedJobProblem, log, {
      without: 'cannot report the jobs a restart interrupted',
      dropped: 'dropped a damaged job of jobs.json',
    });
  }
  saveAcceptedJobs(jobs: AcceptedJob[]): Promise<void> {
    return this.writeJson('jobs.json', jobs);
  }

  /** The exports served when the node last stopped (as loadAcceptedJobs, for export.stopped). */
  async loadServedExports(log: Logger): Promise<ServedExport[]> {
    return this.loadList<ServedExport>('exports.json', servedExportProblem, log, {
      without: 'cannot report the exports a restart ended',
      dropped: 'dropped a damaged export of exports.json',
    });
  }
  saveServedExports(exports: ServedExport[]): Promise<void> {
    return this.writeJson('exports.json', exports);
  }

  /**
   * A state file holding a JSON array: a damaged file is set aside (the node goes on `without` it) and a damaged entry
   * is dropped with a warning; `problem` says what is wrong with an entry, undefined when nothing is.
   */
  private async loadList<T>(
    name: string,
    problem: (entry: unknown) => string | undefined,
    log: Logger,
    say: { without: string; dropped: string },
  ): Promise<T[]> {
    const read = await this.read(name);
    if (!read) return [];
    if (read.damaged !== undefined || !Array.isArray(read.value)) {
      await this.setAside(name, read.damaged ?? 'not a JSON array', log, say.without);
      return [];
    }
    return read.value.filter((entry: unknown, index) => {
      const why = problem(entry);
      if (why !== undefined) log.warn(say.dropped, { index, problem: why });
      return why === undefined;
    }) as T[];
  }

  /**
   * The secrets used as encryption keys so far. A damaged file is set aside (logged): the node records each key
   * again at its next use, and until then cannot tell it from a credential.
   */
  keySecrets(log: Logger): Promise<KeySecrets> {
    if (this.keySecretsLoad) return this.keySecretsLoad;
    const load = (this.keySecretsLoad = (async () => {
      const read = await this.read('key-secrets.json');
      if (!read) return { refs: [], keyIds: [] };
      const problem = read.damaged ?? keySecretsProblem(read.value);
      // An operator may list a key's reference ahead of its first use, without key ids.
      if (problem === undefined) return { refs: [], keyIds: [], ...(read.value as Partial<KeySecrets>) };
      await this.setAside('key-secrets.json', problem, log, 'records its encryption keys again as jobs use them');
      return { refs: [], keyIds: [] };
    })());
    // A read that failed (EACCES, EIO, a folder in its place) is tried again by the next job, not kept until a restart.
    load.catch(() => {
      if (this.keySecretsLoad === load) this.keySecretsLoad = undefined;
    });
    return load;
  }

  /**
   * Records a secret used as an encryption key; on disk before it returns (a restart must not forget it). In memory at
   * once, so that a credential check of another job sees it while it is written; taken back when the write fails, so
   * that the next job using the key writes it again instead of taking it for recorded.
   */
  async recordKeySecret(ref: string, keyId: string, log: Logger): Promise<void> {
    for (;;) {
      const known = await this.keySecrets(log);
      const recorded = () => known.refs.includes(ref) && known.keyIds.includes(keyId);
      if (recorded()) {
        // Perhaps another job's write, still under way: recorded only once it is done (and not taken back).
        await this.keySecretsSaving.catch(() => undefined);
        if (recorded()) return;
        continue;
      }
      const addRef = !known.refs.includes(ref);
      const addKeyId = !known.keyIds.includes(keyId);
      if (addRef) known.refs.push(ref);
      if (addKeyId) known.keyIds.push(keyId);
      // Chained, each write taking the record as it is then: a later write never puts back an older record.
      const save = this.keySecretsSaving.catch(() => undefined).then(() => this.writeJson('key-secrets.json', known));
      this.keySecretsSaving = save;
      try {
        await save;
        return;
      } catch (err) {
        if (addRef) known.refs.splice(known.refs.indexOf(ref), 1);
        if (addKeyId) known.keyIds.splice(known.keyIds.indexOf(keyId), 1);
        throw err;
      }
    }
  }

  /** Readiness: can we still persist? (a full or read-only disk makes the node unready) */
  writable(): boolean {
    const probe = this.file(`.probe-${process.pid}`);
    try {
      fs.writeFileSync(probe, 'ok');
      fs.unlinkSync(probe);
      return true;
    } catch {
      // On a full disk the file is made and its write fails: without this, one file per probe's pid stays behind.
      try {
        fs.rmSync(probe, { force: true });
      } catch {
        // Not removable now (EMFILE, EIO); the next start removes it.
      }
      return false;
    }
  }

  secretPath(name: string): string {
    return path.join(this.dir, 'secrets', name);
  }
}

function identityProblem(v: unknown): string | undefined {
  if (!isObject(v)) return 'not a JSON object';
  if (typeof v.nodeId !== 'string' || !isId(v.nodeId)) return 'nodeId is not a node id';
  return undefined;
}

function diskRecordProblem(rec: unknown): string | undefined {
  if (!isObject(rec)) return 'not a JSON object';
  if (rec.lastPointAt !== undefined && !isTime(rec.lastPointAt)) return 'lastPointAt is not a time';
  if (rec.missedReportedAt !== undefined && !isTime(rec.missedReportedAt)) return 'missedReportedAt is not a time';
  if (rec.lastPoint !== undefined && !isSeq(rec.lastPoint)) return 'lastPoint is not a point number';
  return undefined;
}

function acceptedJobProblem(j: unknown): string | undefined {
  if (!isObject(j)) return 'not a JSON object';
  if (typeof j.jobId !== 'string' || !isId(j.jobId)) return 'jobId is not a job id';
  if (!(jobKinds as readonly unknown[]).includes(j.kind)) return 'kind is not a job kind';
  if (j.attempt !== undefined && !isSeq(j.attempt)) return 'attempt is not an attempt number';
  if (j.scheduled !== undefined && typeof j.scheduled !== 'boolean') return 'scheduled is not a boolean';
  if (j.group !== undefined && (typeof j.group !== 'string' || !isId(j.group))) return 'group is not a group id';
  return undefined;
}

function servedExportProblem(e: unknown): string | undefined {
  if (!isObject(e)) return 'not a JSON object';
  if (typeof e.exportId !== 'string' || !isId(e.exportId)) return 'exportId is not an export id';
  return undefined;
}

function keySecretsProblem(v: unknown): string | undefined {
  if (!isObject(v)) return 'not a JSON object';
  const strings = (l: unknown) => Array.isArray(l) && l.every((x) => typeof x === 'string');
  if (v.refs !== undefined && !strings(v.refs)) return 'refs is not a list of secret references';
  if (v.keyIds !== undefined && !strings(v.keyIds)) return 'keyIds is not a list of key ids';
  return undefined;
}

/** What makes the whole outbox unusable: without a sound nextSeq the numbering is lost. */
function outboxProblem(v: unknown): string | undefined {
  if (!isObject(v)) return 'not a JSON object';
  if (!isSeq(v.nextSeq)) return 'nextSeq is not a report number';
  if (!Array.isArray(v.reports)) return 'reports is not a list';
  if (v.awaitingServerSeq !== undefined && v.awaitingServerSeq !== true) return 'awaitingServerSeq is not true';
  return undefined;
}

/** A report that could not be sent as it is; it must also come after the one before it. */
function reportProblem(r: unknown, previousSeq: number): string | undefined {
  if (!isObject(r) || !isSeq(r.seq) || !isObject(r.msg) || r.msg.seq !== r.seq) return 'not a numbered report';
  if (r.seq <= previousSeq) return `seq ${r.seq} does not follow ${previousSeq}`;
  try {
    checkOutgoing(r.msg, agentMessages);
  } catch (err) {
    return (err as Error).message;
  }
  return undefined;
}
