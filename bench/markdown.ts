// `npm run bench:markdown -- <result.json>`: the Markdown tables of an earlier run's JSON result (RNODE_BENCH_JSON).
import fs from 'node:fs';
import { renderMarkdown, type BenchJson } from './lib/markdown.js';

const file = process.argv[2];
if (!file) {
  process.stderr.write('usage: npm run bench:markdown -- <file written by RNODE_BENCH_JSON=<file> npm run bench>\n');
  process.exit(2);
}
let json: BenchJson;
try {
  json = JSON.parse(fs.readFileSync(file, 'utf8')) as BenchJson;
} catch (err) {
  process.stderr.write(`rnode bench: cannot read ${file} as a bench result: ${(err as Error).message}\n`);
  process.exit(2);
}
process.stdout.write(renderMarkdown(json));
