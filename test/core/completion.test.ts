// `rnode --version` comes from package.json, and `rnode completion bash|zsh` is generated from the command
// table: valid shell, naming every command and each command's flags.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { commands } from '../../src/cli/commands.js';
import { ROOT, runCli } from '../helpers/cli.js';

const version = (JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;

t.test('--version and -v print the package version', async (t) => {
  for (const flag of ['--version', '-v']) {
    const r = await runCli([flag]);
    t.equal(r.code, 0);
    t.equal(r.stdout.trim(), version, flag);
  }
  // With --json too, stdout is one JSON document (it was the bare version string).
  const asJson = await runCli(['--version', '--json']);
  t.same(JSON.parse(asJson.stdout), { version }, '--version --json');
  const help = await runCli(['--help']);
  t.match(help.stdout, new RegExp(`^rnode ${version.replace(/\./g, '\\.')}:`), 'the help names the same version');
});

for (const shell of ['bash', 'zsh']) {
  t.test(`completion ${shell}: valid syntax, every command and its flags`, async (t) => {
    const r = await runCli(['completion', shell]);
    t.equal(r.code, 0, r.stderr);
    const check = spawnSync(shell, ['-n'], { input: r.stdout, encoding: 'utf8' });
    if (check.error) t.comment(`${shell} is not installed here: syntax not checked`);
    else t.equal(check.status, 0, `${shell} -n: ${check.stderr}`);
    for (const [name, c] of Object.entries({ ...commands, demo: { options: { workdir: {} } }, completion: { options: {} } })) {
      t.match(r.stdout, new RegExp(`\\b${name}\\b`), `names ${name}`);
      for (const flag of Object.keys(c.options)) t.match(r.stdout, `--${flag}`, `${name} --${flag}`);
    }
  });
}

t.test('completion without a known shell is a usage error', async (t) => {
  const r = await runCli(['completion', 'fish']);
  t.equal(r.code, 2);
  t.match(r.stderr, /^rnode: RNODE_USAGE: "rnode completion" needs the shell: bash or zsh/);
});

t.test('completion --help prints its usage like every command (it was a usage error)', async (t) => {
  const r = await runCli(['completion', '--help']);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /^usage: rnode completion bash\|zsh/);
});
