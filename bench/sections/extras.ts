// Sections that wrap benchmarks living beside the code they measure: the VMware path (bench/vmware.ts,
// which drives the vSphere simulator and stand-in VDDK from test/ and so runs under the TS loader), the
// agent's 1/2/3-node runs (bench/agent.ts), and the cost of chunk encryption.
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import type { AgentBenchResult } from '../agent.js';
import type { WsBenchResult } from '../ws.js';
import type { Section } from '../lib/context.js';
import { fmt, median, type Row } from '../lib/report.js';

const execFileP = promisify(execFile);
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

/**
 * The ws row's ceilings if the node spent only what a warm Node process spends taking in the same bytes over bare TCP
 * (bench/lib/tcp-floor.ts), read as `ws` reads and into one reused buffer.
 */
function tcpFloorNote(f: NonNullable<WsBenchResult['cpu']['tcpFloor']>, localMbPerSec: number): string {
  const one = (x: typeof f.stream) =>
    `${(x.receiver.user + x.receiver.sys).toFixed(2)} s, ${x.faults.toFixed(0)} page faults, ceiling ${(x.ceilingMbPerSec / localMbPerSec).toFixed(2)}x of local`;
  return `a warm node that only took in the bytes sent over bare TCP: read by Node's socket stream (as ws reads) ${one(f.stream)}; into one reused buffer ${one(f.reused)}`;
}

export const vmware: Section = {
  name: 'vmware',
  title: 'VMware path: incremental through vSphere CBT + VDDK (simulator, stand-in VDDK) against a raw scan of the same change',
  spaceNeeded: () => 512 * 1024 * 1024,
  async run(ctx) {
    const loader = path.join(root, 'node_modules/@tapjs/typescript/dist/esm/import.mjs');
    const { stdout } = await execFileP(process.execPath, [`--import=${pathToFileURL(loader).href}`, path.join(root, 'bench/vmware.ts'), '--json'], {
      cwd: root,
      maxBuffer: 16 << 20,
      timeout: 600_000,
    });
    const line = stdout.split('\n').find((l) => l.startsWith('RESULT '));
    if (!line) throw new Error('the VMware bench printed no result');
    const r = JSON.parse(line.slice(7));
    ctx.say(`disk ${(r.diskBytes / 2 ** 20).toFixed(0)} MiB, ${(r.changedBytes / 2 ** 20).toFixed(2)} MiB changed in scattered 4 KiB writes`);
    const rows: Row[] = [
      {
        name: 'incremental bytes read, CBT+VDDK',
        value: r.vddk.bytesRead / 1e6,
        unit: 'MB',
        baseline: { name: 'raw scan', value: r.raw.bytesRead / 1e6, unit: 'MB' },
        ratio: r.vddk.bytesRead / Math.max(1, r.raw.bytesRead),
        note: `${((100 * r.vddk.bytesRead) / r.diskBytes).toFixed(1)}% of the disk; the raw scan reads every allocated chunk`,
      },
      {
        name: 'incremental time, CBT+VDDK',
        value: r.vddk.seconds,
        unit: 's',
        baseline: { name: 'raw scan', value: r.raw.seconds, unit: 's' },
        ratio: r.vddk.seconds / Math.max(1e-9, r.raw.seconds),
        note: `the whole run incl. login, snapshot and its removal: ${r.vddk.runSeconds.toFixed(2)} s`,
      },
      {
        name: '3-disk VM full point, disks in parallel',
        value: r.vm.parallelSeconds,
        unit: 's',
        baseline: { name: 'one after another', value: r.vm.sequentialSeconds, unit: 's' },
        ratio: r.vm.parallelSeconds / Math.max(1e-9, r.vm.sequentialSeconds),
        note: `${r.vm.readLatencyUs} us per VDDK Read in the stand-in`,
      },
      {
        name: '3-disk VM incremental, bytes VDDK read',
        value: r.vm.incremental.vddkBytes / 1e6,
        unit: 'MB',
        baseline: { name: 'CBT changed', value: r.vm.incremental.cbtChangedBytes / 1e6, unit: 'MB' },
        ratio: r.vm.incremental.vddkBytes / Math.max(1, r.vm.incremental.cbtChangedBytes),
        note: 'whole chunks around 4 KiB changes',
      },
    ];
    return rows;
  },
};

export const encryption: Section = {
  name: 'encryption',
  title: 'full replicate (rnode CLI) with --encryption-key-file (AES-256-GCM on the codec workers) against the same without',
  spaceNeeded: (s) => s.size,
  async run(ctx) {
    const img = await ctx.mixedImage();
    const key = path.join(ctx.dir, 'bench.key');
    // A throwaway key, only ever in this file (mode 0600, as rnode requires).
    await fsp.writeFile(key, crypto.randomBytes(32).toString('hex'), { mode: 0o600 });
    const rates: Record<'plain' | 'encrypted', number[]> = { plain: [], encrypted: [] };
    ctx.say(
      `image: ${(ctx.settings.size / 2 ** 20).toFixed(0)} MiB mixed; ${ctx.settings.repeat} run(s) each, interleaved; MB/s of disk size, wall time incl. process start`,
    );
    for (let i = 0; i < ctx.settings.repeat; i++) {
      for (const mode of ['plain', 'encrypted'] as const) {
        const store = path.join(ctx.dir, `store-${mode}`);
        await fsp.rm(store, { recursive: true, force: true });
        ctx.log(`round ${i + 1}/${ctx.settings.repeat}: replicate (${mode})`);
        await ctx.settle(img);
        const r = await ctx.rnode<{ diskSize: number }>([
          'replicate',
          '--source',
          img,
          '--target',
          store,
          '--disk',
          'bench',
          ...(mode === 'encrypted' ? ['--encryption-key-file', key] : []),
        ]);
        rates[mode].push(r.result.diskSize / 1e6 / r.seconds);
      }
    }
    const enc = median(rates.encrypted);
    const plain = median(rates.plain);
    return [
      {
        name: 'full replicate, encrypted',
        value: enc,
        unit: 'MB/s',
        baseline: { name: 'unencrypted, same run', value: plain, unit: 'MB/s' },
        ratio: enc / plain,
        note: `runs: encrypted ${rates.encrypted.map((x) => x.toFixed(0)).join(', ')}; plain ${rates.plain.map((x) => x.toFixed(0)).join(', ')} MB/s`,
      },
    ];
  },
};

export const agent: Section = {
  name: 'agent',
  title: 'agent: aggregate throughput of 1, 2 and 3 node processes on one store (2 cores: overhead, not scale)',
  spaceNeeded: () => 2 * 1024 * 1024 * 1024,
  async run(ctx) {
    const { benchAgent } = await import(pathToFileURL(path.join(root, 'dist/bench/agent.js')).href);
    const r: AgentBenchResult = await benchAgent({ log: (l: string) => ctx.log(l) });
    ctx.say(r.note);
    const rows: Row[] = r.rows.map((row) => ({
      name: `${row.nodes} node${row.nodes > 1 ? 's' : ''}, ${row.jobs} jobs`,
      value: row.mbPerSecond,
      unit: 'MB/s',
      baseline: { name: 'library, disks one after another', value: r.baselineMbPerSecond, unit: 'MB/s' },
      ratio: row.ratioToBaseline,
    }));
    // An agent node's memory with its job slots busy: every row's nodes ran 2 slots through the 6 jobs.
    const peaks = r.rows.map((row) => row.peakRssBytes).filter((x): x is number => x !== undefined);
    if (peaks.length) {
      const peak = Math.max(...peaks) / 1e6;
      rows.push({
        name: 'peak RSS of an agent node, 2 job slots busy',
        value: peak,
        unit: 'MB',
        target: { text: '< 200 MB', pass: peak < 200 },
        note: `the largest peak RSS of any node process in the rows above, over its whole run (per row: ${r.rows.map((row) => fmt((row.peakRssBytes ?? NaN) / 1e6, 'MB')).join(', ')})`,
      });
    }
    return rows;
  },
};

export const ws: Section = {
  name: 'ws',
  title: 'peer streaming: full replicate over ws:// and wss:// on 127.0.0.1 to a receiving node with a local store, and the throttle',
  spaceNeeded: () => 2 * 1024 * 1024 * 1024,
  async run(ctx) {
    const { benchWs, WARM_UP_BYTES } = (await import(pathToFileURL(path.join(root, 'dist/bench/ws.js')).href)) as typeof import('../ws.js');
    const { generateSampleDisk } = await import(pathToFileURL(path.join(root, 'dist/testing.js')).href);
    const image = path.join(ctx.dir, 'ws-image.img');
    const size = Math.min(ctx.settings.size, 512 * 1024 * 1024);
    await generateSampleDisk(image, { size, seed: 21 });
    await ctx.settle(image);
    ctx.say(`image ${(size / 2 ** 20).toFixed(0)} MiB mixed; both ends of the link share the machine's cores`);
    ctx.say(
      `each receiving node first takes a replicate of ${WARM_UP_BYTES / 2 ** 20} MiB of other data (untimed): warm, as a node in service ` +
        'and the local contender (this process, after its first run) are',
    );
    const r = await benchWs({ image, workdir: ctx.dir, log: (l: string) => ctx.log(l) });
    const rows: Row[] = [
      {
        name: 'full replicate over ws://',
        value: r.ws.mbPerSec,
        unit: 'MB/s',
        baseline: { name: 'local store, same run', value: r.local.mbPerSec, unit: 'MB/s' },
        ratio: r.ratio,
        target: { text: '>= 0.8x local', pass: r.ratio >= 0.8 },
        // Both ends on this machine's cores: the CPU both spend per byte bounds the rate whatever the link does.
        note:
          `CPU-bound ceiling: sender ${(r.cpu.sender.user + r.cpu.sender.sys).toFixed(2)} s + node ${(r.cpu.node.user + r.cpu.node.sys).toFixed(2)} s of CPU over ` +
          `${r.cpu.cores} cores -> ${r.cpu.ceilingMbPerSec.toFixed(0)} MB/s, ${(r.cpu.ceilingMbPerSec / r.local.mbPerSec).toFixed(2)}x of local at most; ` +
          `the run reached ${(r.cpu.ofCeiling * 100).toFixed(0)}% of it` +
          (r.cpu.tcpFloor ? `; ${tcpFloorNote(r.cpu.tcpFloor, r.local.mbPerSec)}` : ''),
      },
    ];
    rows.push({
      name: 'full replicate over wss://',
      value: r.wss?.mbPerSec ?? null,
      unit: 'MB/s',
      baseline: { name: 'local store, same run', value: r.local.mbPerSec, unit: 'MB/s' },
      ratio: r.wss?.ratio,
      target: { text: '>= 0.7x local', pass: r.wss ? r.wss.ratio >= 0.7 : undefined },
      note: r.wss
        ? 'TLS on both ends: the node serves a self-signed certificate, the sender trusts it as its CA'
        : 'wss:// left out: no openssl CLI to make a certificate',
    });
    if (r.throttle) {
      for (const [name, f] of Object.entries(r.throttle) as Array<[string, { setting: number; measured: number; errorPct: number }]>) {
        rows.push({
          name: `throttle (${name})`,
          value: f.measured / 1e6,
          unit: 'MB/s',
          baseline: { name: 'setting', value: f.setting / 1e6, unit: 'MB/s' },
          ratio: f.measured / f.setting,
          target: { text: 'within 5%', pass: Math.abs(f.errorPct) <= 5 },
        });
      }
    }
    return rows;
  },
};
