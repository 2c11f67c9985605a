// The systemd units in deploy/ are valid as systemd reads them (systemd-analyze verify: no unknown key, no value
// it would ignore) and stay hardened (offline security exposure low, no capabilities, secrets as credentials).
import t from 'tap';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { ROOT } from '../helpers/cli.js';
import { tmpDir } from '../helpers/images.js';

const UNITS = ['rnode-agent.service', 'rnode-serve.service'];
const haveAnalyze = spawnSync('systemd-analyze', ['--version']).status === 0;

t.test('systemd-analyze verify accepts the units without a warning', { skip: !haveAnalyze && 'systemd-analyze is not installed' }, async (t) => {
  const dir = tmpDir(t, 'units');
  // verify checks that ExecStart's binary exists: point it at a stand-in for the installed rnode.
  const bin = path.join(dir, 'rnode');
  fs.writeFileSync(bin, '#!/bin/sh\n', { mode: 0o755 });
  for (const unit of UNITS) {
    const text = fs.readFileSync(path.join(ROOT, 'deploy', 'systemd', unit), 'utf8');
    t.match(text, /ExecStart=\/usr\/local\/bin\/rnode /, `${unit} runs the npm -g binary`);
    fs.writeFileSync(path.join(dir, unit), text.replaceAll('/usr/local/bin/rnode', bin));
  }
  const r = spawnSync('systemd-analyze', ['verify', '--man=no', ...UNITS.map((u) => path.join(dir, u))], { encoding: 'utf8' });
  t.equal(r.status, 0, 'exit 0');
  // verify exits 0 on unknown keys and bad values (it only says it ignores them): any message is a failure.
  t.equal(r.stderr.trim(), '', 'no warnings');

  for (const unit of UNITS) {
    const s = spawnSync('systemd-analyze', ['security', '--offline=true', '--no-pager', path.join(dir, unit)], { encoding: 'utf8' });
    const m = /Overall exposure level for \S+: ([\d.]+)/.exec(s.stdout);
    if (!m) {
      t.comment(`systemd-analyze security --offline is not supported here: ${s.stderr.trim()}`);
      continue;
    }
    t.ok(Number(m[1]) <= 3, `${unit} exposure ${m[1]} (at most 3.0)`);
  }
});

t.test('the units run as the dedicated user, with no capabilities and secrets as credentials', async (t) => {
  for (const unit of UNITS) {
    const text = fs.readFileSync(path.join(ROOT, 'deploy', 'systemd', unit), 'utf8');
    for (const line of ['User=rnode', 'ProtectSystem=strict', 'NoNewPrivileges=yes', 'PrivateTmp=yes', 'CapabilityBoundingSet=\n']) {
      t.ok(text.includes(line), `${unit}: ${line.trim()}`);
    }
    t.match(text, /LoadCredential=token:/, `${unit}: the token is a credential`);
    t.match(text, /--token-file %d\/token/, `${unit}: read from the credentials directory`);
    t.notMatch(text, /^Environment=.*(TOKEN|KEY|SECRET|PASSWORD)/im, `${unit}: no secret in the environment`);
  }
  const sysusers = fs.readFileSync(path.join(ROOT, 'deploy', 'systemd', 'rnode.sysusers.conf'), 'utf8');
  t.match(sysusers, /^u rnode /m, 'sysusers creates the user');
});
