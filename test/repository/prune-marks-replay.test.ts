// Issue #14, replayed prune marks: an older marks object put back in place of the current one is authentic (sealed
// in an encrypted domain) and used to open unnoticed, so the next prune acted on marks older than it believed. Now
// every checkpoint and manifest records the marks generation its writer read: after prune #1 the marks are copied
// aside, prune #2 and a replicate run, the old bytes go back, and prune fails RNODE_PRUNE_MARKS_REPLAYED deleting
// nothing (with and without retention), a replicate fails the same way, and `--reset-marks` recovers.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { EncryptionKey } from '../../src/crypto/keys.js';
import { Domain } from '../../src/repository/domain.js';
import { EnvelopeKind, envelopeContext, sealEnvelope } from '../../src/repository/envelope.js';
import { decodePruneMarks, pruneMarksKey, readPruneMarks } from '../../src/repository/prune-marks.js';
import { listPointSeqs, loadV2Point } from '../../src/repository/points.js';
import { pruneStore, type PruneStoreOptions } from '../../src/jobs/prune-v2.js';
import { delegatingSource } from '../../src/source/types.js';
import { runCli } from '../helpers/cli.js';
import { MiB, expectRestore, fingerprint, fsStore, listFiles, randomData, snap, stopCodecWorkersAtEnd, tmpDir } from '../helpers/images.js';

stopCodecWorkersAtEnd(t);

const SIZE = MiB;
const GRACE = 60 * 60_000;
const KEY_BYTES = randomData(32, 7);
/** The code, spelt out: a missing ErrorCodes entry must not make the assertions compare undefined with undefined. */
const REPLAYED = 'RNODE_PRUNE_MARKS_REPLAYED';

/** Every object of the store but leases (a failed prune still takes and gives back its lease), with its bytes' length. */
function objects(storeDir: string): string[] {
  return listFiles(storeDir)
    .filter((f) => !f.endsWith('lease.json'))
    .map((f) => `${f} ${fs.statSync(path.join(storeDir, f)).size}`);
}

for (const encrypted of [false, true]) {
  t.test(`a replayed marks object is detected by prune and replicate; --reset-marks recovers (${encrypted ? 'encrypted' : 'plain'})`, async (t) => {
    const dir = tmpDir(t, 'marks-replay');
    const storeDir = path.join(dir, 'store');
    const store = fsStore(storeDir);
    const key = encrypted ? EncryptionKey.fromBytes(KEY_BYTES) : undefined;
    const keyFile = path.join(dir, 'k.key');
    fs.writeFileSync(keyFile, KEY_BYTES.toString('hex'), { mode: 0o600 });
    const images = [1, 2, 3].map((seed) => {
      const f = path.join(dir, `img${seed}.img`);
      fs.writeFileSync(f, randomData(SIZE, seed));
      return f;
    });
    const rep = (img: string) => snap(store, img, 'd', { chunkSize: 64 * 1024, encryption: key });
    let clock = Date.now();
    const prune = (extra: Partial<PruneStoreOptions> = {}) =>
      pruneStore({ store, encryption: key, graceMs: GRACE, maxUnused: 0, now: () => clock, ...extra });

    await rep(images[0]);
    await rep(images[1]);
    const domain = (await Domain.open(store, key))!;
    const marksFile = path.join(storeDir, pruneMarksKey(domain.name));

    const r1 = await prune({ disk: 'd', keep: 1 });
    t.ok(r1.domains[0].packsSeen > 0, `prune #1: point 1's packs are seen unused (${r1.domains[0].packsSeen})`);
    const old = fs.readFileSync(marksFile);
    t.equal((await readPruneMarks(store, domain)).generation, 1, 'prune #1 wrote marks generation 1');

    clock += GRACE;
    const r2 = await prune();
    t.equal(r2.domains[0].packsMarked, r1.domains[0].packsSeen, 'prune #2 (a grace period later) marks them');
    t.equal((await readPruneMarks(store, domain)).generation, 2);
    const p3 = await rep(images[2]);
    t.equal((await loadV2Point(store, 'd', p3.point, key)).marksGeneration, 2, 'the replicate recorded the marks generation it read');

    // The replay: prune #1's marks (authentic, sealed in the encrypted domain) put back.
    fs.writeFileSync(marksFile, old);
    const before = objects(storeDir);
    clock += GRACE;
    for (const extra of [{}, { disk: 'd', keep: 1 }]) {
      const err = await prune(extra).then(
        () => undefined,
        (e: unknown) => e as { code?: string; message?: string },
      );
      t.equal(err?.code, REPLAYED, `prune ${extra.disk ? 'with retention ' : ''}fails: ${err?.message}`);
      t.match(err?.message ?? '', /generation 1, older than generation 2 recorded by point 3 of disk d/);
    }
    t.same(objects(storeDir), before, 'the failed prunes deleted and wrote nothing');
    t.ok(fs.readFileSync(marksFile).equals(old), 'the replayed marks are left as they are');
    t.same(await listPointSeqs(store, 'd', key), [2, 3], 'retention kept point 2');

    const w = await rep(images[0]).then(
      () => undefined,
      (e: unknown) => e as { code?: string; message?: string },
    );
    t.equal(w?.code, REPLAYED, `a replicate fails too: ${w?.message}`);
    t.same(await listPointSeqs(store, 'd', key), [2, 3], 'and commits nothing');

    // Recovery: fresh marks above every recorded generation; nothing is deleted on that run.
    if (encrypted) {
      const r = await prune({ resetMarks: true });
      t.equal(r.domains.find((d) => d.domain === domain.name)?.packsDeleted, 0, '--reset-marks deletes nothing');
    } else {
      const cli = await runCli(['prune', '--store', storeDir, '--json']);
      t.equal(cli.code, 1, 'the CLI exits 1');
      t.match(cli.stderr, /RNODE_PRUNE_MARKS_REPLAYED: .*rnode prune --reset-marks/, 'and names the code and what to do');
      const reset = await runCli(['prune', '--store', storeDir, '--reset-marks', '--json']);
      t.equal(reset.code, 0, `rnode prune --reset-marks: ${reset.stderr}`);
      t.equal(JSON.parse(reset.stdout).domains[0].packsDeleted, 0, '--reset-marks deletes nothing');
    }
    t.ok((await readPruneMarks(store, domain)).generation > 2, 'the reset marks are newer than any recorded generation');
    await expectRestore(t, store, 'd', 2, fingerprint(images[1]), dir, 'point 2', { encryption: key });
    await expectRestore(t, store, 'd', 3, fingerprint(images[2]), dir, 'point 3', { encryption: key });
    const p4 = await rep(images[0]);
    t.equal(p4.point, 4, 'replicate commits again');
    const after = await prune();
    t.equal(after.domains.find((d) => d.domain === domain.name)?.packsDeleted, 0, 'and prune runs again (its packs start over at seen)');
  });
}

t.test('a checkpoint that saw the newer marks: prune and the next replicate of the disk fail too', async (t) => {
  const dir = tmpDir(t, 'marks-replay-ck');
  const storeDir = path.join(dir, 'store');
  const store = fsStore(storeDir);
  const images = [1, 2, 3].map((seed) => {
    const f = path.join(dir, `img${seed}.img`);
    fs.writeFileSync(f, randomData(SIZE, seed));
    return f;
  });
  const rep = (img: string, cutAfterReads?: number) =>
    snap(store, img, 'd', {
      chunkSize: 64 * 1024,
      checkpointRecords: 4,
      wrapSource: (s) => {
        let reads = 0;
        return delegatingSource(s, {
          read: (o: number, b: Buffer, l: number) =>
            cutAfterReads !== undefined && ++reads > cutAfterReads ? Promise.reject(new Error('cut')) : s.read(o, b, l),
        });
      },
    });
  let clock = Date.now();
  const prune = (extra: Partial<PruneStoreOptions> = {}) => pruneStore({ store, graceMs: GRACE, maxUnused: 0, now: () => clock, ...extra });
  await rep(images[0]);
  await rep(images[1]);
  const domain = (await Domain.open(store, undefined))!;
  const marksFile = path.join(storeDir, pruneMarksKey(domain.name));
  await prune({ disk: 'd', keep: 1 });
  const old = fs.readFileSync(marksFile);
  clock += GRACE;
  await prune();
  // Point 3 is cut after a few checkpoints: only its checkpoint records generation 2 (point 2 predates the marks).
  await t.rejects(rep(images[2], 10), { message: 'cut' });
  fs.writeFileSync(marksFile, old);
  const before = objects(storeDir);
  clock += GRACE;
  const err = await prune().then(
    () => undefined,
    (e: unknown) => e as { code?: string; message?: string },
  );
  t.equal(err?.code, REPLAYED, `prune fails: ${err?.message}`);
  t.match(err?.message ?? '', /older than generation 2 recorded by the checkpoint of point 3 of disk d/);
  t.same(objects(storeDir), before, 'and deleted and wrote nothing');
  const w = await rep(images[2]).then(
    () => undefined,
    (e: unknown) => e as { code?: string; message?: string },
  );
  t.equal(w?.code, REPLAYED, `the replicate that would resume (or redo) point 3 fails too: ${w?.message}`);
  t.same(objects(storeDir), before, 'leaving the checkpoint that recorded the newer generation');
});

t.test('marks written before generations still open, as generation 0 (manifests without one: prune-v2.test.ts)', async (t) => {
  const domain = Domain.of(undefined);
  const id = 'ab'.repeat(16);
  // The body before generations: u32 count | entries (pack id 16 | u8 state | u64 ms), nothing after them.
  const body = Buffer.alloc(4 + 25);
  body.writeUInt32LE(1, 0);
  Buffer.from(id, 'hex').copy(body, 4);
  body.writeUInt8(1, 20);
  body.writeBigUInt64LE(123n, 21);
  const marks = decodePruneMarks(sealEnvelope(EnvelopeKind.PRUNE_MARKS, envelopeContext.prune(domain.name, 'marks'), body), domain);
  t.equal(marks.generation, 0);
  t.same(marks.packs.get(id), { state: 'marked', at: 123 });
});
