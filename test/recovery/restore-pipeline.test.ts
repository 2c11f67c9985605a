// The restore pipeline against sinks that record what they get: an ordered sink sees write/zero calls in disk
// order covering the disk exactly once, even when chunks decode out of order; a positioned sink sees every
// non-zero chunk once and zero ranges for the rest; no more chunk buffers are held than the concurrency; a
// failing sink stops the restore and is aborted; the buffer pool makes buffers only when needed. Plus a restore
// into tmpfs (no O_DIRECT there: buffered path).
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { openFileOutput } from '../../src/output/file.js';
import { BufferPool } from '../../src/pipeline/buffer-pool.js';
import type { OutputSink } from '../../src/output/sink.js';
import { recover } from '../../src/jobs/restore.js';
import { KiB, fingerprint, fsStore, randomData, snap, textData, tmpDir, assertSameBytes } from '../helpers/images.js';

const CHUNK = 64 * KiB;
const SIZE = 40 * CHUNK + 1000;

function image(): Buffer {
  const img = Buffer.alloc(SIZE);
  for (let i = 0; i < 40; i++) {
    if (i % 3 === 1) continue; // zero chunks
    (i % 2 ? randomData(CHUNK, i) : textData(CHUNK, i)).copy(img, i * CHUNK);
  }
  randomData(1000, 99).copy(img, 40 * CHUNK);
  return img;
}

class RecordingSink implements OutputSink {
  readonly location = 'recording';
  readonly calls: Array<{ op: 'write' | 'zero'; offset: number; length: number }> = [];
  readonly out = Buffer.alloc(SIZE, 0xee);
  holding = 0;
  maxHolding = 0;
  finished = false;
  aborted = false;
  constructor(
    readonly ordered: boolean,
    private readonly failAt = -1,
  ) {}
  async write(offset: number, data: Buffer): Promise<number> {
    this.holding++;
    this.maxHolding = Math.max(this.maxHolding, this.holding);
    // Later chunks finish sooner: out-of-order completion is the case an ordered sink must never see.
    await new Promise((r) => setTimeout(r, (SIZE - offset) % 7));
    if (offset === this.failAt) {
      this.holding--;
      throw new Error('sink failed');
    }
    data.copy(this.out, offset);
    this.calls.push({ op: 'write', offset, length: data.length });
    this.holding--;
    return data.length;
  }
  async zero(offset: number, length: number): Promise<number> {
    this.out.fill(0, offset, offset + length);
    this.calls.push({ op: 'zero', offset, length });
    return length;
  }
  async finish(): Promise<void> {
    this.finished = true;
  }
  async abort(): Promise<void> {
    this.aborted = true;
  }
}

const dir = tmpDir(t, 'pipeline');
const store = fsStore(path.join(dir, 'store'));
const img = image();
const imgFile = path.join(dir, 'img');
fs.writeFileSync(imgFile, img);
t.before(() => snap(store, imgFile, 'd', { chunkSize: CHUNK }));

for (const ordered of [true, false]) {
  t.test(`${ordered ? 'ordered' : 'positioned'} sink: every byte once, bounded buffers`, async (t) => {
    const sink = new RecordingSink(ordered);
    const r = await recover({ store, disk: 'd', out: 'x', sink, concurrency: 3 });
    t.ok(sink.finished, 'finished');
    t.ok(sink.out.equals(img), 'the sink got the image byte-exact');
    t.ok(sink.maxHolding <= 3, `at most 3 chunks handed over at once (saw ${sink.maxHolding})`);
    const spans = sink.calls.map((c) => [c.offset, c.offset + c.length]);
    const sorted = [...spans].sort((a, b) => a[0] - b[0]);
    if (ordered) t.same(spans, sorted, 'calls in disk order');
    let at = 0;
    const gaps: number[] = [];
    for (const [a, b] of sorted) {
      if (a !== at) gaps.push(a);
      at = b;
    }
    t.same(gaps, [], 'no gap or overlap');
    t.equal(at, SIZE, 'covers the whole disk');
    t.equal(sink.calls.filter((c) => c.op === 'write').length, 28, 'only the 28 non-zero chunks are fetched and written');
    t.equal(r.out, 'recording');
  });
}

// A restore of a one-chunk disk made (and at the end wiped) every one of its 24 default chunk buffers: the pool now
// makes a buffer when one is first needed, never more than its count.
t.test('the chunk buffer pool makes buffers on first need, at most its count, and waits beyond it', async (t) => {
  let made = 0;
  const pool = new BufferPool(3, () => ({ n: made++ }));
  t.equal(made, 0, 'nothing made before it is needed');
  t.equal(pool.available, 3);
  const a = await pool.acquire();
  t.equal(made, 1, 'one acquire, one buffer');
  pool.release(a);
  t.equal(await pool.acquire(), a, 'a released buffer is reused before another is made');
  t.equal(made, 1);
  await pool.acquire();
  await pool.acquire();
  t.equal(made, 3);
  t.equal(pool.available, 0);
  let waited = true;
  const fourth = pool.acquire().then((b) => {
    waited = false;
    return b;
  });
  await new Promise((r) => setTimeout(r, 20));
  t.ok(waited, 'a fourth acquire waits');
  pool.release(a);
  t.equal(await fourth, a, 'and gets the next released buffer');
  t.equal(made, 3, 'never more than the count');
});

t.test('a failing sink fails the restore and is aborted, never finished', async (t) => {
  for (const ordered of [true, false]) {
    const sink = new RecordingSink(ordered, 9 * CHUNK);
    await t.rejects(recover({ store, disk: 'd', out: 'x', sink, concurrency: 4 }), /sink failed/);
    t.ok(sink.aborted && !sink.finished, `${ordered ? 'ordered' : 'positioned'}: aborted`);
  }
});

t.test(
  'restore into tmpfs (O_DIRECT refused there) and into a directory of the disk',
  { skip: !fs.existsSync('/dev/shm') && 'no /dev/shm' },
  async (t) => {
    const shm = fs.mkdtempSync('/dev/shm/rnode-pipeline-');
    t.teardown(() => fs.rmSync(shm, { recursive: true, force: true }));
    for (const out of [path.join(shm, 'out.img'), path.join(dir, 'out.img')]) {
      const r = await recover({ store, disk: 'd', out, concurrency: 5 });
      assertSameBytes(t, out, fingerprint(imgFile), `${out}: byte-exact`);
      t.ok(r.bytesWritten < SIZE, 'zero chunks were not written');
      t.notOk(fs.existsSync(path.join(path.dirname(out), '.out.img.rnode-partial')), 'no partial file left');
    }
  },
);

// Regression: chunk slots start at a page-aligned address but not at byteOffset 0 of their SharedArrayBuffer; the
// file output took byteOffset for the address, called every chunk unaligned and wrote it all through the page cache
// (one long flush at the end, 2x the time of the O_DIRECT path on a 1 GiB restore).
t.test('a file output writes the chunks O_DIRECT where the filesystem takes it', async (t) => {
  let fd: number;
  try {
    fd = fs.openSync(path.join(dir, 'probe'), fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_DIRECT);
  } catch {
    t.skip(`${dir}: no O_DIRECT on this filesystem`);
    return;
  }
  fs.closeSync(fd);
  const out = path.join(dir, 'direct.img');
  const sink = (await openFileOutput(out, SIZE)) as OutputSink & { bytes: { direct: number; buffered: number } };
  const r = await recover({ store, disk: 'd', out, sink, concurrency: 4 });
  assertSameBytes(t, out, fingerprint(imgFile), 'byte-exact');
  t.equal(sink.bytes.buffered, 1000, 'only the unaligned 1000-byte tail went through the page cache');
  t.equal(sink.bytes.direct, r.bytesWritten - 1000, 'every whole block was written O_DIRECT');
});
