// The reporter of `npm test`: tap's raw TAP output unchanged, then each test file's duration, slowest first, so
// slow files stand out in CI logs, and last the failed assertions by file with the file's last comments, so a log
// cut to its tail still says what failed and what the test saw. tap loads it with --reporter (a stream class as the
// default export).
import { Transform } from 'node:stream';

// A top-level result line of the runner: one per test file, with tap's own timing.
const FILE_RESULT = /^(not ok|ok) \d+ - (\S+).*# time=([\d.]+)ms/;
// A failed assertion or subtest inside a file (indented: the file's own result line comes after them).
const NESTED_FAILURE = /^(\s+)not ok \d+ - (.*?)(?: # time=[\d.]+ms)?$/;
// What a test said with t.comment (diagnostics a failing test prints before it throws), not tap's own subtest headers.
const NESTED_COMMENT = /^\s+# (?!Subtest: |time=)(.*)$/;
// The last comments of a failed file are printed with its failures.
const COMMENTS_KEPT = 60;

export default class DurationsReporter extends Transform {
  #rest = '';
  #files = [];
  /** Failures and comments seen since the last file result line: they belong to the next one. */
  #pending = [];
  #comments = [];

  _transform(chunk, _encoding, done) {
    const text = this.#rest + chunk.toString('utf8');
    const lines = text.split('\n');
    this.#rest = lines.pop() ?? '';
    for (const line of lines) this.#note(line);
    done(null, chunk);
  }

  _flush(done) {
    this.#note(this.#rest);
    const rows = this.#files.sort((a, b) => b.ms - a.ms);
    const total = rows.reduce((s, r) => s + r.ms, 0);
    const out = ['', `# test file durations, slowest first (${rows.length} files, ${(total / 1000).toFixed(1)} s summed over parallel jobs)`];
    for (const r of rows) out.push(`# ${(r.ms / 1000).toFixed(1).padStart(7)} s  ${r.ok ? '  ' : '✗ '}${r.file}`);
    const failed = this.#files.filter((r) => !r.ok);
    if (failed.length) {
      out.push('', `# failed: ${failed.length} file(s)`);
      for (const r of failed) {
        out.push(`# ✗ ${r.file}`);
        for (const f of r.failures.slice(0, 20)) out.push(`#   ${f}`);
        for (const c of r.comments) out.push(`#     | ${c}`);
      }
    }
    done(null, `${out.join('\n')}\n`);
  }

  #note(line) {
    const nested = NESTED_FAILURE.exec(line);
    if (nested) {
      this.#pending.push(`${' '.repeat(Math.max(0, nested[1].length - 4))}not ok - ${nested[2]}`);
      return;
    }
    const comment = NESTED_COMMENT.exec(line);
    if (comment) {
      this.#comments.push(comment[1]);
      if (this.#comments.length > COMMENTS_KEPT) this.#comments.shift();
      return;
    }
    const m = FILE_RESULT.exec(line);
    if (m) {
      this.#files.push({ ok: m[1] === 'ok', file: m[2], ms: Number(m[3]), failures: this.#pending, comments: this.#comments });
      this.#pending = [];
      this.#comments = [];
    }
  }
}
