// Regression: "RNODE_VDDK_LOAD: dlopen: /nonexistent/lib64/libvixDiskLib.so: cannot open shared object file" said
// what failed, not what to do. The error now says it: fix "libdir" when there is no library there, set
// LD_LIBRARY_PATH when one VDDK needs is missing, check the library when it is something else.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { initVddk } from '../../src/source/vmware/vddk.js';

t.test('a VDDK that cannot be loaded: the error says what to fix', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rnode-vddkload-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));

  await t.rejects(initVddk({ libdir: '/nonexistent' }), {
    code: 'RNODE_VDDK_LOAD',
    message:
      /dlopen: .*\/nonexistent\/lib64\/libvixDiskLib\.so: cannot open shared object file.*; there is no VDDK library there: set "libdir" in the VMware config .*lib64\/libvixDiskLib\.so$/,
  });

  // A library VDDK needs (its own OpenSSL...) is not on the search path.
  const libdir = path.join(dir, 'vddk');
  const lib64 = path.join(libdir, 'lib64');
  fs.mkdirSync(lib64, { recursive: true });
  fs.writeFileSync(path.join(dir, 'dep.c'), 'int rnode_dep(void) { return 1; }\n');
  fs.writeFileSync(path.join(dir, 'main.c'), 'int rnode_dep(void);\nint rnode_main(void) { return rnode_dep(); }\n');
  execFileSync('gcc', ['-shared', '-fPIC', '-o', path.join(dir, 'librnodedep.so'), path.join(dir, 'dep.c')]);
  execFileSync('gcc', ['-shared', '-fPIC', '-o', path.join(lib64, 'libvixDiskLib.so'), path.join(dir, 'main.c'), `-L${dir}`, '-lrnodedep']);
  fs.rmSync(path.join(dir, 'librnodedep.so'));
  await t.rejects(initVddk({ libdir }), {
    code: 'RNODE_VDDK_LOAD',
    message: new RegExp(
      `librnodedep\\.so: cannot open shared object file.*; a library it needs was not found: start rnode with LD_LIBRARY_PATH=${lib64}`,
    ),
  });

  // Not a shared library at all.
  fs.writeFileSync(path.join(lib64, 'libvixDiskLib.so'), 'not ELF\n');
  await t.rejects(initVddk({ libdir }), {
    code: 'RNODE_VDDK_LOAD',
    message: /; check that it is VDDK's libvixDiskLib\.so for this platform, and that "libdir" in the VMware config is the VDDK install directory$/,
  });
});
