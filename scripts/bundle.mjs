// Bundles the compiled CLI (dist/cli.js) and the codec worker thread (dist/pipeline/codec-worker.js) into dist/bin/:
// the `rnode` executable is dist/bin/rnode.js (scripts/rnode-bin.cjs), which runs the CLI's bundle with a V8 code
// cache written here. Node 20 resolves, links and compiles each ES module of a graph apart and keeps no compiled
// code between runs: a replicate loaded 38 modules of a split ES bundle, and compiled each from source. One CommonJS
// file compiled from its cache starts an unchanged 1.5 GiB incremental ~10% sooner. Run by `npm run build:ts` after
// tsc; dist/ keeps the modules for the library (dist/index.js) and for the bundle's import.meta.url paths below.
//
// - Packages stay outside (node_modules, as the library loads them), except the ESM-only p-limit and yocto-queue,
//   which are bundled. In the CommonJS bundle a module reached by a dynamic import only (a command's job, a store's
//   SDK) is still loaded and run when the import runs, so a command loads only its own packages.
// - import.meta.url in a bundled module becomes the URL of that module's own file in dist/: the paths the modules
//   take from it (the package root, package.json, the addon) resolve as they do unbundled. The bundle's own URL comes
//   from its __filename, so it also runs as node loads any module (the executable does so for --debug: source maps).
// - The codec worker is an ES module bundle of its own (dist/bin/codec-worker.mjs); RNODE_BUNDLED_WORKER tells the
//   bundled codec-workers.ts to start it (the path is taken from dist/pipeline/, where that module's import.meta.url
//   points).
// - dist/bin/package.json makes dist/bin/rnode.js CommonJS: node starts a CommonJS main without its ES module loader.
// - The code cache: a few commands on a small generated disk (warmCodeCache below), each adding what it compiled.
import * as esbuild from 'esbuild';
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dist = path.join(root, 'dist');
const out = path.join(dist, 'bin');
const BUNDLED_PACKAGES = /^(p-limit|yocto-queue)(\/|$)/;

/**
 * Rewrites import.meta.url in each module of dist/ to its own file's URL, relative to the bundle's folder: from the
 * bundle's own URL (__rnodeBundleUrl, set first thing in the CommonJS bundle), or the ES bundle's
 * import.meta.url. import.meta.resolve is used only when the modules run from their TypeScript sources
 * (codec-workers.ts): in the CommonJS bundle it becomes require.resolve, which esbuild does not warn about.
 */
function ownUrls(bundleUrl) {
  return {
    name: 'rnode-own-urls',
    setup(build) {
      build.onResolve({ filter: /^[^./]/ }, (args) => (BUNDLED_PACKAGES.test(args.path) ? undefined : { path: args.path, external: true }));
      build.onLoad({ filter: /\.js$/ }, async (args) => {
        let contents = await fs.readFile(args.path, 'utf8');
        if (!args.path.startsWith(dist + path.sep) || !contents.includes('import.meta.')) return { contents, loader: 'js' };
        const own = JSON.stringify(path.relative(out, args.path).split(path.sep).join('/'));
        contents = contents.replaceAll('import.meta.url', `new URL(${own}, ${bundleUrl}).href`);
        if (bundleUrl !== 'import.meta.url') contents = contents.replaceAll('import.meta.resolve(', 'require.resolve(');
        return { contents, loader: 'js' };
      });
    },
  };
}

const common = {
  bundle: true,
  platform: 'node',
  target: 'node20',
  define: { RNODE_BUNDLED_WORKER: JSON.stringify('../bin/codec-worker.mjs') },
  sourcemap: 'linked',
  sourcesContent: false, // the maps point into dist/, which ships beside them
  logLevel: 'warning',
};

await fs.rm(out, { recursive: true, force: true });
await Promise.all([
  esbuild.build({
    ...common,
    entryPoints: [path.join(dist, 'cli.js')],
    outfile: path.join(out, 'rnode-main.cjs'),
    format: 'cjs',
    // Dynamic imports of bundled modules become calls; those of packages become require (vm.Script, which runs the
    // bundle, has no loader for import()).
    supported: { 'dynamic-import': false },
    // The bundle's own URL, from node's __filename or the executable's (scripts/rnode-bin.cjs): the bundled modules
    // resolve their import.meta.url from it. "use strict" first: the modules are ES modules, strict throughout.
    banner: { js: '"use strict"; var __rnodeBundleUrl = require("node:url").pathToFileURL(__filename).href;' },
    plugins: [ownUrls('__rnodeBundleUrl')],
  }),
  esbuild.build({
    ...common,
    entryPoints: [path.join(dist, 'pipeline', 'codec-worker.js')],
    outfile: path.join(out, 'codec-worker.mjs'),
    format: 'esm',
    // The compiled validators (src/agent/validators.generated.cjs) require ajv's runtime: a CommonJS module bundled into
    // an ES module calls the require this gives it (node's, from the file's own place).
    banner: { js: "import { createRequire as __rnodeCreateRequire } from 'node:module'; const require = __rnodeCreateRequire(import.meta.url);" },
    plugins: [ownUrls('import.meta.url')],
  }),
]);
await asciiOnly(path.join(out, 'rnode-main.cjs'));
await fs.writeFile(path.join(out, 'package.json'), '{ "type": "commonjs" }\n');
await fs.copyFile(path.join(root, 'scripts', 'rnode-bin.cjs'), path.join(out, 'rnode.js'));
await fs.chmod(path.join(out, 'rnode.js'), 0o755);
await warmCodeCache();

/**
 * esbuild writes strings and regular expressions in ASCII, but keeps some comments as they are: one non-ASCII character
 * makes node decode the whole bundle into a two-byte string, several times slower to read in. Those are written as
 * \u escapes (in a comment, only text).
 */
async function asciiOnly(file) {
  const text = await fs.readFile(file, 'utf8');
  // eslint-disable-next-line no-control-regex
  const ascii = text.replace(/[^\x00-\x7f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  if (ascii !== text) await fs.writeFile(file, ascii);
}

/**
 * Writes dist/bin/rnode-main.cjs.cache: runs the commands whose start matters most (a full and an incremental
 * replicate, a recover, a listing) on a 6 MiB disk in a temporary folder, each adding the functions it compiled. A
 * build without the native addon writes none (the executable then compiles from source) and says so.
 */
async function warmCodeCache() {
  const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'rnode-code-cache-'));
  const disk = path.join(tmp, 'disk.img');
  const store = path.join(tmp, 'store');
  const text = Buffer.from('rnode warms its code cache on a disk of random, text-like and zero chunks\n'.repeat(28_000)).subarray(0, 2 << 20);
  const rnode = (...args) =>
    execFileSync(process.execPath, [path.join(out, 'rnode.js'), ...args], {
      env: { ...process.env, RNODE_WRITE_CODE_CACHE: '1' },
      stdio: 'pipe',
    });
  try {
    await fs.writeFile(disk, Buffer.concat([crypto.randomBytes(2 << 20), text, Buffer.alloc(2 << 20)]));
    const replicate = ['replicate', '--source', disk, '--target', store, '--disk', 'd', '--cache-dir', path.join(tmp, 'cache')];
    rnode(...replicate);
    const fd = await fs.open(disk, 'r+');
    await fd.write(crypto.randomBytes(4096), 0, 4096, 5 << 20);
    await fd.close();
    rnode(...replicate);
    rnode('recover', '--store', store, '--disk', 'd', '--out', path.join(tmp, 'out.img'));
    rnode('points', '--store', store, '--disk', 'd');
  } catch (err) {
    await fs.rm(path.join(out, 'rnode-main.cjs.cache'), { force: true });
    console.warn(`bundle: no code cache written (the CLI starts ~50 ms slower): ${String(err.stderr ?? err.message).trim()}`);
  } finally {
    await fs.rm(tmp, { recursive: true, force: true });
  }
}
