// The node's metrics, by name: what /metrics serves and docs/grafana-dashboard.json charts. Names follow
// Prometheus conventions (base units, _total for counters); changing one breaks dashboards, so only add.
import { Registry, type Counter, type Gauge, type Histogram } from '../metrics/registry.js';

export class AgentMetrics {
  readonly registry = new Registry();
  readonly info: Gauge;
  readonly bytesRead: Counter;
  readonly bytesSent: Counter;
  readonly bytesStored: Counter;
  readonly chunksStored: Counter;
  readonly chunksZero: Counter;
  readonly compressionRatio: Gauge;
  readonly throughput: Gauge;
  readonly jobsInFlight: Gauge;
  readonly jobsQueued: Gauge;
  readonly jobs: Counter;
  readonly errors: Counter;
  readonly jobDuration: Histogram;
  readonly rpoLag: Gauge;
  readonly rpoTarget: Gauge;
  readonly rpoMissed: Counter;
  readonly lastPoint: Gauge;
  readonly overlapSkipped: Counter;
  readonly connected: Gauge;
  readonly reconnects: Counter;
  readonly reportsQueued: Gauge;
  readonly protocolErrors: Counter;

  constructor(rpoLag: (g: Gauge) => void = () => undefined) {
    const r = this.registry;
    this.info = r.gauge('rnode_node_info', 'Always 1; labels carry the node id, name and version');
    this.bytesRead = r.counter('rnode_bytes_read_total', 'Bytes read from sources by replicate runs');
    this.bytesSent = r.counter('rnode_bytes_sent_total', 'Bytes sent to stores (every put attempt: chunks, tables, manifests, checkpoints, leases)');
    this.bytesStored = r.counter('rnode_bytes_stored_total', 'Bytes of new points kept in stores (chunks, tables, manifests)');
    this.chunksStored = r.counter('rnode_chunks_stored_total', 'Chunks stored because they changed');
    this.chunksZero = r.counter('rnode_zero_chunks_total', 'Chunks found all-zero (recorded without data)');
    this.compressionRatio = r.gauge('rnode_compression_ratio', 'Plaintext bytes of the chunks stored by the last point of a disk / bytes stored (about)');
    this.throughput = r.gauge('rnode_throughput_bytes_per_second', 'Disk bytes covered per second by the last run of a disk');
    this.jobsInFlight = r.gauge('rnode_jobs_in_flight', 'Job runs holding a slot now');
    this.jobsQueued = r.gauge('rnode_jobs_queued', 'Job runs waiting for a slot or for their disk');
    this.jobs = r.counter('rnode_jobs_total', 'Finished job runs by kind and result (completed, failed, cancelled)');
    this.errors = r.counter('rnode_errors_total', 'Failed runs and refused messages by stable error code');
    this.jobDuration = r.histogram('rnode_job_duration_seconds', 'Duration of finished job runs by kind',
      [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200]);
    this.rpoLag = r.gauge('rnode_rpo_lag_seconds', 'Age of the newest point of a scheduled disk (lag against its RPO)', rpoLag);
    this.rpoTarget = r.gauge('rnode_rpo_seconds', 'RPO target of a scheduled disk');
    this.rpoMissed = r.counter('rnode_rpo_missed_total', 'RPO misses reported, per disk');
    this.lastPoint = r.gauge('rnode_last_point_timestamp_seconds', 'Unix time the newest point of a scheduled disk was started');
    this.overlapSkipped = r.counter('rnode_schedule_skipped_total', 'Scheduled runs not started because the disk was still busy');
    this.connected = r.gauge('rnode_server_connected', '1 while registered with the Management Server');
    this.reconnects = r.counter('rnode_server_reconnects_total', 'Connection attempts to the Management Server after the first');
    this.reportsQueued = r.gauge('rnode_reports_queued', 'Reports not yet acknowledged by the server');
    this.protocolErrors = r.counter('rnode_protocol_errors_total', 'Messages refused, by direction and code');
  }
}
