// Reading metrics back in tests: the Prometheus text exposition parsed into samples, and one series of a
// prom-client metric by its labels. Label order is canonical (sorted) so keys do not depend on call sites.
import type { Metric } from 'prom-client';

function canonical(labels: string): string {
  const pairs = [...labels.matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)].map((m) => `${m[1]}="${m[2]}"`);
  return pairs.sort().join(',');
}

/** name{labels} -> value, labels sorted by name. */
export function parseExposition(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`not a sample line: ${line}`);
    const key = m[2] ? `${m[1]}{${canonical(m[2])}}` : m[1];
    out.set(key, m[3] === '+Inf' ? Infinity : m[3] === '-Inf' ? -Infinity : Number(m[3]));
  }
  return out;
}

/** The value of the series with exactly these labels, or undefined when it has none. */
export async function metricValue(metric: Metric, labels: Record<string, string> = {}): Promise<number | undefined> {
  const want = Object.entries(labels).sort().join(';');
  const got = (await metric.get()).values.find(
    (v) =>
      Object.entries(v.labels)
        .map(([k, x]) => [k, String(x)])
        .sort()
        .join(';') === want,
  );
  return got?.value;
}
