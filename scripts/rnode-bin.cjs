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

const bundle = path.join(__dirname, 'rnode-main.cjs');

// --debug (stack traces) and node's --enable-source-maps: the bundle is loaded as node loads any module, its frames
// mapped to the TypeScript sources, at their place in this install (node maps no code run through vm.Script).
if (process.argv.slice(2).includes('--debug') || process.sourceMapsEnabled) {
  process.setSourceMapsEnabled(true);
  require(bundle);
} else {
  runCached();
}

/** Runs the bundle compiled with its code cache; with RNODE_WRITE_CODE_CACHE=1, writes the cache at exit. */
function runCached() {
  const cacheFile = `${bundle}.cache`;
  const source = fs.readFileSync(bundle);
  // The cache file is the SHA-256 of the bundle and the cache, then the cache. V8 takes a cache as it is, if only the
  // source's length matches: a damaged one killed every run (a V8 fatal error), and one built for other source of the same
  // length ran that source's code. A cache whose digest does not match is not used (nor is a missing one: a build that
  // could not write it). node:crypto is loaded by the commands anyway.
  const DIGEST = 32;
  const digest = (data) => crypto.createHash('sha256').update(source).update(data).digest();
  let cachedData;
  try {
    const file = fs.readFileSync(cacheFile);
    const data = file.subarray(DIGEST);
    if (file.length > DIGEST && digest(data).equals(file.subarray(0, DIGEST))) cachedData = data;
  } catch {
    // No cache: V8 compiles from source.
  }
  // Node's own CommonJS wrapper. The name is the same here and where the build wrote the cache, which keeps the name it
  // was built with: a path would be the build's.
  const wrapped = `(function (exports, require, module, __filename, __dirname) {${source.toString('utf8')}\n})`;
  const script = new vm.Script(wrapped, { filename: 'dist/bin/rnode-main.cjs', cachedData });

  // The build runs a few commands with RNODE_WRITE_CODE_CACHE=1 (scripts/bundle.mjs): each writes a cache of every
  // function compiled so far, its own and those the cache it was given holds. V8 keys a cache on its flags, so these
  // runs keep V8's default flags (tuneV8 would change them).
  if (process.env.RNODE_WRITE_CODE_CACHE === '1') {
    // Each run after the first is given the cache the one before wrote: one V8 refuses here would be refused every time.
    if (fs.existsSync(cacheFile) && (!cachedData || script.cachedDataRejected)) throw new Error(`the code cache ${cacheFile} was not taken`);
    require('node:v8').setFlagsFromString = () => undefined;
    process.on('exit', () => {
      const data = script.createCachedData();
      fs.writeFileSync(`${cacheFile}.tmp`, Buffer.concat([digest(data), data]));
      fs.renameSync(`${cacheFile}.tmp`, cacheFile);
    });
  }

  const mod = { exports: {} };
  script.runInThisContext().call(mod.exports, mod.exports, createRequire(bundle), mod, bundle, __dirname);
}
