// The key hierarchy and key files: every accepted form (raw, hex, base64, trimmed) gives the same key; anything
// else, and a file group or others can read, is RNODE_KEY_FILE (exit 2, one line) without the key in it; the key id
// is derived (HKDF, one-way) and an EncryptionKey never prints or serialises its key material.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { inspect } from 'node:util';
import { EncryptionKey, parseKeyMaterial, readKeyFile } from '../../src/crypto/keys.js';
import { ErrorCodes, RnodeError } from '../../src/errors.js';
import { lines, runCli } from '../helpers/cli.js';
import { tmpDir } from '../helpers/images.js';

const MASTER = crypto.createHash('sha256').update('rnode-test-master-key').digest();

function writeKey(dir: string, name: string, content: string | Buffer, mode = 0o600): string {
  const f = path.join(dir, name);
  fs.writeFileSync(f, content, { mode });
  fs.chmodSync(f, mode);
  return f;
}

t.test('raw, hex and base64 key files give one key; the key id is a one-way fingerprint', async (t) => {
  const dir = tmpDir(t, 'keys');
  const forms: Record<string, string | Buffer> = {
    raw: MASTER,
    hex: MASTER.toString('hex'),
    'HEX with newline': `${MASTER.toString('hex').toUpperCase()}\n`,
    base64: `  ${MASTER.toString('base64')}\r\n`,
    'base64 unpadded': MASTER.toString('base64').replace(/=+$/, ''),
    base64url: MASTER.toString('base64url'),
  };
  const ids = new Set<string>();
  for (const [name, content] of Object.entries(forms)) ids.add(readKeyFile(writeKey(dir, name.replace(/ /g, '_'), content)).keyId);
  t.equal(ids.size, 1, 'every form is the same key');
  const key = EncryptionKey.fromBytes(MASTER);
  t.equal([...ids][0], key.keyId);
  t.match(key.keyId, /^[0-9a-f]{32}$/);
  t.not(key.keyId, EncryptionKey.fromBytes(Buffer.alloc(32, 1)).keyId, 'another key, another id');
  const expected = Buffer.from(crypto.hkdfSync('sha256', MASTER, 'rnode key hierarchy v1', 'rnode key id v1', 16)).toString('hex');
  t.equal(key.keyId, expected, 'the key id is HKDF-SHA256 output, not key bytes');
  const { cipherKey, digestKey } = key.subkeys();
  t.equal(cipherKey.length, 32);
  t.notOk(cipherKey.equals(digestKey) || cipherKey.equals(MASTER) || digestKey.equals(MASTER), 'independent subkeys, none the master key');

  const shown = [
    inspect(key),
    String(key),
    JSON.stringify(key),
    JSON.stringify({ nested: { key } }),
    inspect({ key }, { depth: 5, showHidden: true }),
  ];
  for (const s of shown) {
    for (const secret of [MASTER, cipherKey, digestKey]) {
      for (const enc of ['hex', 'base64'] as const) t.notOk(s.includes(secret.toString(enc)), `"${s.slice(0, 60)}" holds no key material (${enc})`);
    }
    t.ok(s.includes(key.keyId) || s.includes('EncryptionKey'), 'shows the key id');
  }
});

t.test('what is not a key is refused with one clear line naming the file, never its content', async (t) => {
  const dir = tmpDir(t, 'keys-bad');
  const bad: Record<string, string | Buffer> = {
    empty: '',
    'short raw': MASTER.subarray(0, 31),
    'long raw': Buffer.concat([MASTER, MASTER.subarray(0, 1)]),
    '63 hex': MASTER.toString('hex').slice(1),
    'hex with a space': `${MASTER.toString('hex').slice(0, 32)} ${MASTER.toString('hex').slice(32)}`,
    'base64 of 31 bytes': MASTER.subarray(0, 31).toString('base64'),
    passphrase: 'correct horse battery staple!!\n',
  };
  for (const [name, content] of Object.entries(bad)) {
    const f = writeKey(dir, name.replace(/ /g, '_'), content);
    t.throws(() => readKeyFile(f), { code: ErrorCodes.KEY_FILE, message: new RegExp(`${f}.*256-bit key`) }, name);
    t.equal(parseKeyMaterial(Buffer.from(content)), undefined, `${name}: not key material`);
  }
  t.throws(() => readKeyFile(path.join(dir, 'missing')), { code: ErrorCodes.KEY_FILE, message: /cannot open it \(ENOENT\)/ });
  t.throws(() => readKeyFile(dir), { code: ErrorCodes.KEY_FILE, message: /not a regular file/ });
  t.throws(() => readKeyFile(writeKey(dir, 'huge', Buffer.alloc(10_000, 0x41))), { code: ErrorCodes.KEY_FILE, message: /10000 bytes/ });
  for (const mode of [0o644, 0o640, 0o604, 0o620, 0o660]) {
    const f = writeKey(dir, `mode-${mode.toString(8)}`, MASTER.toString('hex'), mode);
    t.throws(
      () => readKeyFile(f),
      { code: ErrorCodes.KEY_FILE, message: new RegExp(`mode 0${mode.toString(8)}.*chmod 600`) },
      `mode ${mode.toString(8)} refused`,
    );
  }
  t.equal(readKeyFile(writeKey(dir, 'owner-only', MASTER.toString('hex'), 0o400)).keyId, EncryptionKey.fromBytes(MASTER).keyId, 'mode 0400 is fine');
  // Bug: a world-readable file that is no key (`--encryption-key-file /etc/passwd`) was told to "chmod 600" it, which
  // breaks a system file and hides the real mistake. What the file holds is checked first.
  for (const [name, content] of [
    ['passwd-like', 'root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n'],
    ['too big', Buffer.alloc(10_000, 0x41)],
  ] as const) {
    const f = writeKey(dir, `loose-${name}`, content, 0o644);
    const e = (() => {
      try {
        readKeyFile(f);
      } catch (e) {
        return e as RnodeError;
      }
    })();
    t.equal(e?.code, ErrorCodes.KEY_FILE, `${name}, mode 0644: RNODE_KEY_FILE`);
    t.match(e?.message, name === 'too big' ? /10000 bytes; a key file holds/ : /does not hold a 256-bit key/, `${name}: named as no key`);
    t.notMatch(e?.message, /chmod/, `${name}: no advice to chmod a file that is no key`);
  }
  const err = (() => {
    try {
      readKeyFile(writeKey(dir, 'x', 'not a key'));
    } catch (e) {
      return e;
    }
  })();
  t.ok(err instanceof RnodeError && err.isUsage, 'a key file mistake is a usage error (exit 2)');
});

t.test('the CLI: --encryption-key-file mistakes exit 2 with one line, and nothing of the key is printed', async (t) => {
  const dir = tmpDir(t, 'keys-cli');
  const img = path.join(dir, 'd.img');
  fs.writeFileSync(img, Buffer.alloc(64 * 1024, 1));
  const store = path.join(dir, 'store');
  const loose = writeKey(dir, 'loose.key', MASTER.toString('hex'), 0o644);
  const short = writeKey(dir, 'short.key', MASTER.toString('hex').slice(2));
  for (const [cmd, args] of [
    ['replicate', ['--source', img, '--target', store, '--disk', 'd']],
    ['recover', ['--store', store, '--disk', 'd', '--out', path.join(dir, 'out.img')]],
    ['verify', ['--store', store, '--disk', 'd']],
  ] as const) {
    for (const [what, file, re] of [
      ['readable by others', loose, /RNODE_KEY_FILE: --encryption-key-file .*loose\.key: is readable .*chmod 600/],
      ['not a key', short, /RNODE_KEY_FILE: .*short\.key does not hold a 256-bit key/],
      ['not a key, readable by others', '/etc/passwd', /RNODE_KEY_FILE: --encryption-key-file \/etc\/passwd does not hold a 256-bit key/],
      ['empty path', '', /RNODE_KEY_FILE/],
    ] as const) {
      const r = await runCli([cmd, ...args, '--encryption-key-file', file]);
      t.equal(r.code, 2, `${cmd}, ${what}: exit 2`);
      t.equal(lines(r.stderr).length, 1, `${cmd}, ${what}: one line`);
      t.match(r.stderr, re);
      t.notOk(r.stderr.includes(MASTER.toString('hex').slice(2, 20)), 'no key material in the message');
    }
  }
  t.notOk(fs.existsSync(store), 'nothing was written');
});

// A secret typed where its file's path goes ("$(cat key)") was printed back in the error when it was in a form the
// check did not know: unpadded base64 and base64url keys (which key files accept), and tokens of any form.
t.test('a key or token given as the path of its file is not printed back, in any form a secret takes', async (t) => {
  const dir = tmpDir(t, 'secret-as-path');
  const img = path.join(dir, 'd.img');
  fs.writeFileSync(img, Buffer.alloc(64 * 1024, 1));
  const store = path.join(dir, 'store');
  const b64 = MASTER.toString('base64');
  for (const key of [MASTER.toString('hex'), b64, b64.replace(/=+$/, ''), MASTER.toString('base64url')]) {
    const r = await runCli(['replicate', '--source', img, '--target', store, '--disk', 'd', '--encryption-key-file', key]);
    t.equal(r.code, 2, r.stderr);
    t.match(
      r.stderr,
      /RNODE_KEY_FILE: --encryption-key-file takes the path of a file holding the key, and was given what looks like the key itself \(not shown\)/,
    );
    t.notOk(r.stderr.includes(key.slice(4, 30)), `${key.length} characters: not in the message`);
  }
  const token = crypto.randomBytes(24).toString('hex');
  const slashy = `${crypto.randomBytes(30).toString('base64').replace(/=*$/, '')}/x=`; // standard base64 has '/'
  for (const tok of [token, slashy]) {
    for (const args of [
      ['replicate', '--source', img, '--target', 'ws://127.0.0.1:1', '--disk', 'd', '--token-file', tok],
      ['serve', '--listen', '127.0.0.1:0', '--store', store, '--token-file', tok],
      ['agent', '--server', 'ws://127.0.0.1:1', '--token-file', tok],
    ]) {
      const r = await runCli(args);
      t.equal(r.code, 2, `${args[0]}: ${r.stderr}`);
      t.match(r.stderr, /RNODE_USAGE: .*looks like the token itself.*not shown/, args[0]);
      t.notOk(r.stderr.includes(tok.slice(4, 30)), `${args[0]}: the token is not in the message`);
    }
  }
  // A path stays named: it is what to fix.
  const missing = path.join(dir, 'node.token');
  const r = await runCli(['serve', '--listen', '127.0.0.1:0', '--store', store, '--token-file', missing]);
  t.equal(r.code, 2);
  t.ok(r.stderr.includes(missing), r.stderr);
});
