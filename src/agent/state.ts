// The node's state directory: its persisted identity, the policies it runs, the last point of every scheduled
// disk and the reports not yet acknowledged by the server. Every file is replaced atomically (temp + rename),
// so a node killed at any moment restarts with a consistent view.
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Policy } from './protocol.js';
import { makeDirs, unusablePath } from '../store/fs/dirs.js';

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
  constructor(readonly dir: string) {}

  static async open(dir: string): Promise<StateDir> {
    try {
      await makeDirs(path.join(dir, 'secrets'), 0o700); // not Node's recursive mkdir: it spins forever under /proc
    } catch (err) {
      throw unusablePath(`state folder ${dir}`, err) ?? err;
    }
    return new StateDir(dir);
  }

  private file(name: string): string {
    return path.join(this.dir, name);
  }

  /** Where replicate runs keep this node's change hashes (src/jobs/replicate/change-hashes.ts). */
  get cacheDir(): string {
    return this.file('cache');
  }

  async readJson<T>(name: string, fallback: T): Promise<T> {
    try {
      return JSON.parse(await fsp.readFile(this.file(name), 'utf8')) as T;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return fallback;
      if (err instanceof SyntaxError) return fallback; // a torn file cannot happen with rename, but never wedge the node on it
      throw err;
    }
  }

  async writeJson(name: string, value: unknown): Promise<void> {
    const target = this.file(name);
    const tmp = `${target}.${process.pid}.${randomUUID().slice(0, 8)}.tmp`;
    const fh = await fsp.open(tmp, 'w', 0o600);
    try {
      await fh.writeFile(JSON.stringify(value));
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fsp.rename(tmp, target);
  }

  /** The node id, created on first start and kept across restarts. */
  async identity(): Promise<NodeIdentity> {
    const cur = await this.readJson<NodeIdentity | null>('node.json', null);
    if (cur?.nodeId) return cur;
    const id: NodeIdentity = { nodeId: `node-${randomUUID()}`, createdAt: new Date().toISOString() };
    await this.writeJson('node.json', id);
    return id;
  }

  loadPolicies(): Promise<Policy[]> {
    return this.readJson<Policy[]>('policies.json', []);
  }
  savePolicies(p: Policy[]): Promise<void> {
    return this.writeJson('policies.json', p);
  }

  loadDisks(): Promise<Record<string, DiskRecord>> {
    return this.readJson<Record<string, DiskRecord>>('disks.json', {});
  }
  saveDisks(d: Record<string, DiskRecord>): Promise<void> {
    return this.writeJson('disks.json', d);
  }

  loadOutbox(): Promise<{ nextSeq: number; reports: StoredReport[] }> {
    return this.readJson('outbox.json', { nextSeq: 1, reports: [] as StoredReport[] });
  }
  saveOutbox(o: { nextSeq: number; reports: StoredReport[] }): Promise<void> {
    return this.writeJson('outbox.json', o);
  }

  /** Readiness: can we still persist? (a full or read-only disk makes the node unready) */
  writable(): boolean {
    const probe = this.file(`.probe-${process.pid}`);
    try {
      fs.writeFileSync(probe, 'ok');
      fs.unlinkSync(probe);
      return true;
    } catch {
      return false;
    }
  }

  secretPath(name: string): string {
    return path.join(this.dir, 'secrets', name);
  }
}
