// What a CLI command is: its help text, its flags (node:util parseArgs options) and the function that runs it.
// A leaf of src/cli: the command modules and the table import it, it imports none of them.
import type { Options } from './args.js';

export interface Io {
  out: (line: string) => void;
  err: (line: string) => void;
}

export type Values = Record<string, string | boolean | undefined>;

export interface Command {
  summary: string;
  usage: string;
  options: Options;
  run(values: Values, io: Io): Promise<number>;
}
