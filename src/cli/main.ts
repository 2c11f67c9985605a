// rnode's entry: pick the command, run it, map errors to one line and an exit code
// (0 success, 1 operational failure, 2 usage error, 130/143 stopped by SIGINT/SIGTERM). Stacks only with --debug.
import { coded, cwdGoneError, ErrorCodes, RnodeError, oneLine } from '../errors.js';
import { VERSION } from '../version.js';
import type { Command, Io } from './command.js';
import type { CompletionTable } from './completion.js';
import { reportStopsAsJson, signalExitCode } from './signals.js';
import { failureLine } from './format.js';

/** What `rnode completion` completes: the command table plus the commands main handles itself. */
async function completionTable(commands: Record<string, Command>): Promise<CompletionTable> {
  const { DEMO_OPTIONS } = await import('./demo.js');
  return {
    ...Object.fromEntries(Object.entries(commands).map(([n, c]) => [n, c.options])),
    demo: DEMO_OPTIONS,
    completion: {},
    help: {},
    version: {},
  };
}

function help(io: Io, commands: Record<string, Command>, demoSummary: string, json: boolean): void {
  // With --json, as every command's output: one JSON document (a caller that adds --json to all it runs got text).
  if (json) {
    const list = Object.fromEntries(Object.entries(commands).map(([name, c]) => [name, c.summary]));
    io.out(JSON.stringify({ version: VERSION, commands: { ...list, demo: demoSummary, completion: 'print a bash or zsh completion script' } }));
    return;
  }
  io.out(`rnode ${VERSION}: the data-plane node of a disaster-recovery platform`);
  io.out('');
  io.out('usage: rnode <command> [flags]      (no command: run the built-in demo job)');
  io.out('');
  for (const [name, c] of Object.entries(commands)) io.out(`  ${name.padEnd(10)} ${c.summary}`);
  io.out(`  ${'demo'.padEnd(10)} ${demoSummary}`);
  io.out(`  ${'completion'.padEnd(10)} print a bash or zsh completion script: source <(rnode completion bash)`);
  io.out('');
  io.out('Every command takes --json (machine-readable output), --debug (stack traces) and --help. rnode --version prints the release.');
}

export async function main(argv: string[], io: Io = { out: (l) => console.log(l), err: (l) => console.error(l) }): Promise<number> {
  const debug = argv.includes('--debug');
  const json = argv.includes('--json');
  reportStopsAsJson(json);
  try {
    const [name, ...rest] = argv;
    if (name === '--version' || name === '-v' || name === 'version') {
      io.out(json ? JSON.stringify({ version: VERSION }) : VERSION);
      return 0;
    }
    if (!cwdExists()) throw cwdGoneError();
    if (name === undefined || name === 'demo') return await (await import('./demo.js')).runDemo(rest, io);
    // The command table loads only here: `rnode --version` reads no command module, nor what they import (the
    // store layer, node:crypto, node:http).
    const { commands, parse } = await import('./commands.js');
    if (name === '--help' || name === '-h' || name === 'help') {
      help(io, commands, (await import('./demo.js')).DEMO_SUMMARY, json);
      return 0;
    }
    if (name === 'completion') {
      if (rest[0] === '--help' || rest[0] === '-h') {
        io.out('usage: rnode completion bash|zsh');
        io.out('  print a bash or zsh completion script: source <(rnode completion bash)');
        return 0;
      }
      const { completionScript } = await import('./completion.js');
      io.out(completionScript(rest[0], await completionTable(commands)));
      return 0;
    }
    const cmd = commands[name];
    if (!cmd) throw new RnodeError(ErrorCodes.USAGE, `unknown command "${name}"; run "rnode --help" for the list`);
    const values = parse(name, rest, cmd.options);
    if (values.help) {
      if (json) io.out(JSON.stringify({ command: name, usage: cmd.usage.split('\n').map((l) => l.trim()), summary: cmd.summary }));
      else {
        io.out(`usage: ${cmd.usage}`);
        io.out(`  ${cmd.summary}`);
      }
      return 0;
    }
    return await cmd.run(values, io);
  } catch (err) {
    return report(err, io, debug, json);
  }
}

function cwdExists(): boolean {
  try {
    process.cwd();
    return true;
  } catch {
    return false;
  }
}

function report(failure: unknown, io: Io, debug: boolean, json: boolean): number {
  const err = coded(failure);
  if (err instanceof RnodeError) {
    if (json) io.out(JSON.stringify({ error: { code: err.code, message: err.message, ...err.details } }));
    io.err(failureLine(err.code, err.message)); // one line, whatever a library said
    if (debug && err.stack) io.err(err.stack);
    // A job stopped by SIGTERM/SIGINT (signals.ts) exits like the shell reports a signal: 128 + its number.
    if (typeof err.details.signal === 'string') return signalExitCode(err.details.signal);
    return err.isUsage ? 2 : 1;
  }
  const e = err as Error;
  const message = `${oneLine(e?.message ?? String(err))}; this is a bug, please report it with --debug output`;
  // A caller parsing --json gets its one document for a bug too, not an empty stdout.
  if (json) io.out(JSON.stringify({ error: { code: ErrorCodes.INTERNAL, message } }));
  io.err(failureLine(ErrorCodes.INTERNAL, message));
  if (debug && e?.stack) io.err(e.stack);
  return 1;
}
