// What a section returns (rows of figures, each beside its baseline and target) and how the runner prints them:
// a table for people, then one JSON line for machines.

export interface Baseline {
  name: string;
  value: number;
  unit?: string;
}

export interface Target {
  /** The target as the issue states it, e.g. ">= 2.0x lz4 -1". */
  text: string;
  /** undefined: could not be judged (a contender was skipped). */
  pass?: boolean;
}

export interface Row {
  name: string;
  /** null when the contender did not run (e.g. the tool is not installed). */
  value: number | null;
  unit: string;
  baseline?: Baseline;
  /** value / baseline.value, unless a row defines it otherwise (say so in its note). */
  ratio?: number;
  target?: Target;
  /** One line of context: what was measured, spreads, skips. */
  note?: string;
  /** Figures for machines only (the JSON result), e.g. where a run's time went. */
  data?: Record<string, unknown>;
}

export interface SectionResult {
  name: string;
  title: string;
  rows: Row[];
  /** Lines printed above the table (setup, what ran where). */
  preface: string[];
  error?: string;
}

export function ratioOf(value: number | null, baseline: number | null | undefined): number | undefined {
  return value !== null && baseline ? value / baseline : undefined;
}

export function fmt(v: number | null | undefined, unit = ''): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return '-';
  const digits = Math.abs(v) >= 100 ? 0 : Math.abs(v) >= 10 ? 1 : 2;
  return `${v.toFixed(digits)}${unit ? ` ${unit}` : ''}`;
}

/** PASS, MISS or SKIP (a contender did not run); empty without a target. */
export function verdict(t?: Target): string {
  if (!t) return '';
  return t.pass === undefined ? 'SKIP' : t.pass ? 'PASS' : 'MISS';
}

/** The human table of one section. */
export function renderSection(s: SectionResult): string[] {
  const lines = [`== ${s.name}: ${s.title}`, ...s.preface.map((l) => `   ${l}`)];
  if (s.error) lines.push(`   FAILED: ${s.error}`);
  if (s.rows.length === 0) return lines;
  const head = ['metric', 'value', 'baseline (same run)', 'ratio', 'target', 'result'];
  const cells = s.rows.map((r) => [
    r.name,
    fmt(r.value, r.unit),
    r.baseline ? `${r.baseline.name}: ${fmt(r.baseline.value, r.baseline.unit ?? r.unit)}` : '',
    r.ratio !== undefined ? `${r.ratio.toFixed(2)}x` : '',
    r.target?.text ?? '',
    verdict(r.target),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i].length)));
  const line = (c: string[]) =>
    c
      .map((x, i) => (i === 1 || i === 3 ? x.padStart(widths[i]) : x.padEnd(widths[i])))
      .join('  ')
      .trimEnd();
  lines.push(line(head), widths.map((w) => '-'.repeat(w)).join('  '));
  s.rows.forEach((r, i) => {
    lines.push(line(cells[i]));
    if (r.note) lines.push(`    ${r.note}`);
  });
  return lines;
}

export function tally(sections: SectionResult[]): { pass: number; miss: number; skip: number } {
  const t = { pass: 0, miss: 0, skip: 0 };
  for (const s of sections) {
    for (const r of s.rows) {
      if (!r.target) continue;
      if (r.target.pass === undefined) t.skip++;
      else if (r.target.pass) t.pass++;
      else t.miss++;
    }
  }
  return t;
}

/** Bytes in binary units, as sizes are given (1.5 GiB, 64 MiB). */
export function human(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${Number(v.toFixed(v < 10 ? 2 : 1))} ${units[i]}`;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** "min-max over n runs" for a row's note; empty for one run. */
export function spread(xs: number[], unit: string): string {
  if (xs.length < 2) return '';
  return `${fmt(Math.min(...xs))}-${fmt(Math.max(...xs), unit)} over ${xs.length} runs`;
}
