#!/usr/bin/env node
// The `rnode` executable (copied to dist/bin/rnode.js by scripts/bundle.mjs). It runs the CLI's bundle, one CommonJS
// file (rnode-main.cjs), compiled with the V8 code cache the build wrote for it (rnode-main.cjs.cache): Node 20 has
// no compile cache for modules, and compiling the CLI's code from source was about a tenth of an incremental
// replicate's wall time. A cache this node's V8 refuses (another node version) only costs that compile again.
// No V8 flags on the line above: any flag there makes V8 refuse node's code cache for its built-in modules in every
// isolate of the process. The flags rnode wants are set at run time (src/v8-tuning.ts, from cli/one-job.ts).
'use strict';
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const vm = require('node:vm');
const { createRequire } = require('node:module');
const { pathToFileURL } = require('node:url');

const bundle = path.join(__dirname, 'rnode-main.cjs');
const cacheFile = `${bundle}.cache`;
// The cache file is the SHA-256 of the cache, then the cache. V8 takes a damaged cache as it is and dies on it (a fatal
// error, on every run): a cache whose digest does not match is not used (nor is a missing one: a build that could not
// write it). node:crypto is loaded by the commands anyway.
const DIGEST = 32;
const sha256 = (data) => crypto.createHash('sha256').update(data).digest();
let cachedData;
try {
  const file = fs.readFileSync(cacheFile);
  const data = file.subarray(DIGEST);
  if (file.length > DIGEST && sha256(data).equals(file.subarray(0, DIGEST))) cachedData = data;
} catch {
  // No cache: V8 compiles from source.
}
// Node's own CommonJS wrapper, plus the bundle's own URL: the bundled modules resolve their import.meta.url from it.
const wrapped = `(function (exports, require, module, __filename, __dirname, __rnodeBundleUrl) {${fs.readFileSync(bundle, 'utf8')}\n})`;
const script = new vm.Script(wrapped, { filename: bundle, cachedData });

// The build runs a few commands with RNODE_WRITE_CODE_CACHE=1 (scripts/bundle.mjs): each writes a cache of every
// function compiled so far, its own and those the cache it was given holds. V8 keys a cache on its flags, so these
// runs keep V8's default flags (tuneV8 would change them).
if (process.env.RNODE_WRITE_CODE_CACHE === '1') {
  // Each run after the first is given the cache the one before wrote: one V8 refuses here would be refused every time.
  if (fs.existsSync(cacheFile) && (!cachedData || script.cachedDataRejected)) throw new Error(`the code cache ${cacheFile} was not taken`);
  require('node:v8').setFlagsFromString = () => undefined;
  process.on('exit', () => {
    const data = script.createCachedData();
    fs.writeFileSync(`${cacheFile}.tmp`, Buffer.concat([sha256(data), data]));
    fs.renameSync(`${cacheFile}.tmp`, cacheFile);
  });
}

const mod = { exports: {} };
script.runInThisContext().call(mod.exports, mod.exports, createRequire(bundle), mod, bundle, __dirname, pathToFileURL(bundle).href);
