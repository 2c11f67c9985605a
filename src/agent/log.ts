// Structured logs: one JSON object per line on stderr (time, level, msg, then context such as nodeId, jobId,
// disk). Secrets never reach a line: keys that name secrets are masked, and registered secret values are
// replaced wherever they appear in a string.

export type Level = 'debug' | 'info' | 'warn' | 'error';
const ORDER: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };
const SECRET_KEY = /(token|secret|password|passwd|credential|authorization|sas|signature|private_?key|access_?key)/i;
const MASK = '***';

export interface LogSink { write(line: string): void }

export class Logger {
  private constructor(private readonly sink: LogSink, private readonly min: Level, private readonly context: Record<string, unknown>,
    private readonly secrets: Set<string>) {}

  static create(opts: { sink?: LogSink; level?: Level; context?: Record<string, unknown> } = {}): Logger {
    const sink = opts.sink ?? { write: (l: string) => { process.stderr.write(l); } };
    return new Logger(sink, opts.level ?? 'info', opts.context ?? {}, new Set());
  }

  /** A logger adding fields to every line (shares the sink and the secret list). */
  child(context: Record<string, unknown>): Logger {
    return new Logger(this.sink, this.min, { ...this.context, ...context }, this.secrets);
  }

  /** Never print this value, wherever it shows up (token, resolved secret). Values under 4 characters are ignored. */
  addSecret(value: string | undefined): void {
    if (value && value.length >= 4) this.secrets.add(value);
  }

  debug(msg: string, fields?: Record<string, unknown>): void { this.log('debug', msg, fields); }
  info(msg: string, fields?: Record<string, unknown>): void { this.log('info', msg, fields); }
  warn(msg: string, fields?: Record<string, unknown>): void { this.log('warn', msg, fields); }
  error(msg: string, fields?: Record<string, unknown>): void { this.log('error', msg, fields); }

  log(level: Level, msg: string, fields: Record<string, unknown> = {}): void {
    if (ORDER[level] < ORDER[this.min]) return;
    const entry = { time: new Date().toISOString(), level, msg, ...this.context, ...fields };
    this.sink.write(JSON.stringify(this.redact(entry, 0)) + '\n');
  }

  redact(value: unknown, depth: number): unknown {
    if (typeof value === 'string') {
      let s = value;
      for (const secret of this.secrets) if (s.includes(secret)) s = s.split(secret).join(MASK);
      return s;
    }
    if (value instanceof Error) {
      const e = value as Error & { code?: string };
      return this.redact({ name: e.name, message: e.message, ...(e.code ? { code: e.code } : {}) }, depth + 1);
    }
    if (typeof value !== 'object' || value === null) return typeof value === 'bigint' ? String(value) : value;
    if (depth > 6) return '[deep]';
    if (Array.isArray(value)) return value.map((v) => this.redact(v, depth + 1));
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) {
      // A secret reference ({secretRef: "env:X"}) names a secret without holding it: it may be logged.
      out[k] = SECRET_KEY.test(k) && k !== 'secretRef' && (typeof v === 'string' || typeof v === 'number') ? MASK : this.redact(v, depth + 1);
    }
    return out;
  }
}

/** A logger that drops everything (library use without logs). */
export const silentLogger = (): Logger => Logger.create({ sink: { write: () => undefined } });
