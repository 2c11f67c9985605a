// Flag parsing for the thin CLI: node's parseArgs, with every mistake turned into a usage error that
// names the flag and says what to pass.
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { ErrorCodes, RnodeError } from '../errors.js';

export type Options = NonNullable<ParseArgsConfig['options']>;

export const COMMON: Options = {
  json: { type: 'boolean' },
  debug: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
};

export function parse(command: string, argv: string[], options: Options): Record<string, string | boolean | undefined> {
  try {
    const { values, positionals } = parseArgs({ args: argv, options: { ...COMMON, ...options }, strict: true, allowPositionals: true });
    if (positionals.length > 0) {
      throw new RnodeError(ErrorCodes.USAGE, `unexpected argument "${positionals[0]}" for "rnode ${command}"; see "rnode ${command} --help"`);
    }
    return values as Record<string, string | boolean | undefined>;
  } catch (err) {
    if (err instanceof RnodeError) throw err;
    const msg = (err as Error).message.split('\n')[0].replace(/\. To specify a positional argument.*$/, '');
    throw new RnodeError(ErrorCodes.USAGE, `${msg.replace(/\.$/, '')}; see "rnode ${command} --help"`);
  }
}

export function required(values: Record<string, unknown>, command: string, ...names: string[]): void {
  for (const n of names) {
    if (values[n] === undefined || values[n] === '') {
      throw new RnodeError(ErrorCodes.USAGE, `"rnode ${command}" needs --${n}; see "rnode ${command} --help"`);
    }
  }
}

export function str(values: Record<string, unknown>, name: string): string | undefined {
  const v = values[name];
  return typeof v === 'string' ? v : undefined;
}
