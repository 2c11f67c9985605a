// Flag parsing for the thin CLI: node's parseArgs, with every mistake turned into a usage error that
// names the flag and says what to pass.
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { readKeyFile, type EncryptionKey } from '../crypto/keys.js';
import { ErrorCodes, RnodeError } from '../errors.js';

export type Options = NonNullable<ParseArgsConfig['options']>;

export const COMMON: Options = {
  json: { type: 'boolean' },
  debug: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
};

/** What to pass instead of a negative number, for flags whose mistake is common enough to name. */
const NEGATIVE_HINT: Record<string, string> = { point: 'a point number from "rnode points", or "latest"' };

export function parse(command: string, argv: string[], options: Options): Record<string, string | boolean | undefined> {
  // parseArgs calls "--point -1" ambiguous (it could be a flag): say that the value is invalid, and what to pass.
  for (let i = 0; i + 1 < argv.length; i++) {
    const name = /^--([a-z-]+)$/.exec(argv[i])?.[1];
    if (name && options[name]?.type === 'string' && /^-\d/.test(argv[i + 1])) {
      // No promise of what else it takes: 0 is refused by some flags (--keep) and not by others.
      const hint = NEGATIVE_HINT[name];
      throw new RnodeError(
        ErrorCodes.USAGE,
        `--${name} ${argv[i + 1]} is not a valid value: negative numbers are not accepted` +
          `${hint ? `; pass ${hint}` : ''} (see "rnode ${command} --help")`,
      );
    }
  }
  try {
    const { values, positionals, tokens } = parseArgs({
      args: argv,
      options: { ...COMMON, ...options },
      strict: true,
      allowPositionals: true,
      tokens: true,
    });
    if (positionals.length > 0) {
      throw new RnodeError(ErrorCodes.USAGE, `unexpected argument "${positionals[0]}" for "rnode ${command}"; see "rnode ${command} --help"`);
    }
    // A flag that takes a value, given twice, kept the last one without a word: "verify --point all --point 1" checked
    // point 1 only, and a script's second --out wrote somewhere its author did not read.
    // Values are not echoed: one may hold a password (the agent's --server URL).
    const given = new Set<string>();
    for (const tok of tokens) {
      if (tok.kind !== 'option' || tok.value === undefined) continue;
      if (given.has(tok.name)) throw new RnodeError(ErrorCodes.USAGE, `--${tok.name} is given twice; pass it once (see "rnode ${command} --help")`);
      given.add(tok.name);
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

/** The flag of every command that writes or reads chunk contents. The key is only ever taken from a file. */
export const ENCRYPTION_OPTIONS: Options = { 'encryption-key-file': { type: 'string' } };
export const ENCRYPTION_USAGE = '[--encryption-key-file <f>]';

/** The key named by --encryption-key-file, or undefined when the flag is absent. */
export function encryptionKeyFrom(values: Record<string, unknown>): EncryptionKey | undefined {
  const file = str(values, 'encryption-key-file');
  if (file === undefined) return undefined;
  if (file === '') throw new RnodeError(ErrorCodes.KEY_FILE, '--encryption-key-file needs the path of a file holding the key');
  return readKeyFile(file);
}

/** "90s", "30m", "1h", "2d" or milliseconds as a bare number ("0": no grace, for tests) -> milliseconds. */
export function parseDuration(text: string, flag: string): number {
  const m = /^(\d+)(ms|s|m|h|d)?$/.exec(text.trim());
  const unit: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
  if (!m || !Number.isSafeInteger(Number(m[1]) * unit[m[2] ?? 'ms'])) {
    throw new RnodeError(ErrorCodes.USAGE, `--${flag} must be a duration such as 90s, 30m, 1h or 2d (got "${text}")`);
  }
  return Number(m[1]) * unit[m[2] ?? 'ms'];
}
