// The address a long-running command serves its HTTP endpoints on, parsed apart from the server (metrics/http.ts):
// every command's flags load this, and node:http costs a one-shot command ~20 ms of start-up it does not use.

/** Parses "host:port", "[v6]:port" or ":port". */
export function parseListen(text: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new Error(`"${text}" is not host:port`);
  return { host: m[1] ?? (m[2] || '127.0.0.1'), port };
}
