// `npm run bench`: the end-to-end benchmark runner. Settings come from the environment (see below); each section
// measures rnode and its baselines in this same run; the table goes to stdout, then one JSON line.
//
//   RNODE_BENCH_SIZE=1.5GiB         the mixed image (per MiB 1/3 random, 1/3 text, 1/3 zero)
//   RNODE_BENCH_SPARSE_SIZE=16GiB   the sparse image of the memory section
//   RNODE_BENCH_DIR=<os.tmpdir()>   a fresh rnode-bench-* directory is made inside it (store and baselines too)
//   RNODE_BENCH_ONLY=a,b            run only these sections (names: see bench/sections/index.ts)
//   RNODE_BENCH_REPEAT=3            runs per contender, interleaved; figures are medians, peak RSS the max
//   RNODE_BENCH_KEEP=1              keep the work directory
//   RNODE_BENCH_JSON=<file>         also write the JSON result there (e.g. bench-results.json), to compare runs
//   RNODE_BENCH_MARKDOWN=<file>     also write the tables as Markdown there (what docs/benchmarks.md carries)
// Exit: 0 when every section ran (targets missed or not), 1 when one failed, 2 for bad settings.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fsTypeOf, findOnPath, makeContext, toolVersion, type SectionContext, type Tools } from './lib/context.js';
import { findGnuTime, killChildren } from './lib/measure.js';
import { renderMarkdown, type BenchJson } from './lib/markdown.js';
import { human, renderSection, tally, type Row, type SectionResult } from './lib/report.js';
import { readSettings, SettingsError, type Settings } from './lib/settings.js';
import { sections } from './sections/index.js';

const MiB = 1024 * 1024;
const SPACE_MARGIN = 512 * MiB;
const started = Date.now();

const out = (line = '') => process.stdout.write(`${line}\n`);
const log = (message: string) => process.stderr.write(`[bench +${((Date.now() - started) / 1000).toFixed(1)}s] ${message}\n`);

async function main(): Promise<number> {
  let settings: Settings;
  try {
    settings = readSettings();
  } catch (err) {
    if (err instanceof SettingsError) {
      process.stderr.write(`rnode bench: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
  const unknown = settings.only.filter((n) => !sections.some((s) => s.name === n));
  if (unknown.length) {
    process.stderr.write(
      `rnode bench: RNODE_BENCH_ONLY names unknown section(s) ${unknown.join(', ')}; ` + `known: ${sections.map((s) => s.name).join(', ')}\n`,
    );
    return 2;
  }
  const selected = settings.only.length ? sections.filter((s) => settings.only.includes(s.name)) : sections;

  // Sections clean up after themselves, so the peak is the shared image plus the largest section.
  await fsp.mkdir(settings.parentDir, { recursive: true });
  const need = settings.size + Math.max(0, ...selected.map((s) => s.spaceNeeded(settings))) + SPACE_MARGIN;
  const st = await fsp.statfs(settings.parentDir);
  const free = st.bavail * st.bsize;
  if (free < need) {
    process.stderr.write(
      `rnode bench: not enough free space in ${settings.parentDir}: the run needs about ${human(need)} ` +
        `(image + store + restore + lz4 output, about 4x RNODE_BENCH_SIZE=${human(settings.size)}), ${human(free)} is free; ` +
        'point RNODE_BENCH_DIR at a roomier filesystem or lower RNODE_BENCH_SIZE\n',
    );
    return 1;
  }

  const workdir = await fsp.mkdtemp(path.join(settings.parentDir, 'rnode-bench-'));
  // Every rnode run keeps its change hashes (src/jobs/replicate/change-hashes.ts) here, not in the user's cache:
  // each run of the bench starts without them, and they go with the work directory.
  process.env.RNODE_CACHE_DIR = path.join(workdir, 'rnode-cache');
  const cleanup = () => {
    if (settings.keep) log(`kept ${workdir} (RNODE_BENCH_KEEP=1)`);
    else fs.rmSync(workdir, { recursive: true, force: true });
  };
  const onSignal = (signal: NodeJS.Signals) => {
    log(`${signal}: stopping`);
    killChildren();
    cleanup();
    process.exit(signal === 'SIGINT' ? 130 : 143);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  // A reader that went away (`npm run bench | head`) would otherwise kill us before the cleanup.
  process.stdout.on('error', () => {
    killChildren();
    cleanup();
    process.exit(1);
  });

  try {
    const tools: Tools = {
      lz4: findOnPath('lz4'),
      restic: findOnPath('restic'),
      xxhsum: findOnPath('xxhsum'),
      gnuTime: await findGnuTime(workdir),
      fincore: findOnPath('fincore'),
    };
    const fsType = await fsTypeOf(workdir);
    const ctx = makeContext(settings, workdir, fsType, tools, log);
    const versions = {
      lz4: tools.lz4 ? await toolVersion(tools.lz4, ['--version']) : 'not installed',
      restic: tools.restic ? await toolVersion(tools.restic, ['version']) : 'not installed',
      xxhsum: tools.xxhsum ? await toolVersion(tools.xxhsum, ['--version']) : 'not installed',
    };
    const cpu = os.cpus();
    const load0 = os.loadavg();

    out(
      `rnode bench: node ${process.version}, ${cpu.length} CPUs (${cpu[0]?.model.trim() ?? 'unknown'}), ${human(os.totalmem())} RAM, ` +
        `load average ${load0.map((x) => x.toFixed(2)).join(' ')} at start`,
    );
    out(
      `settings: RNODE_BENCH_SIZE=${human(settings.size)} RNODE_BENCH_SPARSE_SIZE=${human(settings.sparseSize)} ` +
        `RNODE_BENCH_REPEAT=${settings.repeat} sections=${selected.map((s) => s.name).join(',')}`,
    );
    out(`work dir: ${workdir} (${fsType}, ${human(free)} free)`);
    out(`baselines: lz4 ${versions.lz4}; restic ${versions.restic}; xxhsum ${versions.xxhsum}`);
    out(
      `peak RSS: rnode children via a preloaded probe (VmHWM at exit); tools via ${tools.gnuTime ? 'GNU time (%M)' : '(GNU time missing: not measured)'}`,
    );
    out();

    const results: SectionResult[] = [];
    for (const section of selected) {
      const dir = path.join(workdir, section.name);
      await fsp.mkdir(dir, { recursive: true });
      const result: SectionResult = { name: section.name, title: section.title, rows: [], preface: [] };
      const sctx: SectionContext = { ...ctx, dir, say: (line) => result.preface.push(line) };
      log(`section ${section.name}`);
      try {
        result.rows = await section.run(sctx);
      } catch (err) {
        const e = err as Error & { rows?: Row[] };
        result.error = e?.message ?? String(err);
        result.rows = e?.rows ?? [];
        log(`section ${section.name} failed: ${result.error}`);
      }
      results.push(result);
      for (const l of renderSection(result)) out(l);
      out();
      if (!settings.keep) await fsp.rm(dir, { recursive: true, force: true });
    }

    const t = tally(results);
    const load1 = os.loadavg();
    out(
      `targets: ${t.pass} PASS, ${t.miss} MISS, ${t.skip} SKIP; load average ${load1.map((x) => x.toFixed(2)).join(' ')} at end; ` +
        `${((Date.now() - started) / 1000).toFixed(0)} s in all`,
    );
    const result = {
      bench: 'rnode',
      startedAt: new Date(started).toISOString(),
      node: process.version,
      cpus: cpu.length,
      loadAverage: { start: load0, end: load1 },
      settings: { size: settings.size, sparseSize: settings.sparseSize, sparseData: settings.sparseData, repeat: settings.repeat },
      workdir,
      fsType,
      tools: versions,
      sections: results,
      targets: t,
    };
    const json = JSON.stringify(result);
    out(json);
    if (settings.markdownOut) {
      await fsp.writeFile(settings.markdownOut, renderMarkdown(result satisfies BenchJson));
      log(`wrote ${settings.markdownOut}`);
    }
    if (settings.jsonOut) {
      await fsp.writeFile(settings.jsonOut, `${json}\n`);
      log(`wrote ${settings.jsonOut}`);
    }
    return results.some((r) => r.error) ? 1 : 0;
  } finally {
    cleanup();
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`rnode bench: ${(err as Error)?.stack ?? String(err)}\n`);
    process.exitCode = 1;
  },
);
