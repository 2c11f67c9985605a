// The node's metrics, by name: what /metrics serves and docs/grafana-dashboard.json charts. Names follow
// Prometheus conventions (base units, _total for counters); changing one breaks dashboards, so only add.
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { createRegistry } from '../metrics/registry.js';

type Lag = { group: string; disk: string; lag: number };

export class AgentMetrics {
  readonly registry: Registry = createRegistry();
  readonly info: Gauge<'node_id' | 'name' | 'version'>;
  readonly bytesRead: Counter;
  readonly bytesSent: Counter;
  readonly bytesStored: Counter;
  readonly chunksStored: Counter;
  readonly chunksZero: Counter;
  readonly compressionRatio: Gauge<'disk'>;
  readonly throughput: Gauge<'disk'>;
  readonly jobsInFlight: Gauge;
  readonly jobsQueued: Gauge;
  readonly jobs: Counter<'kind' | 'result'>;
  readonly errors: Counter<'code'>;
  readonly jobDuration: Histogram<'kind'>;
  readonly rpoLag: Gauge<'group' | 'disk'>;
  readonly rpoTarget: Gauge<'group' | 'disk'>;
  readonly rpoMissed: Counter<'group' | 'disk'>;
  readonly lastPoint: Gauge<'group' | 'disk'>;
  readonly overlapSkipped: Counter<'group' | 'disk' | 'reason'>;
  readonly connected: Gauge;
  readonly reconnects: Counter;
  readonly reportsQueued: Gauge;
  readonly protocolErrors: Counter<'direction' | 'code'>;

  /** `lags` is asked at each scrape for the RPO lag of every scheduled disk. */
  constructor(lags: () => Lag[] = () => []) {
    const registers = [this.registry];
    const counter = <L extends string>(name: string, help: string, labelNames: L[] = []) => new Counter<L>({ name, help, labelNames, registers });
    const gauge = <L extends string>(name: string, help: string, labelNames: L[] = []) => new Gauge<L>({ name, help, labelNames, registers });
    this.info = gauge('rnode_node_info', 'Always 1; labels carry the node id, name and version', ['node_id', 'name', 'version']);
    this.bytesRead = counter('rnode_bytes_read_total', 'Bytes read from sources by replicate runs');
    this.bytesSent = counter('rnode_bytes_sent_total', 'Bytes sent to stores (every put attempt: chunks, tables, manifests, checkpoints, leases)');
    this.bytesStored = counter('rnode_bytes_stored_total', 'Bytes of new points kept in stores (chunks, tables, manifests)');
    this.chunksStored = counter('rnode_chunks_stored_total', 'Chunks stored because they changed');
    this.chunksZero = counter('rnode_zero_chunks_total', 'Chunks found all-zero (recorded without data)');
    this.compressionRatio = gauge(
      'rnode_compression_ratio',
      'Plaintext bytes of the chunks stored by the last point of a disk / bytes stored (about)',
      ['disk'],
    );
    this.throughput = gauge('rnode_throughput_bytes_per_second', 'Disk bytes covered per second by the last run of a disk', ['disk']);
    this.jobsInFlight = gauge('rnode_jobs_in_flight', 'Job runs holding a slot now');
    this.jobsQueued = gauge('rnode_jobs_queued', 'Job runs waiting for a slot or for their disk');
    this.jobs = counter('rnode_jobs_total', 'Finished job runs by kind and result (completed, failed, cancelled)', ['kind', 'result']);
    this.errors = counter('rnode_errors_total', 'Failed runs and refused messages by stable error code', ['code']);
    this.jobDuration = new Histogram({
      name: 'rnode_job_duration_seconds',
      help: 'Duration of finished job runs by kind',
      labelNames: ['kind'],
      registers,
      buckets: [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200],
    });
    this.rpoLag = new Gauge({
      name: 'rnode_rpo_lag_seconds',
      help: 'Age of the newest point of a scheduled disk (lag against its RPO)',
      labelNames: ['group', 'disk'],
      registers,
      // Reset first so a disk dropped from its policy stops being reported.
      collect() {
        this.reset();
        for (const l of lags()) this.set({ group: l.group, disk: l.disk }, l.lag);
      },
    });
    this.rpoTarget = gauge('rnode_rpo_seconds', 'RPO target of a scheduled disk', ['group', 'disk']);
    this.rpoMissed = counter('rnode_rpo_missed_total', 'RPO misses reported, per disk', ['group', 'disk']);
    this.lastPoint = gauge('rnode_last_point_timestamp_seconds', 'Unix time the newest point of a scheduled disk was started', ['group', 'disk']);
    this.overlapSkipped = counter('rnode_schedule_skipped_total', 'Scheduled runs not started because the disk was still busy', [
      'group',
      'disk',
      'reason',
    ]);
    this.connected = gauge('rnode_server_connected', '1 while registered with the Management Server');
    this.reconnects = counter('rnode_server_reconnects_total', 'Connection attempts to the Management Server after the first');
    this.reportsQueued = gauge('rnode_reports_queued', 'Reports not yet acknowledged by the server');
    this.protocolErrors = counter('rnode_protocol_errors_total', 'Messages refused, by direction and code', ['direction', 'code']);
  }

  /** The text exposition format, as /metrics serves it. */
  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
