// Bundles the compiled CLI (dist/cli.js) and the codec worker thread (dist/pipeline/codec-worker.js) into
// dist/bin/: the `rnode` executable is dist/bin/rnode.js. Node 20 resolves, links and compiles each ES module of a
// graph apart: a 1 MiB replicate loaded 80 of them, ~90 ms before its first chunk. A bundle in a few files starts
// the same command 7% sooner. Run by `npm run build:ts` after tsc; dist/ keeps the modules for the library
// (dist/index.js) and for the bundle's import.meta.url paths below.
//
// - Packages stay outside (node_modules, as the library loads them), except the ESM-only p-limit and yocto-queue,
//   which are bundled: nothing else changes how a package is loaded (a bundled CommonJS module's require included).
// - Code split at the CLI's dynamic imports, so a command loads only its own part (a flat folder of chunks).
// - import.meta.url in a bundled module becomes the URL of that module's own file in dist/: the paths the modules
//   take from it (the package root, package.json, the addon) resolve as they do unbundled.
// - The codec worker is an entry of its own; RNODE_BUNDLED_WORKER tells the bundled codec-workers.ts to start it
//   (the path is taken from dist/pipeline/, where that module's import.meta.url points).
import * as esbuild from 'esbuild';
import fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dist = path.join(root, 'dist');
const out = path.join(dist, 'bin');
const BUNDLED_PACKAGES = /^(p-limit|yocto-queue)(\/|$)/;

/** Rewrites import.meta.url in each module of dist/ to its own file's URL, relative to the bundle's folder. */
const ownUrls = {
  name: 'rnode-own-urls',
  setup(build) {
    build.onResolve({ filter: /^[^./]/ }, (args) => (BUNDLED_PACKAGES.test(args.path) ? undefined : { path: args.path, external: true }));
    build.onLoad({ filter: /\.js$/ }, async (args) => {
      const contents = await fs.readFile(args.path, 'utf8');
      if (!args.path.startsWith(dist + path.sep) || !contents.includes('import.meta.url')) return { contents, loader: 'js' };
      const own = JSON.stringify(path.relative(out, args.path).split(path.sep).join('/'));
      return { contents: contents.replaceAll('import.meta.url', `new URL(${own}, import.meta.url).href`), loader: 'js' };
    });
  },
};

await fs.rm(out, { recursive: true, force: true });
await esbuild.build({
  entryPoints: { rnode: path.join(dist, 'cli.js'), 'codec-worker': path.join(dist, 'pipeline', 'codec-worker.js') },
  outdir: out,
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  chunkNames: '[name]-[hash]',
  define: { RNODE_BUNDLED_WORKER: JSON.stringify('../bin/codec-worker.js') },
  // The compiled validators (src/agent/validators.generated.cjs) require ajv's runtime: a CommonJS module bundled into
  // ES modules calls the require this gives each output file (node's, from the file's own place).
  banner: { js: "import { createRequire as __rnodeCreateRequire } from 'node:module'; const require = __rnodeCreateRequire(import.meta.url);" },
  sourcemap: 'linked',
  sourcesContent: false, // the maps point into dist/, which ships beside them
  plugins: [ownUrls],
  logLevel: 'warning',
});
await fs.chmod(path.join(out, 'rnode.js'), 0o755);
