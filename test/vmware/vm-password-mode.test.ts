// Regression: a vCenter passwordFile that group or others may read (chmod 644) was used silently, while key files
// with such modes are refused. It is refused the same way (RNODE_BAD_SOURCE, as the VMware config's other errors),
// naming the file and the chmod to run, before anything is sent to vSphere.
import t from 'tap';
import fs from 'node:fs';
import { VmwareSession } from '../../src/source/vmware/index.js';
import { startEnv } from './harness.js';

t.test('a passwordFile readable by group or others is refused before the login', { skip: process.platform === 'win32' }, async (t) => {
  const env = await startEnv(t, [{ moref: 'vm-1', disks: [{ key: 2000, size: 1024 * 1024 }] }]);
  const file = env.config.passwordFile;
  for (const mode of [0o644, 0o640, 0o602]) {
    fs.chmodSync(file, mode);
    await t.rejects(
      VmwareSession.open(env.config),
      {
        code: 'RNODE_BAD_SOURCE',
        message: `the password file ${file} (passwordFile) is readable or writable by group or others (mode 0${mode.toString(8)}); restrict it with "chmod 600 ${file}"`,
      },
      `mode 0${mode.toString(8)} is refused`,
    );
  }
  t.notOk(env.sim.calls.includes('Login'), 'nothing was sent to vSphere');
  fs.chmodSync(file, 0o600);
  const session = await VmwareSession.open(env.config);
  await session.close();
  t.ok(env.sim.calls.includes('Login'), 'mode 0600 logs in');
});
