// What is wrong with a JSON text that did not parse, without quoting any of it. V8's own message quotes up to 20
// characters of the input ("Unexpected token 'H', "Hunter2-vc-pass" is not valid JSON"): a password or key file named
// where a JSON file goes had its secret printed in the error, sent to the Management Server and logged.

/** "not valid JSON", with the line and column when the parser gave a position, or that the text ends early. */
export function jsonSyntaxProblem(err: unknown, text: string): string {
  const message = err instanceof Error ? err.message : '';
  const at = /at position (\d+)/.exec(message);
  if (at) {
    const before = text.slice(0, Number(at[1]));
    const line = before.split('\n').length;
    return `not valid JSON (line ${line}, column ${before.length - before.lastIndexOf('\n')})`;
  }
  if (/end of JSON input/.test(message)) return 'not valid JSON (it ends early)';
  return 'not valid JSON';
}
