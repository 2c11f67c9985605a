// The reference Management Server as an example to try `rnode agent` against (docs/agent.md, "Try the agent"):
// it listens, prints its token and the agent's command line, and hands the first node that registers a sample
// policy: one generated disk replicated into a local store on a short schedule, all under one work directory.
// It is an example, not part of the node: it keeps its state in memory and stops on SIGINT/SIGTERM.
// Flags: --host (127.0.0.1), --port (5000; 0: any free port), --workdir (a new temporary directory),
// --interval <seconds> between scheduled runs (30), --disk-mib <size of the sample disk> (64).
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
// The package by its own name, as any user of it: the built library (dist/), not src/.
import { generateSampleDisk } from 'replication-node/testing';
import type { AgentMessage } from 'replication-node/protocol';
import { ReferenceMs, type MsNode } from './reference-ms.js';

function wholeNumber(text: string, flag: string, min: number): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || n < min) throw new Error(`--${flag} must be a whole number of at least ${min} (got "${text}")`);
  return n;
}

async function main(): Promise<void> {
  const { values: v } = parseArgs({
    options: {
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string', default: '5000' },
      workdir: { type: 'string' },
      interval: { type: 'string', default: '30' },
      'disk-mib': { type: 'string', default: '64' },
    },
  });
  const port = wholeNumber(v.port, 'port', 0);
  const interval = wholeNumber(v.interval, 'interval', 1);
  const diskMiB = wholeNumber(v['disk-mib'], 'disk-mib', 1);

  const dir = v.workdir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'rnode-example-ms-'));
  fs.mkdirSync(dir, { recursive: true });
  // A fresh token each start, in a file only this user reads: the agent takes it with --token-file.
  const token = randomBytes(24).toString('hex');
  const tokenFile = path.join(dir, 'token');
  fs.writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 });
  const image = path.join(dir, 'sample.img');
  if (!fs.existsSync(image)) await generateSampleDisk(image, { size: diskMiB * 1024 * 1024, seed: 1 });
  const store = path.join(dir, 'store');

  const ms = await ReferenceMs.start({
    token,
    host: v.host,
    port,
    log: (msg, fields) => console.log(`ms: ${msg}${fields ? ` ${JSON.stringify(fields)}` : ''}`),
  });
  ms.setPolicy({
    group: 'example',
    revision: 1,
    rpoSeconds: 2 * interval,
    intervalSeconds: interval,
    retention: { keep: 5 },
    store: { url: store },
    disks: [{ disk: 'sample', source: { location: image } }],
  });
  ms.on('report', (node: MsNode, msg: AgentMessage) => {
    if (msg.type === 'job.completed' || msg.type === 'job.failed') {
      console.log(
        `ms: ${msg.type} ${JSON.stringify({ node: node.name, jobId: msg.jobId, results: msg.results, code: msg.code, message: msg.message })}`,
      );
    }
  });

  console.log(`reference Management Server listening on ${ms.url}`);
  console.log(`token: ${token} (in ${tokenFile})`);
  console.log(`sample policy "example": disk "sample" (${image}, ${diskMiB} MiB) every ${interval} s into ${store}`);
  console.log(`try: rnode agent --server ${ms.url} --token-file ${tokenFile} --state-dir ${path.join(dir, 'agent-state')} --log-format pretty`);

  await new Promise<void>((resolve) => {
    process.once('SIGINT', () => resolve());
    process.once('SIGTERM', () => resolve());
  });
  await ms.close();
}

main().catch((err: unknown) => {
  console.error(`example:ms: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
