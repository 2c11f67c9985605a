// A one-line progress bar for long CLI jobs (replicate, recover, verify). It draws only when stderr is a TTY,
// at most a few times a second, and erases itself when done, so piped and --json output stay clean.

export interface ProgressBarOptions {
  /** Text before the bar, e.g. "replicate disk0". */
  label: string;
  /** The stream to draw on (default process.stderr); nothing is drawn unless it is a TTY. */
  stream?: NodeJS.WriteStream;
  /** Minimum time between redraws. */
  intervalMs?: number;
  /** false: never draw (e.g. with --json). */
  enabled?: boolean;
}

export class ProgressBar {
  private readonly stream: NodeJS.WriteStream;
  private readonly enabled: boolean;
  private readonly started = Date.now();
  private lastDraw = 0;
  private drawn = false;

  constructor(private readonly o: ProgressBarOptions) {
    this.stream = o.stream ?? process.stderr;
    this.enabled = o.enabled !== false && this.stream.isTTY === true;
  }

  /** done/total in bytes (or any unit; the rate is shown as bytes/s). */
  update(done: number, total: number, force = false): void {
    if (!this.enabled) return;
    const now = Date.now();
    if (!force && now - this.lastDraw < (this.o.intervalMs ?? 200)) return;
    this.lastDraw = now;
    const frac = total > 0 ? Math.min(1, done / total) : 0;
    const seconds = (now - this.started) / 1000;
    const rate = seconds > 0 ? done / seconds : 0;
    const eta = rate > 0 && total > done ? (total - done) / rate : 0;
    const tail = ` ${(frac * 100).toFixed(1).padStart(5)}% ${mb(rate)}/s ETA ${clock(eta)}`;
    const width = Math.max(10, (this.stream.columns ?? 80) - this.o.label.length - tail.length - 4);
    const fill = Math.round(frac * width);
    this.stream.write(`\r${this.o.label} [${'#'.repeat(fill)}${'-'.repeat(width - fill)}]${tail}`);
    this.drawn = true;
  }

  /** Erases the bar (call before printing the result). */
  done(): void {
    if (!this.enabled || !this.drawn) return;
    this.stream.write('\r\x1b[2K');
    this.drawn = false;
  }
}

function mb(n: number): string {
  return n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : `${(n / 1e6).toFixed(1)} MB`;
}

function clock(s: number): string {
  const t = Math.round(s);
  const h = Math.floor(t / 3600);
  const m = Math.floor((t % 3600) / 60);
  const sec = t % 60;
  return `${h ? `${h}:` : ''}${String(m).padStart(h ? 2 : 1, '0')}:${String(sec).padStart(2, '0')}`;
}
