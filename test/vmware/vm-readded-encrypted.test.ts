// A disk removed from an encrypted VM and added back under the same key is planned as a full read, as on a plain
// VM: its old points were listed without the key, so none were found, and only the CBT reset check (change id of
// another disk) made it read everything.
import t from 'tap';
import crypto from 'node:crypto';
import { EncryptionKey } from '../../src/crypto/keys.js';
import { startEnv } from './harness.js';
import { THREE, expectVmRestore, fill, randomData } from './vm-helpers.js';

for (const encrypted of [false, true]) {
  t.test(`a disk removed and added back is read in full (${encrypted ? 'encrypted' : 'plain'} VM)`, async (t) => {
    const env = await startEnv(t, [{ moref: 'vm-61', disks: THREE.slice(0, 2) }]);
    const encryption = encrypted ? EncryptionKey.fromBytes(crypto.randomBytes(32)) : undefined;
    fill(env, 'vm-61', 7);
    await env.run({ encryption });
    env.sim.removeDisk('vm-61', 2001);
    const r2 = await env.run({ encryption });
    t.same(
      r2.removed.map((x) => x.key),
      [2001],
    );
    env.sim.addDisk('vm-61', { key: 2001, size: THREE[1].size });
    env.sim.writeToVmDisk('vm-61', 2001, 0, randomData(256 * 1024, 8));
    const r3 = await env.run({ encryption });
    t.same(r3.added, [2001]);
    const back = r3.disks.find((d) => d.deviceKey === 2001)! as { full?: boolean; fullReason?: string };
    // Planned as a full point, not compared with the old disk's CBT (an encrypted VM found no old points).
    t.equal(back.full, true, 'a full point as planned');
    t.match(back.fullReason, /disk 2001 was added since VM point/, "with the plan's reason");
    await expectVmRestore(t, env, 'vm-61', r3.vmPoint, encryption);
  });
}
