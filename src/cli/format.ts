// Human-readable figures and lines for CLI output.
import { oneLine } from '../errors.js';

/** A failure as the CLI prints it on stderr, whoever reports it: `rnode: CODE: one line`. */
export function failureLine(code: string, message: string): string {
  return `rnode: ${code}: ${oneLine(message)}`;
}

export function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}

export function rate(n: number, seconds: number): string {
  return `${(n / 1e6 / Math.max(seconds, 1e-9)).toFixed(0)} MB/s`;
}

export function secs(s: number): string {
  return `${s.toFixed(2)} s`;
}
