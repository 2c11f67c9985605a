// A process whose current folder was removed (a shell or a service started in a folder deleted since): Node starts
// no worker thread then. Bugs: every replicate failed as RNODE_SOURCE_IO ("reading source ... failed: uv_cwd; check
// the device"), and the codec workers were replaced as fast as they failed, a core busy for good in an agent.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { DIST_INDEX, json, runCli, runScript } from '../helpers/cli.js';
import { MiB, randomData, tmpDir } from '../helpers/images.js';

t.test('the CLI started in a removed folder says so: RNODE_PATH_UNUSABLE, exit 2; --version still works', async (t) => {
  const dir = tmpDir(t, 'cwd-gone');
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, randomData(MiB, 1));
  const gone = path.join(dir, 'gone');
  fs.mkdirSync(gone);
  // bash enters the folder, removes it, then execs node there.
  const inRemovedFolder = { wrap: ['bash', '-c', 'cd "$0" && rmdir "$0" && exec "$@"', gone] };
  const r = await runCli(['replicate', '--source', img, '--target', path.join(dir, 'store'), '--disk', 'd', '--json'], inRemovedFolder);
  t.equal(r.code, 2, r.stderr);
  t.match(json(r).error, { code: 'RNODE_PATH_UNUSABLE', message: /current folder was removed .*start rnode from a folder that exists/ });
  fs.mkdirSync(gone);
  const v = await runCli(['--version'], inRemovedFolder);
  t.equal(v.code, 0, '--version needs no folder');
});

t.test('a job whose process lost its folder meanwhile fails with why, and leaves the process idle', async (t) => {
  const dir = tmpDir(t, 'cwd-gone-lib');
  const r = await runScript(`
    import fs from 'node:fs';
    const { openStore, openSource, replicate } = await import(${JSON.stringify(DIST_INDEX)});
    const dir = ${JSON.stringify(dir)};
    fs.writeFileSync(dir + '/disk.img', Buffer.alloc(4 << 20, 7));
    fs.mkdirSync(dir + '/gone');
    process.chdir(dir + '/gone');
    fs.rmdirSync(dir + '/gone');
    const store = await openStore(dir + '/store');
    const source = await openSource(dir + '/disk.img');
    let error;
    await replicate({ store, source, disk: 'd' }).catch((e) => (error = { code: e.code, message: e.message }));
    const before = process.cpuUsage();
    await new Promise((r) => setTimeout(r, 1500));
    const used = process.cpuUsage(before);
    console.log(JSON.stringify({ error, cpuMs: (used.user + used.system) / 1000 }));
    process.exit(0);
  `);
  t.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout.trim().split('\n').pop()!);
  t.match(out.error, { code: 'RNODE_PATH_UNUSABLE', message: /current folder was removed/ }, 'the job says why');
  t.ok(out.cpuMs < 300, `no worker respawned in a loop afterwards: ${out.cpuMs} ms of CPU in 1.5 s`);
});
