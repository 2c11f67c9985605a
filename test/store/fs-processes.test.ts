// Two processes on one store folder. Bug: the fs store checked ifMatch (compare the etag, then rename) under a lock of
// its own process only, so two processes putting one key with the same etag at the same moment both succeeded: two
// replicates of one disk both took its lease (finder report: the committed point then never restored). ifMatch is
// now compared and applied under a per-key flock that every process takes.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { collect, FsStore } from '../../src/store/index.js';
import { DIST_INDEX, ensureBuilt, runScript } from '../helpers/cli.js';
import { tmpDir } from '../helpers/images.js';

/** Rounds, and ms between them: each round's key is raced once, both processes leaving their busy wait together. */
const ROUNDS = 300;
const PERIOD_MS = 15;

/** A racer: puts round i's key with round i's etag at t0 + i * PERIOD_MS, and prints the rounds it won. */
const racer = (root: string, etagsFile: string, t0: number, name: string) => `
import fs from 'node:fs';
const { FsStore } = await import(${JSON.stringify(DIST_INDEX)});
const [root, etagsFile, t0, name] = ${JSON.stringify([root, etagsFile, t0, name])};
const etags = JSON.parse(fs.readFileSync(etagsFile, 'utf8'));
const store = new FsStore(root, { fsync: false });
const won = [];
for (let i = 0; i < etags.length; i++) {
  const at = t0 + i * ${PERIOD_MS};
  while (performance.timeOrigin + performance.now() < at) {}
  try {
    await store.put('race/' + i, Buffer.from(name), { ifMatch: etags[i] });
    won.push(i);
  } catch (err) {
    if (err.code !== 'RNODE_STORE_PRECONDITION') throw err;
  }
}
process.stdout.write(JSON.stringify(won));
`;

t.test('fs: two processes putting one key with the same ifMatch at the same moment: exactly one wins', async (t) => {
  const dir = tmpDir(t, 'fs-ifmatch');
  const root = path.join(dir, 'store');
  const store = new FsStore(root, { fsync: false });
  const etags: string[] = [];
  for (let i = 0; i < ROUNDS; i++) etags.push((await store.put(`race/${i}`, Buffer.from('first'))).etag!);
  const etagsFile = path.join(dir, 'etags.json');
  fs.writeFileSync(etagsFile, JSON.stringify(etags));

  ensureBuilt(); // before the start time is set: a build takes longer than the head start
  const t0 = Date.now() + 1500; // both processes have loaded the library by then
  const run = async (name: string) => {
    const r = await runScript(racer(root, etagsFile, t0, name));
    t.equal(r.code, 0, `racer ${name} ran: ${r.stderr}`);
    return JSON.parse(r.stdout || '[]') as number[];
  };
  const [a, b] = await Promise.all([run('a'), run('b')]);
  const bothWon = a.filter((i) => b.includes(i));
  const noneWon = etags.map((_, i) => i).filter((i) => !a.includes(i) && !b.includes(i));
  t.same(bothWon, [], `no key was won by both processes (a won ${a.length}, b ${b.length} of ${ROUNDS})`);
  t.same(noneWon, [], 'every key was won by one of them');
  const wrong: number[] = [];
  for (const [name, won] of [
    ['a', a],
    ['b', b],
  ] as const) {
    for (const i of won) if ((await store.get(`race/${i}`)).toString() !== name) wrong.push(i);
  }
  t.same(wrong, [], "each key holds its winner's bytes");
  // The lock files stay out of listings.
  t.same((await collect(store.list(''))).length, ROUNDS, 'list shows the keys only');
});
