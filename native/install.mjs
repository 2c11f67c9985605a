// The package's install script, and the source build RNODE_NATIVE_MISSING points to (`npm run install` in the
// package). A shipped prebuild for this platform needs nothing; without one the addon is built from native/ into
// native/build/Release, where src/native/index.ts looks next. npm 11.19 still runs it for a package the user did not
// list in --allow-scripts (with a warning that it will stop), --ignore-scripts never: an install must not depend
// on it. In a git checkout `npm run build` makes the prebuilds, so `npm ci` there does not build the addon twice.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const prebuild = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`, 'rnode_native.node');
if (existsSync(prebuild) || existsSync(path.join(root, '.git'))) process.exit(0);

// npm hands its own node-gyp to the scripts it runs; the headers of the running node, when they sit beside it
// (Debian's nodejs, the nodejs.org tarballs), spare node-gyp a download.
const nodeGyp = process.env.npm_config_node_gyp;
if (!nodeGyp) {
  console.error('rnode: run the source build through npm, which brings node-gyp: "npm run install" in this package');
  process.exit(1);
}
const headers = path.resolve(process.execPath, '..', '..');
const nodedir = !process.env.npm_config_nodedir && existsSync(path.join(headers, 'include', 'node', 'node_api.h')) ? [`--nodedir=${headers}`] : [];
const args = ['rebuild', '--directory', 'native', '--jobs=max', ...nodedir];
const built = spawnSync(process.execPath, [nodeGyp, ...args], { cwd: root, stdio: 'inherit' });
if (built.status !== 0) {
  console.error(
    `rnode: no prebuilt addon for ${process.platform}-${process.arch} and the source build failed (node-gyp's output is above); ` +
      'install g++, make and python3, then run "npm run install" in this package again',
  );
  process.exit(1);
}
