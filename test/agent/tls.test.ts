// The agent's --ca path: the reference Management Server serves wss:// with a self-signed certificate made by the
// openssl CLI; `rnode agent --ca <cert>` registers over it. Without a CA, or with another certificate as CA, the
// agent refuses the server, logs an error that says to pass --ca (code RNODE_AGENT_TLS, every attempt), keeps
// retrying, never registers, and the token is sent to nobody and appears in no log line. A --ca file that holds
// no certificate is a usage error (exit 2), since TLS would otherwise silently ignore it.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { selfSignedCert } from '../../src/testing.js';
import { haveOpenssl } from '../helpers/tls.js';
import { parsedLogs, spawnAgent, startMs, tmpDir, TOKEN, waitUntil } from './helpers.js';

t.test(
  'wss:// with --ca registers; no CA or a wrong one is refused clearly, the token never sent',
  { skip: !haveOpenssl && 'openssl CLI missing (.ci/run installs it)' },
  async (t) => {
    const dir = tmpDir(t, 'agent-tls');
    const { cert, key, certFile } = selfSignedCert(dir);
    const other = selfSignedCert(dir, 'other');
    const ms = await startMs(t, { tls: { cert, key } });
    t.match(ms.url, /^wss:\/\/127\.0\.0\.1:\d+$/);

    const good = spawnAgent(t, ms, dir, 'tls-good', ['--ca', certFile]);
    const node = await ms.waitFor(() => [...ms.nodes.values()].find((n) => n.name === 'tls-good' && n.connected), 30_000, 'registration over wss://');
    t.equal(node.hello.token, TOKEN, 'registered with its token, over TLS');
    t.notOk(
      good.stderr.some((l) => l.includes(TOKEN)),
      'the token is in no log line',
    );

    for (const [name, extra] of [
      ['tls-no-ca', []],
      ['tls-wrong-ca', ['--ca', other.certFile]],
    ] as const) {
      const a = spawnAgent(t, ms, dir, name, [...extra]);
      const refusals = await waitUntil(
        () => {
          const r = parsedLogs(a.stderr).filter((e) => e.code === 'RNODE_AGENT_TLS');
          return r.length >= 2 && r;
        },
        30_000,
        `${name}: two refused attempts`,
      );
      t.match(
        refusals[0],
        {
          level: 'error',
          msg: /TLS to the server failed; pass --ca <pem>.*the token was not sent/,
          tlsError: /SELF_SIGNED|UNABLE_TO_VERIFY/,
          server: ms.url,
        },
        `${name}: an error that says what to pass`,
      );
      t.equal(refusals[0].ca, extra.length ? 'given' : 'none');
      t.notOk(
        [...ms.nodes.values()].some((n) => n.name === name),
        `${name}: never registered`,
      );
      t.equal(a.child.exitCode, null, `${name}: keeps running and retrying`);
      t.notOk(
        a.stderr.some((l) => l.includes(TOKEN)),
        `${name}: the token is in no log line`,
      );
    }
    t.equal(ms.nodes.size, 1, 'the server only ever saw the trusting node');

    const junk = path.join(dir, 'junk.pem');
    fs.writeFileSync(junk, 'not a certificate\n');
    const bad = spawnAgent(t, ms, dir, 'tls-junk-ca', ['--ca', junk]);
    t.match(await bad.exited, { code: 2 }, 'a --ca file without a certificate: exit 2');
    t.match(bad.stderr.join('\n'), /RNODE_USAGE: --ca .*junk\.pem holds no PEM certificate/);
  },
);
