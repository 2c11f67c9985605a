// Regression: `rnode check` held one object per index entry and per pack trailer entry (ChunkLocation, BlobEntry,
// and `pack:offset` strings for the good and the indexed ones): ~1.2 KB a chunk, 430 MB for a store of 300,000
// chunks where a replicate loads the same index in 130 MB. Its peak RSS must grow by a few hundred bytes a chunk.
import t from 'tap';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { CLI, ensureBuilt, plainNode } from '../helpers/cli.js';
import { fsStore, tmpDir } from '../helpers/images.js';
import { Domain } from '../../src/repository/domain.js';
import { encodeIndex } from '../../src/repository/index-file.js';
import { r2 } from '../../src/repository/names.js';
import { PackBuilder, newObjectId } from '../../src/repository/pack.js';

/** A store of `chunks` tiny blobs, 4,096 a pack, each pack with its index object (as a replicate's checkpoint). */
async function storeOf(dir: string, chunks: number): Promise<string> {
  const store = fsStore(dir);
  const domain = await Domain.openOrCreate(store, undefined);
  for (let left = chunks; left > 0; left -= 4096) {
    const pb = new PackBuilder(domain.name, 1 << 20);
    for (let i = 0; i < Math.min(4096, left); i++) pb.add(randomBytes(16), { id: randomBytes(32), plainLength: 16, codec: 0 });
    await store.put(r2.pack(domain.name, pb.id), pb.finish());
    const id = newObjectId();
    await store.put(
      r2.index(domain.name, id),
      encodeIndex(
        domain,
        id,
        pb.entries.map((entry) => ({ packId: pb.id, entry })),
      ),
    );
  }
  return dir;
}

/** Runs `rnode check --json` on a store: its result and its peak RSS (VmHWM, polled until it exits). */
async function checkWithPeak(storeDir: string): Promise<{ code: number | null; result: any; peak: number }> {
  const child = spawn(...plainNode([CLI, 'check', '--store', storeDir, '--json']), { stdio: ['ignore', 'pipe', 'inherit'] });
  let peak = 0;
  const poll = setInterval(() => {
    try {
      const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${child.pid}/status`, 'utf8'));
      if (m) peak = Math.max(peak, Number(m[1]) * 1024);
    } catch {
      /* exited */
    }
  }, 10);
  let out = '';
  child.stdout!.on('data', (b) => (out += b));
  const code = await new Promise<number | null>((r) => child.on('exit', r));
  clearInterval(poll);
  return { code, result: code === 0 ? JSON.parse(out) : out, peak };
}

t.test(
  'check holds the index and the trailers compactly: a few hundred bytes a chunk',
  { skip: process.platform !== 'linux' && 'VmHWM is Linux' },
  async (t) => {
    ensureBuilt();
    const dir = tmpDir(t, 'check-memory');
    const small = 20_000;
    const large = 220_000;
    const runs = [];
    for (const chunks of [small, large]) {
      const r = await checkWithPeak(await storeOf(path.join(dir, String(chunks)), chunks));
      t.equal(r.code, 0, `check of ${chunks} chunks`);
      t.equal(r.result.ok, true);
      t.match(r.result.domains[0], { indexEntries: chunks, danglingIndexEntries: 0, unindexedBlobs: 0, packs: Math.ceil(chunks / 4096) });
      runs.push(r.peak);
    }
    const perChunk = (runs[1] - runs[0]) / (large - small);
    // Index columns 74 B, their index bodies 80 B while sorted, trailer records 65 B: ~220 B, and the GC's slack.
    t.ok(perChunk < 500, `peak RSS grows ${Math.round(perChunk)} B a chunk (${Math.round(runs[0] / 1e6)} -> ${Math.round(runs[1] / 1e6)} MB)`);
  },
);
