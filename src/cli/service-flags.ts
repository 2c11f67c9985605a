// The flags the long-running commands (agent, serve, export) share: where to serve /metrics, /healthz and /readyz,
// and the format and level of their log lines. One parser each, so all take the same values and give the same errors.
import type { Level, LogFormat } from '../log.js';
import { parseListen } from '../metrics/listen.js';
import { ErrorCodes, RnodeError } from '../errors.js';
import { str, type Options } from './args.js';
import type { Values } from './command.js';

/** The log flags of every long-running command. */
export const LOG_OPTIONS: Options = { 'log-format': { type: 'string' }, 'log-level': { type: 'string' } };
export const LOG_USAGE = '[--log-level debug|info|warn|error] [--log-format json|pretty]';

/** The log flags and --metrics (the commands that serve /metrics: agent, serve). */
export const SERVICE_OPTIONS: Options = { metrics: { type: 'string' }, ...LOG_OPTIONS };
export const SERVICE_USAGE = `[--metrics <host:port>] ${LOG_USAGE}`;

/** --metrics host:port (port 0: any free port), or undefined when the flag is absent. */
export function metricsListen(v: Values): { host: string; port: number } | undefined {
  const text = str(v, 'metrics');
  if (text === undefined) return undefined;
  try {
    return parseListen(text);
  } catch {
    throw new RnodeError(ErrorCodes.USAGE, `--metrics must be host:port, e.g. 0.0.0.0:9464 (got "${text}")`);
  }
}

/** --log-format, or `fallback` when absent: json (pino's lines) or pretty (one human line per event; "text" too). */
export function logFormat(v: Values, fallback: LogFormat): LogFormat {
  const text = str(v, 'log-format');
  if (text === undefined) return fallback;
  if (text === 'json' || text === 'text') return text;
  if (text === 'pretty') return 'text';
  throw new RnodeError(ErrorCodes.USAGE, `--log-format must be json or pretty (got "${text}")`);
}

const LEVELS: readonly Level[] = ['debug', 'info', 'warn', 'error'];

/** --log-level: the least severe level written (info when absent). */
export function logLevel(v: Values): Level {
  const text = str(v, 'log-level') ?? 'info';
  if (!(LEVELS as readonly string[]).includes(text)) {
    throw new RnodeError(ErrorCodes.USAGE, `--log-level must be debug, info, warn or error (got "${text}")`);
  }
  return text as Level;
}
