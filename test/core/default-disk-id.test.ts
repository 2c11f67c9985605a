// replicate without --disk names the disk after the source file. Bug: two files of one name in different folders
// (/vms/a/disk.img, /vms/b/disk.img), or two names that differ only in characters an id cannot hold (диск.img and
// файл.img both become "img"), silently became one disk: each run an "incremental" of the other file, recover
// returned whichever ran last, and prune --keep 1 deleted the other file's only point. Now such a run is refused
// (RNODE_USAGE) and names both files; --disk settles it either way.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { defaultDiskId } from '../../src/cli/commands.js';
import { json, runCli } from '../helpers/cli.js';
import { MiB, randomData, tmpDir } from '../helpers/images.js';

t.test('a default disk id never continues the disk of another file', async (t) => {
  const dir = tmpDir(t, 'default-id');
  const store = path.join(dir, 'store');
  for (const d of ['a', 'b']) fs.mkdirSync(path.join(dir, d));
  const a = path.join(dir, 'a', 'disk.img');
  const b = path.join(dir, 'b', 'disk.img');
  fs.writeFileSync(a, randomData(MiB, 1));
  fs.writeFileSync(b, randomData(MiB, 2));
  const rep = (src: string, ...more: string[]) => runCli(['replicate', '--source', src, '--target', store, '--json', ...more], { cwd: dir });

  const first = await rep('a/disk.img');
  t.equal(first.code, 0, first.stderr);
  t.match(json(first), { disk: 'disk.img', point: 1 });
  const again = await rep(a);
  t.equal(again.code, 0, `the same file by another path spelling continues its disk: ${again.stderr}`);
  t.match(json(again), { disk: 'disk.img', point: 2, full: false });

  const other = await rep('b/disk.img');
  t.equal(other.code, 2, 'another file of the same name is refused');
  t.match(other.stderr, `RNODE_USAGE: disk disk.img (its id taken from the file's name) holds the points of ${a}, not of ${b}; pass --disk`);
  const pts = json(await runCli(['points', '--store', store, '--disk', 'disk.img', '--json']));
  t.equal(pts.points.length, 2, 'no point was added');

  const own = await rep('b/disk.img', '--disk', 'disk-b');
  t.equal(own.code, 0, `--disk gives it a disk of its own: ${own.stderr}`);
  const moved = await rep('b/disk.img', '--disk', 'disk.img');
  t.equal(moved.code, 0, `--disk with the same id continues the disk from this file: ${moved.stderr}`);
  t.match(json(moved), { disk: 'disk.img', point: 3 });

  // Names an id cannot hold: both are "img".
  const u1 = path.join(dir, 'диск.img');
  const u2 = path.join(dir, 'файл.img');
  fs.writeFileSync(u1, randomData(MiB, 3));
  fs.writeFileSync(u2, randomData(MiB, 4));
  t.match(json(await rep(u1)), { disk: 'img', point: 1 });
  const clash = await rep(u2);
  t.equal(clash.code, 2);
  t.match(clash.stderr, `disk img (its id taken from the file's name) holds the points of ${u1}, not of ${u2}`);

  const out = path.join(dir, 'out.img');
  t.equal((await runCli(['recover', '--store', store, '--disk', 'img', '--out', out])).code, 0);
  t.ok(fs.readFileSync(out).equals(fs.readFileSync(u1)), 'disk img is still the first file');
});

// Bug: the default id was cut at the first '#' or '?' (meant for a URL's query and fragment) for file paths too:
// "vm#2.img" became disk "vm", and "vm?3.img" was then refused as another file of disk "vm".
t.test("a file's default disk id keeps the whole base name, '#' and '?' too", async (t) => {
  const dir = tmpDir(t, 'default-id-hash');
  const store = path.join(dir, 'store');
  const cases: Array<[string, string]> = [
    ['we ird#name.img', 'we_ird_name.img'],
    ['vm#2.img', 'vm_2.img'],
    ['vm?3.img', 'vm_3.img'],
  ];
  for (const [i, [file, disk]] of cases.entries()) {
    fs.writeFileSync(path.join(dir, file), randomData(MiB, 10 + i));
    const r = await runCli(['replicate', '--source', file, '--target', store, '--json'], { cwd: dir });
    t.equal(r.code, 0, `${file}: ${r.stderr}`);
    t.match(json(r), { disk, point: 1, full: true }, `${file} is disk ${disk}`);
  }
  // A URL source's query and fragment are options, not part of its name.
  t.equal(defaultDiskId('nbd://127.0.0.1:10809/export1?tls=require'), 'export1');
  t.equal(defaultDiskId('http://host/images/a.img#frag'), 'a.img');
  t.equal(defaultDiskId('/images/a#b?c.img'), 'a_b_c.img');
  // A file:// URL is its decoded path's file: the same disk as the path (it was my_20vm.img, a second disk).
  t.equal(defaultDiskId('file:///images/my%20vm.img'), defaultDiskId('/images/my vm.img'));
  t.equal(defaultDiskId('file:///images/x%20y%231%3F.img'), defaultDiskId('/images/x y#1?.img'));
});

// Bug: the same file reached through a symlink (dlink.img -> d.img, or a linked image folder) was refused as
// "another file": the paths were compared as strings. They are compared with links resolved now, as written only when
// one no longer resolves; a different file is still refused.
t.test('the same file through a symlink continues its disk; another file does not', async (t) => {
  const dir = tmpDir(t, 'default-id-link');
  const store = path.join(dir, 'store');
  fs.mkdirSync(path.join(dir, 'images'));
  const img = path.join(dir, 'images', 'd.img');
  fs.writeFileSync(img, randomData(MiB, 20));
  fs.symlinkSync('d.img', path.join(dir, 'images', 'dlink.img'));
  fs.symlinkSync('images', path.join(dir, 'linked'));
  const rep = (src: string, ...more: string[]) => runCli(['replicate', '--source', src, '--target', store, '--json', ...more], { cwd: dir });

  const first = await rep('images/dlink.img', '--disk', 'd.img');
  t.equal(first.code, 0, first.stderr);
  const direct = await rep('images/d.img');
  t.equal(direct.code, 0, `the file the link points at is the same file: ${direct.stderr}`);
  t.match(json(direct), { disk: 'd.img', point: 2, full: false });
  const viaFolder = await rep('linked/d.img');
  t.equal(viaFolder.code, 0, `so is the file through a linked folder: ${viaFolder.stderr}`);
  t.match(json(viaFolder), { disk: 'd.img', point: 3, full: false });

  // Another file of the same name, reached through a link or not, is refused.
  fs.mkdirSync(path.join(dir, 'other'));
  const other = path.join(dir, 'other', 'd.img');
  fs.writeFileSync(other, randomData(MiB, 21));
  const refused = await rep('other/d.img');
  t.equal(refused.code, 2);
  t.match(
    refused.stderr,
    `RNODE_USAGE: disk d.img (its id taken from the file's name) holds the points of ${path.join(dir, 'linked', 'd.img')}, not of ${other}`,
  );
  fs.mkdirSync(path.join(dir, 'l2'));
  fs.symlinkSync(other, path.join(dir, 'l2', 'd.img'));
  t.equal((await rep('l2/d.img')).code, 2, 'a link to another file is refused');

  // The path the latest point recorded no longer resolves: compared as written, so refused.
  t.equal((await rep('images/d.img')).code, 0);
  fs.renameSync(img, path.join(dir, 'images', 'moved.img'));
  fs.symlinkSync('moved.img', path.join(dir, 'images', 'd2.img'));
  t.equal((await rep('images/d2.img', '--disk', 'd.img')).code, 0, '--disk settles it');
  fs.rmSync(path.join(dir, 'images', 'd2.img'));
  fs.symlinkSync('moved.img', path.join(dir, 'images', 'd.img'));
  const gone = await rep('images/d.img');
  t.equal(gone.code, 2, `the recorded link is gone: ${gone.stderr}`);
  const pts = json(await runCli(['points', '--store', store, '--disk', 'd.img', '--json']));
  t.equal(pts.points.length, 5);
});
