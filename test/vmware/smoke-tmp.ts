import { buildDummyVddk } from './build-dummy.js';
import { initVddk, connectVddk, exitVddk } from '../../src/vddk/index.js';
import fs from 'node:fs';
const dir = fs.mkdtempSync('/tmp/vsmoke-');
buildDummyVddk(dir + '/vddk');
const img = dir + '/a.img'; const fd = fs.openSync(img, 'w'); fs.ftruncateSync(fd, 8<<20); fs.writeSync(fd, Buffer.alloc(65536, 7), 0, 65536, 1<<20); fs.closeSync(fd);
fs.writeFileSync(dir + '/cfg', `dummy.log=${dir}/log\ndummy.user=root\ndummy.password=pw\ndummy.disk=snapshot-1|[ds] vm/a.vmdk|${img}\ndummy.failRead=3:13\n`);
console.log(await initVddk({ libdir: dir + '/vddk', configFile: dir + '/cfg' }));
const c = await connectVddk({ vmMoref: 'vm-1', server: 'h', user: 'root', password: Buffer.from('pw'), snapshotMoref: 'snapshot-1', transports: 'nbdssl:nbd' });
const d = await c.open('[ds] vm/a.vmdk', { maxReadBytes: 1 << 20 });
console.log(d.info, await d.queryAllocated());
const b = Buffer.alloc(3 << 20);
console.log(await d.read(b, 0, b.length), b[1<<20]);
try { await d.read(b, 0, 4096); } catch (e) { console.log('err', e); }
await c.disconnect(); await exitVddk();
console.log(fs.readFileSync(dir + '/log', 'utf8'));
