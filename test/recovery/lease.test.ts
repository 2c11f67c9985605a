// One writer per disk: concurrent writers, takeover after expiry, and a writer that lost its lease
// must not commit.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { holderIsDead, Lease, pidSpace } from '../../src/repository/lease.js';
import { CLI, CLI_NODE_FLAGS, ensureBuilt } from '../helpers/cli.js';
import { replicate } from '../../src/jobs/replicate.js';
import { listPointSeqs } from '../../src/repository/points.js';
import { openSource } from '../../src/source/index.js';
import { FsStore } from '../../src/store/index.js';
import { MemoryStore } from '../../src/testing.js';
import { verify } from '../../src/jobs/verify.js';
import type { PutOptions } from '../../src/store/types.js';
import { generateSampleDisk } from '../../src/sample/sample-disk.js';
import { layout } from '../../src/repository/names.js';
import type { RnodeError } from '../../src/errors.js';
import { aroundPuts } from '../helpers/around-puts.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rnode-lease-'));
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
const image = path.join(dir, 'disk.img');

t.before(async () => {
  await generateSampleDisk(image, { size: 4 * 1024 * 1024 + 123, seed: 3 });
});

async function run(store: FsStore | MemoryStore, disk: string) {
  const source = await openSource(image);
  try {
    return await replicate({ store, source, disk, chunkSize: 64 * 1024 });
  } finally {
    await source.close();
  }
}

for (const [name, make] of [
  ['fs', () => new FsStore(fs.mkdtempSync(path.join(dir, 'store-')))],
  ['memory', () => new MemoryStore()],
] as const) {
  t.test(`${name}: two concurrent writers, exactly one commits`, async (t) => {
    const store = make();
    const results = await Promise.allSettled([run(store, 'd'), run(store, 'd')]);
    const ok = results.filter((r) => r.status === 'fulfilled');
    const failed = results.filter((r) => r.status === 'rejected') as PromiseRejectedResult[];
    t.equal(ok.length, 1, 'one writer commits');
    t.equal(failed.length, 1, 'the other fails');
    t.equal(failed[0].reason.code, 'RNODE_LEASE_HELD');
    t.match(failed[0].reason.message, /only one node may write a disk/);
    t.same(await listPointSeqs(store, 'd'), [1]);
    // The lease is released: the next run takes it with a higher fencing token.
    const next = await run(store, 'd');
    t.equal(next.point, 2);
  });
}

/**
 * A store that ignores put conditions, as a server that does not enforce them does (?conditional=off); its lease
 * writes take 30 ms, as a cloud's do, so two writers both read "free" before either record lands.
 */
class UnconditionalStore extends MemoryStore {
  override readonly capabilities = { conditionalPut: false };
  override async put(key: string, data: Uint8Array, opts: PutOptions = {}) {
    if (key.endsWith('lease.json')) await new Promise((r) => setTimeout(r, 30));
    return super.put(key, data, { ...opts, ifMatch: undefined, ifNoneMatch: undefined });
  }
}

t.test('a store without conditional puts: two writers at once, one commits, the point verifies', async (t) => {
  const store = new UnconditionalStore();
  const results = await Promise.allSettled([run(store, 'd'), run(store, 'd')]);
  const failed = results.filter((r) => r.status === 'rejected') as PromiseRejectedResult[];
  t.equal(failed.length, 1, 'the other fails before it writes');
  t.equal(failed[0]?.reason.code, 'RNODE_LEASE_HELD', String(failed[0]?.reason));
  t.same(await listPointSeqs(store, 'd'), [1]);
  const v = await verify({ store, disk: 'd', point: 'all' });
  t.equal(v.ok, true, `the committed point is intact: ${JSON.stringify(v.problems)}`);
});

t.test('an expired lease is taken over with a higher token; the old holder cannot renew', async (t) => {
  const store = new MemoryStore();
  let now = 1_000_000;
  const a = await Lease.acquire(store, 'x', { ttlMs: 1000, now: () => now });
  now += 5000; // a stalls past its expiry
  const b = await Lease.acquire(store, 'x', { ttlMs: 1000, now: () => now });
  t.ok(b.token > a.token, 'fencing token grows');
  await t.rejects(a.check(), { code: 'RNODE_LEASE_LOST' });
  t.ok(a.signal.aborted, 'the old holder is told to stop');
  await b.release();
  await a.release();
});

t.test('a writer that lost its lease stops before committing', async (t) => {
  const store = new MemoryStore();
  const source = await openSource(image);
  t.teardown(() => source.close());
  // Steal the lease (as a node would after expiry) and check the victim's commit is refused.
  const stolen = async () => {
    const cur = JSON.parse((await store.get(layout.lease('z'))).toString());
    const info = await store.head(layout.lease('z'));
    await store.put(layout.lease('z'), Buffer.from(JSON.stringify({ ...cur, holder: 'thief', token: cur.token + 1 })), { ifMatch: info.etag });
  };
  let stole = false;
  await t.rejects(
    replicate({
      store,
      source,
      disk: 'z',
      chunkSize: 64 * 1024,
      onProgress: (p) => {
        if (!stole && p.chunksDone > 2) {
          stole = true;
          void stolen();
        }
      },
    }),
    { code: 'RNODE_LEASE_LOST' },
  );
  t.same(await listPointSeqs(store, 'z'), [], 'no point committed');
});

// Regression: held() (before a table segment or checkpoint put) trusted local state until the lease's expiry, so a
// writer whose lease another had taken (two processes that both won the lease on a store folder) kept writing the
// point's table keys the other writes too, and broke its committed point.
t.test('held() reads the stored lease: a writer whose lease another holder took stops before its next write', async (t) => {
  const store = new MemoryStore();
  const lease = await Lease.acquire(store, 'h', { ttlMs: 60_000 });
  await lease.held();
  const cur = JSON.parse((await store.get(layout.lease('h'))).toString());
  await store.put(layout.lease('h'), Buffer.from(JSON.stringify({ ...cur, holder: 'other/1/x/y' })));
  await t.rejects(lease.held(), { code: 'RNODE_LEASE_LOST' }, 'same token, other holder: lost, long before the expiry');
  t.ok(lease.signal.aborted, 'and the run is told to stop');
  await lease.release();
  t.equal(JSON.parse((await store.get(layout.lease('h'))).toString()).holder, 'other/1/x/y', "release leaves the other's record");
});

t.test('a reader waits past a lease expiry by its skew margin (the TTL, at most 60 s)', async (t) => {
  const store = new MemoryStore();
  let now = 1_000_000;
  const a = await Lease.acquire(store, 'skew', { ttlMs: 1000, now: () => now });
  now += 1500; // past a's expiry by its own clock, within the margin: a writer whose clock is behind still holds it
  await t.rejects(Lease.acquire(store, 'skew', { ttlMs: 1000, now: () => now }), { code: 'RNODE_LEASE_HELD' });
  now += 600; // past expiry plus margin
  const b = await Lease.acquire(store, 'skew', { ttlMs: 1000, now: () => now });
  t.ok(b.token > a.token, 'taken over once the margin has passed');
  await b.release();
  await a.release();
});

// Bug: RNODE_LEASE_HELD said "(lease until T)" with T the holder's expiresAt, already past while the skew margin still
// held the lease: an operator told to wait until a time that had gone by. It now shows when the lease stops binding.
t.test('LEASE_HELD names the time the lease stops binding: its expiry plus the skew margin', async (t) => {
  const store = new MemoryStore();
  let now = Date.parse('2026-01-01T00:00:00.000Z');
  await Lease.acquire(store, 'until', { ttlMs: 1000, now: () => now });
  now += 1500; // past the holder's expiry (now + 1 s), within its margin (1 s more)
  const err = await Lease.acquire(store, 'until', { ttlMs: 1000, now: () => now }).catch((e: unknown) => e as RnodeError);
  t.equal(err.code, 'RNODE_LEASE_HELD');
  t.match(err.message, /\(lease until 2026-01-01T00:00:02\.000Z\)/, 'expiry 00:00:01 plus the 1 s margin');
  t.ok(Date.parse(String(err.details.bindsUntil)) > now, 'a time still to come');
  t.equal(err.details.expiresAt, '2026-01-01T00:00:01.000Z', "details keep the holder's own expiry");
});

// Regression: a writer that lost its lease (paused past it: SIGSTOP, a VM freeze) still wrote its checkpoint (the
// table segment and pending record of its point) when it stopped, over the committed point of the writer that had
// taken the disk over with the same point number: that point then failed verify and recover (MANIFEST_CORRUPT).
t.test("a writer that lost its lease writes nothing over the new holder's point", async (t) => {
  const store = new MemoryStore();
  const other = path.join(dir, 'other.img');
  await generateSampleDisk(other, { size: 4 * 1024 * 1024 + 123, seed: 4 });
  // Writer a's first pack put waits until writer b has committed: a is "paused" mid-run.
  let release!: () => void;
  const paused = new Promise<void>((r) => (release = r));
  let held = false;
  const slow = aroundPuts(store, async (key, put) => {
    if (!held && key.includes('/packs/')) {
      held = true;
      await paused;
    }
    return put();
  });
  const srcA = await openSource(image);
  const srcB = await openSource(other);
  t.teardown(async () => {
    await srcA.close();
    await srcB.close();
  });
  const a = replicate({ store: slow, source: srcA, disk: 'p', chunkSize: 64 * 1024, packSize: 256 * 1024, lease: { ttlMs: 1000 } }).then(
    () => undefined,
    (e: unknown) => e,
  );
  while (!held) await new Promise((r) => setTimeout(r, 10));
  // b's clock is far ahead: a's lease looks expired to it, and b takes the disk over (point 1 too) and commits.
  const b = await replicate({ store, source: srcB, disk: 'p', chunkSize: 64 * 1024, lease: { ttlMs: 1000, now: () => Date.now() + 60_000 } });
  t.equal(b.point, 1, 'b commits point 1');
  await new Promise((r) => setTimeout(r, 600)); // a's renewal finds the lease gone
  release();
  t.match(await a, { code: 'RNODE_LEASE_LOST' }, 'a stops with LEASE_LOST');
  const v = await verify({ store, disk: 'p', point: '1' });
  t.equal(v.ok, true, `b's point 1 verifies: ${JSON.stringify(v).slice(0, 300)}`);
});

// Regression: after a writer was SIGKILLed, the next run failed with RNODE_LEASE_HELD until the lease expired.
t.test('a live-looking lease whose holder process on this host is gone is taken over at once', async (t) => {
  const dead = spawnSync(process.execPath, ['-e', '0']).pid!;
  const store = new MemoryStore();
  const record = {
    format: 'rnode-lease',
    disk: 'k',
    holder: `${os.hostname()}/${dead}/deadbeef/${pidSpace()}`,
    token: 7,
    acquiredAt: new Date().toISOString(),
    expiresAt: new Date(Date.now() + 300_000).toISOString(),
  };
  await store.put(layout.lease('k'), Buffer.from(JSON.stringify(record)));
  const lease = await Lease.acquire(store, 'k');
  t.equal(lease.token, 8, 'taken over with the next fencing token');
  await lease.release();
  // A holder from another pid space is never presumed dead: its lease holds until it expires.
  await store.put(layout.lease('k'), Buffer.from(JSON.stringify({ ...record, holder: `elsewhere/${dead}/x/0123456789ab`, token: 9 })));
  await t.rejects(Lease.acquire(store, 'k'), { code: 'RNODE_LEASE_HELD' });
});

t.test('a dead pid counts only in the pid space that wrote it; holders without one (older rnode) wait for expiry', async (t) => {
  const dead = spawnSync(process.execPath, ['-e', '0']).pid!;
  t.equal(holderIsDead(`${os.hostname()}/${dead}/deadbeef/${pidSpace()}`), true, 'this boot, this pid namespace, no such process');
  t.equal(holderIsDead(`node/with/slash/${dead}/deadbeef/${pidSpace()}`), true, 'a node name with a slash in it');
  t.equal(holderIsDead(`${os.hostname()}/${dead}/deadbeef`), false, 'the same host name alone proves nothing (cloned VMs, containers)');
  t.equal(holderIsDead(`${os.hostname()}/${dead}/deadbeef/0123456789ab`), false, 'another pid space');
  t.equal(holderIsDead(`${os.hostname()}/${process.pid}/deadbeef/${pidSpace()}`), false, 'a live process');
  t.equal(holderIsDead(`${os.hostname()}/${dead}/deadbeef/unknown`), false, 'a writer that could not tell its pid space');
});

// Regression: a replicate in another pid namespace on a host of the same name (a container on the host network, a
// cloned VM) judged a live writer's lease dead from kill(pid, 0), took the disk, and the two overwrote each other's
// point (a committed point then failed verify).
t.test('a writer in another pid namespace never breaks a live lease held here', async (t) => {
  const unshare = spawnSync('unshare', ['--pid', '--fork', '--mount-proc', 'true']);
  if (unshare.status !== 0) {
    t.fail(`unshare --pid needs root and util-linux (CI runs as root): ${String(unshare.stderr)}`);
    return;
  }
  ensureBuilt();
  const storeDir = path.join(dir, 'ns-store');
  const store = new FsStore(storeDir);
  const held = await Lease.acquire(store, 'ns', { ttlMs: 60_000 });
  t.teardown(() => held.release());
  const r = spawnSync(
    'unshare',
    [
      '--pid',
      '--fork',
      '--mount-proc',
      process.execPath,
      ...CLI_NODE_FLAGS,
      CLI,
      'replicate',
      '--source',
      image,
      '--target',
      storeDir,
      '--disk',
      'ns',
    ],
    {
      encoding: 'utf8',
      timeout: 60_000,
      env: { ...process.env, NODE_OPTIONS: '' },
    },
  );
  t.equal(r.status, 1, `the other writer fails (${r.stderr.trim()})`);
  t.match(r.stderr, /RNODE_LEASE_HELD/, 'because the disk is leased');
  t.same(await listPointSeqs(store, 'ns'), [], 'and commits nothing');
});
