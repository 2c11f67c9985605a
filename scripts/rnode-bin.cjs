#!/usr/bin/env node
// The `rnode` executable (copied to dist/bin/rnode.js by scripts/bundle.mjs). It runs the CLI's bundle, one CommonJS
// file (rnode-main.cjs), compiled with the V8 code cache the build wrote for it (rnode-main.cjs.cache): Node 20 has
// no compile cache for modules, and compiling the CLI's code from source was about a tenth of an incremental
// replicate's wall time. A cache this node's V8 refuses (another node version) only costs that compile again.
// No V8 flags on the line above: any flag there makes V8 refuse node's code cache for its built-in modules in every
// isolate of the process. The flags rnode wants are set at run time (src/v8-tuning.ts, from cli/one-job.ts).
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const vm = require('node:vm');
const { createRequire } = require('node:module');
const { pathToFileURL } = require('node:url');

const bundle = path.join(__dirname, 'rnode-main.cjs');
const cacheFile = `${bundle}.cache`;
let cachedData;
try {
  cachedData = fs.readFileSync(cacheFile);
} catch {
  // No cache (a build that could not write one): V8 compiles from source.
}
// Node's own CommonJS wrapper, plus the bundle's own URL: the bundled modules resolve their import.meta.url from it.
const wrapped = `(function (exports, require, module, __filename, __dirname, __rnodeBundleUrl) {${fs.readFileSync(bundle, 'utf8')}\n})`;
const script = new vm.Script(wrapped, { filename: bundle, cachedData });

// The build runs a few commands with RNODE_WRITE_CODE_CACHE=1 (scripts/bundle.mjs): each writes a cache of every
// function compiled so far, its own and those the cache it was given holds. V8 keys a cache on its flags, so these
// runs keep V8's default flags (tuneV8 would change them).
if (process.env.RNODE_WRITE_CODE_CACHE === '1') {
  // Each run after the first is given the cache the one before wrote: one V8 refuses here would be refused every time.
  if (cachedData && script.cachedDataRejected) throw new Error(`V8 refused the code cache ${cacheFile} it was given`);
  require('node:v8').setFlagsFromString = () => undefined;
  process.on('exit', () => {
    fs.writeFileSync(`${cacheFile}.tmp`, script.createCachedData());
    fs.renameSync(`${cacheFile}.tmp`, cacheFile);
  });
}

const mod = { exports: {} };
script.runInThisContext().call(mod.exports, mod.exports, createRequire(bundle), mod, bundle, __dirname, pathToFileURL(bundle).href);
