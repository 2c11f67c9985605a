// The node's Prometheus registry: prom-client, with the process and Node.js runtime metrics every Node exporter
// serves (CPU, memory, handles, event-loop lag, GC). /metrics renders it in the text exposition format 0.0.4.
import { collectDefaultMetrics, Registry } from 'prom-client';

/** A registry holding the default process and runtime metrics (process_*, nodejs_*). */
export function createRegistry(): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  return registry;
}
