// Human-readable figures for CLI output.

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
