// Typed control messages and the meta blocks of PUT/DATA frames, each validated field by field before
// use (a peer's JSON is untrusted). Pure: parse*(meta) returns a typed message or throws PROTOCOL.
import { protocolError } from './errors.js';

export interface ObjectInfoWire {
  key: string;
  size: number;
  etag?: string;
}

/** Client → node. */
export type ClientMessage =
  | { op: 'hello'; token?: string; client?: string; resumeOf?: string }
  | { op: 'get'; key: string; offset?: number; length?: number }
  | { op: 'head'; key: string }
  | { op: 'list'; prefix: string; after?: string }
  | { op: 'listNext' }
  | { op: 'listCancel' }
  | { op: 'delete'; key: string }
  /** A disk's write lease: the node writes the record itself, with a TTL it clamps (never a PUT of lease.json). */
  | { op: 'lease'; action: 'acquire' | 'renew' | 'release'; disk: string; holder: string; ttlMs?: number; token?: number; breakDead?: string };

/** The lease record a node returns (see LeaseRecord in src/store/types.ts). */
export interface LeaseWire {
  disk: string;
  holder: string;
  token: number;
  acquiredAt: string;
  renewedAt?: string;
  expiresAt: string;
}

/** Node → client. */
export type NodeMessage =
  /** maxObject: the largest object a PUT may carry (in parts); absent from nodes that predate parted PUTs. */
  /**
   * stored: on a resume (hello.resumeOf), the PUTs the old session stored, by their stream ids there: acks the client
   * may not have heard. Absent from nodes that predate it (the client re-sends every unacknowledged PUT).
   */
  | {
      op: 'welcome';
      session: string;
      window: number;
      maxFrame: number;
      maxInflight: number;
      node: string;
      maxObject?: number;
      stored?: Array<{ stream: number } & ObjectInfoWire>;
    }
  | { op: 'ack'; info?: ObjectInfoWire; credit?: number }
  | { op: 'error'; code: string; message: string; retryable?: boolean; details?: Record<string, unknown>; credit?: number }
  | { op: 'credit'; bytes: number }
  | { op: 'listPage'; items: ObjectInfoWire[]; more: boolean }
  | { op: 'leaseGrant'; lease: LeaseWire };

/**
 * A PUT's meta. An object sent in parts carries `total` (the object's size) and `at` (where this part's payload
 * goes) on every part of its stream; parts come in order, each starting where the previous one ended.
 */
export interface PutMeta {
  key: string;
  ifMatch?: string;
  total?: number;
  at?: number;
}
export interface DataMeta {
  size: number;
  etag?: string;
}

const MAX_KEY = 1024;
const MAX_TEXT = 4096;
/** The HTTP path of the WebSocket upgrade: the node upgrades there only (docs/wire-protocol.md). */
export const RNODE_PATH = '/rnode';
/** The longest bearer token a hello carries (a node refuses a longer one as a protocol error). */
export const MAX_TOKEN_CHARS = MAX_TEXT;
/** The most acks a welcome replays: a node's in-flight limit is far below it. */
const MAX_STORED_ACKS = 65_536;

function str(m: Record<string, unknown>, name: string, max = MAX_KEY): string {
  const v = m[name];
  if (typeof v !== 'string' || v.length > max) throw protocolError(`field "${name}" must be a string of at most ${max} characters`);
  return v;
}
function optStr(m: Record<string, unknown>, name: string, max = MAX_KEY): string | undefined {
  return m[name] === undefined ? undefined : str(m, name, max);
}
function int(m: Record<string, unknown>, name: string): number {
  const v = m[name];
  if (!Number.isSafeInteger(v) || (v as number) < 0) throw protocolError(`field "${name}" must be a non-negative integer`);
  return v as number;
}
function optInt(m: Record<string, unknown>, name: string): number | undefined {
  return m[name] === undefined ? undefined : int(m, name);
}
function bool(m: Record<string, unknown>, name: string): boolean {
  if (typeof m[name] !== 'boolean') throw protocolError(`field "${name}" must be true or false`);
  return m[name] as boolean;
}
function obj(v: unknown, what: string): Record<string, unknown> {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw protocolError(`${what} must be a JSON object`);
  return v as Record<string, unknown>;
}

function info(v: unknown): ObjectInfoWire {
  const m = obj(v, 'object info');
  const etag = optStr(m, 'etag', MAX_TEXT);
  return { key: str(m, 'key'), size: int(m, 'size'), ...(etag !== undefined ? { etag } : {}) };
}

export function parseClientMessage(meta: Record<string, unknown>): ClientMessage {
  switch (meta.op) {
    case 'hello': {
      const token = optStr(meta, 'token', MAX_TOKEN_CHARS);
      const client = optStr(meta, 'client', 256);
      const resumeOf = optStr(meta, 'resumeOf', 256);
      return {
        op: 'hello',
        ...(token !== undefined ? { token } : {}),
        ...(client !== undefined ? { client } : {}),
        ...(resumeOf !== undefined ? { resumeOf } : {}),
      };
    }
    case 'get': {
      const offset = optInt(meta, 'offset');
      const length = optInt(meta, 'length');
      return { op: 'get', key: str(meta, 'key'), ...(offset !== undefined ? { offset } : {}), ...(length !== undefined ? { length } : {}) };
    }
    case 'head':
      return { op: 'head', key: str(meta, 'key') };
    case 'delete':
      return { op: 'delete', key: str(meta, 'key') };
    case 'list': {
      const after = optStr(meta, 'after');
      return { op: 'list', prefix: str(meta, 'prefix'), ...(after !== undefined ? { after } : {}) };
    }
    case 'listNext':
      return { op: 'listNext' };
    case 'listCancel':
      return { op: 'listCancel' };
    case 'lease': {
      const action = meta.action;
      if (action !== 'acquire' && action !== 'renew' && action !== 'release') throw protocolError('lease action must be acquire, renew or release');
      const ttlMs = optInt(meta, 'ttlMs');
      const token = optInt(meta, 'token');
      const breakDead = optStr(meta, 'breakDead', 256);
      return {
        op: 'lease',
        action,
        disk: str(meta, 'disk', 128),
        holder: str(meta, 'holder', 256),
        ...(ttlMs !== undefined ? { ttlMs } : {}),
        ...(token !== undefined ? { token } : {}),
        ...(breakDead !== undefined ? { breakDead } : {}),
      };
    }
    default:
      throw protocolError(`unknown control message ${JSON.stringify(String(meta.op)).slice(0, 40)}`);
  }
}

function leaseWire(v: unknown): LeaseWire {
  const m = obj(v, 'lease');
  const renewedAt = optStr(m, 'renewedAt', 64);
  return {
    disk: str(m, 'disk', 128),
    holder: str(m, 'holder', 256),
    token: int(m, 'token'),
    acquiredAt: str(m, 'acquiredAt', 64),
    ...(renewedAt !== undefined ? { renewedAt } : {}),
    expiresAt: str(m, 'expiresAt', 64),
  };
}

export function parseNodeMessage(meta: Record<string, unknown>): NodeMessage {
  switch (meta.op) {
    case 'welcome': {
      const maxObject = optInt(meta, 'maxObject');
      let stored: Array<{ stream: number } & ObjectInfoWire> | undefined;
      if (meta.stored !== undefined) {
        if (!Array.isArray(meta.stored) || meta.stored.length > MAX_STORED_ACKS)
          throw protocolError(`field "stored" must be a list of at most ${MAX_STORED_ACKS} objects`);
        stored = meta.stored.map((v) => ({ stream: int(obj(v, 'stored object'), 'stream'), ...info(v) }));
      }
      return {
        op: 'welcome',
        session: str(meta, 'session', 256),
        window: int(meta, 'window'),
        maxFrame: int(meta, 'maxFrame'),
        maxInflight: int(meta, 'maxInflight'),
        node: str(meta, 'node', 256),
        ...(maxObject !== undefined ? { maxObject } : {}),
        ...(stored ? { stored } : {}),
      };
    }
    case 'ack': {
      const credit = optInt(meta, 'credit');
      return { op: 'ack', ...(meta.info !== undefined ? { info: info(meta.info) } : {}), ...(credit !== undefined ? { credit } : {}) };
    }
    case 'error': {
      const credit = optInt(meta, 'credit');
      const details = meta.details === undefined ? undefined : obj(meta.details, 'error details');
      return {
        op: 'error',
        code: str(meta, 'code', 64),
        message: str(meta, 'message', MAX_TEXT),
        ...(meta.retryable !== undefined ? { retryable: bool(meta, 'retryable') } : {}),
        ...(details ? { details } : {}),
        ...(credit !== undefined ? { credit } : {}),
      };
    }
    case 'credit':
      return { op: 'credit', bytes: int(meta, 'bytes') };
    case 'listPage': {
      if (!Array.isArray(meta.items) || meta.items.length > 10_000) throw protocolError('listPage items must be an array of at most 10000');
      return { op: 'listPage', items: meta.items.map(info), more: bool(meta, 'more') };
    }
    case 'leaseGrant':
      return { op: 'leaseGrant', lease: leaseWire(meta.lease) };
    default:
      throw protocolError(`unknown control message ${JSON.stringify(String(meta.op)).slice(0, 40)}`);
  }
}

export function parsePutMeta(meta: Record<string, unknown>): PutMeta {
  const ifMatch = optStr(meta, 'ifMatch', MAX_TEXT);
  const total = optInt(meta, 'total');
  const at = optInt(meta, 'at');
  if ((total === undefined) !== (at === undefined)) throw protocolError('a part of a PUT carries both "total" and "at"');
  if (total !== undefined && at! >= total) throw protocolError(`a part at ${at} of an object of ${total} bytes`);
  return { key: str(meta, 'key'), ...(ifMatch !== undefined ? { ifMatch } : {}), ...(total !== undefined ? { total, at } : {}) };
}

export function parseDataMeta(meta: Record<string, unknown>): DataMeta {
  const etag = optStr(meta, 'etag', MAX_TEXT);
  return { size: int(meta, 'size'), ...(etag !== undefined ? { etag } : {}) };
}
