// Structured logs with pino for every long-running command (agent, serve): one event per line on stderr, as pino's
// own JSON (time, level, msg, then context such as nodeId, jobId, disk) or as a human text line rendered from it.
// Secrets never reach a line: pino's redact masks members that name secrets, and values registered with addSecret
// (a token, a resolved secret) are replaced wherever they appear in a line, in either format.
import { pino, type Logger as Pino } from 'pino';

export type Level = 'debug' | 'info' | 'warn' | 'error';
/** json: pino's own line; text: a human line rendered from it (textLine). */
export type LogFormat = 'json' | 'text';
const MASK = '***';

// Members that hold secrets, at the top of a line or up to two objects down. A secret reference
// ({secretRef: "env:X"}) names a secret without holding it and is logged as it is.
const SECRET_KEYS = [
  'token',
  'password',
  'passwd',
  'secret',
  'credentials',
  'authorization',
  'sas',
  'signature',
  'privateKey',
  'private_key',
  'accessKey',
  'access_key',
  'secretAccessKey',
  'accountKey',
];
const REDACT_PATHS = SECRET_KEYS.flatMap((k) => [k, `*.${k}`, `*.*.${k}`]);

export interface LogSink {
  write(line: string): void;
}

/** An Error as a log field: its name, message and stable code (no stack: a log line is for operators). */
function errorFields(e: unknown): unknown {
  if (!(e instanceof Error)) return e;
  const code = (e as Error & { code?: unknown }).code;
  return { name: e.name, message: e.message, ...(typeof code === 'string' ? { code } : {}) };
}

/** The JSON form of a string, without its quotes: how a value appears inside a serialized line. */
const inJson = (s: string) => JSON.stringify(s).slice(1, -1);

// Control characters a peer's text may carry (a server's error message): an escape sequence written raw recolours or
// rewrites the operator's terminal. Written as \u escapes, as JSON writes them.
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/g;
const escapeControl = (c: string) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`;

/**
 * A pino JSON line as text: `<time> [LEVEL ]<msg> key=value ...`, the level named when it is not info. Strings
 * are written as they are (newlines and other control characters escaped: one event, one line), other values as JSON.
 */
export function textLine(jsonLine: string): string {
  let e: Record<string, unknown>;
  try {
    e = JSON.parse(jsonLine) as Record<string, unknown>;
  } catch {
    return jsonLine; // not ours to reshape; it is already masked
  }
  const { time, level, msg, ...fields } = e;
  const value = (x: unknown) => (typeof x === 'string' ? x : JSON.stringify(x)).replace(/\r?\n/g, '\\n').replace(CONTROL, escapeControl);
  const head = `${String(time)} ${level !== 'info' ? `${String(level).toUpperCase()} ` : ''}${value(msg ?? '')}`;
  return `${head}${Object.entries(fields)
    .filter(([, x]) => x !== undefined)
    .map(([k, x]) => ` ${k}=${value(x)}`)
    .join('')}\n`;
}

export class Logger {
  private constructor(
    private readonly pino: Pino,
    private readonly secrets: Set<string>,
  ) {}

  static create(opts: { sink?: LogSink; level?: Level | 'silent'; format?: LogFormat; context?: Record<string, unknown> } = {}): Logger {
    const secrets = new Set<string>();
    const mask = (line: string) => {
      for (const s of secrets) if (line.includes(s)) line = line.split(s).join(MASK);
      return line;
    };
    const sink: LogSink = opts.sink ?? pino.destination({ dest: 2, sync: true });
    // Text is rendered from the masked JSON line, then masked again: unescaping JSON must not bring a secret back.
    const out: LogSink = opts.format === 'text' ? { write: (line) => sink.write(mask(textLine(line))) } : sink;
    const p = pino(
      {
        level: opts.level ?? 'info',
        base: undefined,
        timestamp: pino.stdTimeFunctions.isoTime,
        formatters: { level: (label) => ({ level: label }) },
        serializers: { err: errorFields, error: errorFields },
        redact: { paths: REDACT_PATHS, censor: MASK },
        // The last step before a line is written: registered secret values go, in whatever member they hide.
        hooks: { streamWrite: mask },
      },
      out,
    );
    return new Logger(opts.context ? p.child(opts.context) : p, secrets);
  }

  /** A logger adding fields to every line (shares the sink and the secret list). */
  child(context: Record<string, unknown>): Logger {
    return new Logger(this.pino.child(context), this.secrets);
  }

  /** Never print this value, wherever it shows up (token, resolved secret). Values under 4 characters are ignored. */
  addSecret(value: string | undefined): void {
    if (!value || value.length < 4) return;
    this.secrets.add(value);
    const escaped = inJson(value);
    if (escaped !== value) this.secrets.add(escaped);
  }

  debug(msg: string, fields?: Record<string, unknown>): void {
    this.log('debug', msg, fields);
  }
  info(msg: string, fields?: Record<string, unknown>): void {
    this.log('info', msg, fields);
  }
  warn(msg: string, fields?: Record<string, unknown>): void {
    this.log('warn', msg, fields);
  }
  error(msg: string, fields?: Record<string, unknown>): void {
    this.log('error', msg, fields);
  }

  log(level: Level, msg: string, fields: Record<string, unknown> = {}): void {
    this.pino[level](fields, msg);
  }
}

/** A logger that drops everything (library use without logs). */
export const silentLogger = (): Logger => Logger.create({ sink: { write: () => undefined }, level: 'silent' });
