// /metrics: after a scheduled point and a cancelled job, a scrape in the Prometheus text format shows bytes
// read/sent/stored, chunks, zero chunks, compression ratio, throughput, in-flight, errors by code, the job
// duration histogram and the RPO lag of the disk; every metric docs/grafana-dashboard.json charts exists.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseExposition } from '../helpers/metrics.js';
import { get, KiB, MiB, makeDisk, startAgent, startMs, tmpDir } from './helpers.js';

t.test('metrics scraped and checked', async (t) => {
  const dir = tmpDir(t, 'agent-metrics');
  const img = await makeDisk(dir, 'd0', 1 * MiB, 3);
  const ms = await startMs(t);
  const { agent } = await startAgent(t, ms, dir);
  await ms.waitFor(() => ms.nodes.get(agent.nodeId)?.connected, 10_000, 'registration');
  const store = { url: path.join(dir, 'store') };
  ms.setPolicy({ group: 'gm', revision: 1, rpoSeconds: 60, store, chunkSize: 64 * KiB, disks: [{ disk: 'd0', source: { location: img } }] });
  await ms.waitFor(() => ms.reportsOf('job.completed').length === 1, 10_000, 'a scheduled point');
  // A disk of its own: bandwidth paces the bytes sent, and d0's chunks are in the store already (nothing to send).
  const other = await makeDisk(dir, 'd1', 1 * MiB, 4);
  ms.startJob({
    jobId: 'c1',
    kind: 'replicate',
    store,
    disks: [{ disk: 'd1', source: { location: other } }],
    bandwidth: 256 * KiB,
    chunkSize: 64 * KiB,
  });
  await ms.waitFor(() => ms.jobs.get('c1')?.state === 'accepted', 5000, 'accepted');
  const mid = parseExposition((await get(agent.metricsPort!, '/metrics')).body);
  t.equal(mid.get('rnode_jobs_in_flight'), 1, 'one job in flight during the run');
  ms.cancelJob('c1');
  await ms.waitFor(() => ms.jobs.get('c1')?.failed, 5000, 'cancelled');

  const res = await get(agent.metricsPort!, '/metrics');
  t.equal(res.status, 200);
  t.match(res.type, /^text\/plain; version=0\.0\.4/);
  const m = parseExposition(res.body);
  const v = (k: string) => m.get(k);
  t.ok(v('rnode_bytes_read_total')! >= MiB, `bytes read ${v('rnode_bytes_read_total')}`);
  t.ok(v('rnode_bytes_stored_total')! > 0 && v('rnode_bytes_stored_total')! < MiB, 'bytes stored: compressed, zeros skipped');
  t.ok(v('rnode_bytes_sent_total')! >= v('rnode_bytes_stored_total')!, 'bytes sent >= stored (checkpoints, lease)');
  t.ok(v('rnode_zero_chunks_total')! > 0, `zero chunks (${v('rnode_zero_chunks_total')}: the sample's zero thirds)`);
  t.equal(v('rnode_chunks_stored_total')! + v('rnode_zero_chunks_total')!, 16, 'stored + zero = the 16 chunks of the disk');
  t.ok(v('rnode_compression_ratio{disk="d0"}')! > 1, `compression ratio ${v('rnode_compression_ratio{disk="d0"}')}`);
  t.ok(v('rnode_throughput_bytes_per_second{disk="d0"}')! > 0, 'throughput');
  t.equal(v('rnode_jobs_in_flight'), 0, 'nothing in flight now');
  t.equal(v('rnode_errors_total{code="RNODE_CANCELLED"}'), 1, 'errors by code');
  t.equal(v('rnode_jobs_total{kind="replicate",result="completed"}'), 1);
  t.equal(v('rnode_jobs_total{kind="replicate",result="cancelled"}'), 1);
  t.equal(v('rnode_job_duration_seconds_count{kind="replicate"}'), 2, 'duration histogram');
  t.equal(v('rnode_job_duration_seconds_bucket{kind="replicate",le="+Inf"}'), 2);
  const lag = v('rnode_rpo_lag_seconds{disk="d0",group="gm"}');
  t.ok(lag !== undefined && lag >= 0 && lag < 60, `RPO lag of the disk (${lag} s)`);
  t.equal(v('rnode_rpo_seconds{disk="d0",group="gm"}'), 60);
  t.equal(v('rnode_server_connected'), 1);
  t.equal(v('rnode_reports_queued'), 0);
  t.ok(
    [...m.keys()].some((k) => k.startsWith('rnode_node_info{') && k.includes(agent.nodeId)),
    'node info',
  );
  t.match(res.body, /# TYPE rnode_job_duration_seconds histogram/);
  t.ok(v('process_cpu_user_seconds_total')! > 0 && v('nodejs_eventloop_lag_seconds') !== undefined, 'process and event-loop metrics');
  t.equal((await get(agent.metricsPort!, '/nope')).status, 404);

  // The dashboard charts only metrics that exist.
  const dash = JSON.parse(fs.readFileSync(fileURLToPath(new URL('../../docs/grafana-dashboard.json', import.meta.url)), 'utf8'));
  const exprs: string[] = dash.panels.flatMap((p: any) => (p.targets ?? []).map((x: any) => x.expr));
  t.ok(exprs.length >= 8, `${exprs.length} queries in the dashboard`);
  // A labelled series appears with its first event (prom-client does not invent an unlabelled 0), so a metric
  // is served when the exposition declares it with # TYPE.
  const names = new Set([...res.body.matchAll(/^# TYPE (\S+) /gm)].map((x) => x[1]));
  for (const e of exprs) {
    for (const name of e.match(/rnode_[a-z_]+/g) ?? []) {
      t.ok(names.has(name) || names.has(name.replace(/_(bucket|sum|count)$/, '')), `dashboard metric ${name} is served`);
    }
  }
});

// After policy.remove, /metrics kept rnode_rpo_seconds and rnode_last_point_timestamp_seconds of the removed group for
// ever (also set again by a run of the group that ended after the removal).
t.test('a removed policy takes its series with it, also when its run ends after the removal', async (t) => {
  const dir = tmpDir(t, 'agent-metrics');
  const fast = await makeDisk(dir, 'd0', 1 * MiB, 5);
  const slow = await makeDisk(dir, 'd1', 4 * MiB, 6);
  const ms = await startMs(t);
  const { agent } = await startAgent(t, ms, dir, { slots: 16 });
  await ms.waitFor(() => ms.nodes.get(agent.nodeId)?.connected, 10_000, 'registration');
  const store = { url: path.join(dir, 'store') };
  const policy = (group: string, disk: string, location: string, bandwidth?: number) => ({
    group,
    revision: 1,
    rpoSeconds: 3600,
    store,
    chunkSize: 64 * KiB,
    disks: [{ disk, source: { location } }],
    ...(bandwidth ? { bandwidth } : {}),
  });
  ms.setPolicy(policy('ga', 'd0', fast));
  ms.setPolicy(policy('gb', 'd1', slow, 512 * KiB));
  await ms.waitFor(() => ms.reportsOf('job.completed', (m) => m.group === 'ga').length === 1, 10_000, 'a point of ga');
  await ms.waitFor(() => ms.progress.some((p) => p.msg.disk === 'd1' && Number(p.msg.bytesWritten) > 0), 10_000, 'gb mid-run');
  const series = async () =>
    [...parseExposition((await get(agent.metricsPort!, '/metrics')).body).keys()].filter((k) =>
      /^rnode_(rpo_seconds|last_point_timestamp_seconds)\{/.test(k),
    );
  t.same((await series()).length, 3, 'both RPOs and the last point of ga');
  ms.removePolicy('ga');
  ms.removePolicy('gb');
  await ms.waitFor(() => ms.reportsOf('job.completed', (m) => m.group === 'gb').length === 1, 20_000, 'the run of gb ended');
  t.same(await series(), [], 'no series of a removed group');
});
