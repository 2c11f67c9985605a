// Server-sent jobs: cancel mid-replicate stops cleanly (job.failed cancelled, no point, lease released, the
// next run completes byte-exact); a VM job replicates all its disks; recover, verify and prune jobs report
// their outcome; an encryption key the node does not have is refused with a clear code before anything is written.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { Domain } from '../../src/repository/domain.js';
import { listPoints } from '../../src/repository/points.js';
import { layout } from '../../src/repository/names.js';
import { blobPlace, expectRestore, fingerprint, fsStore, sha256File } from '../helpers/images.js';
import { KiB, MiB, makeDisk, pendingCheckpoints, startAgent, startMs, tmpDir } from './helpers.js';
import { metricValue } from '../helpers/metrics.js';
import { openSource } from '../../src/source/index.js';
import { vmwareConfigFor } from '../../src/source/vmware/index.js';

t.test('cancel mid-job: clean stop, no half point, the next run completes', async (t) => {
  const dir = tmpDir(t, 'agent-cancel');
  // ~4 MiB to send at 512 KiB/s: the run lasts ~8 s, far past its first checkpoint.
  const img = await makeDisk(dir, 'd0', 8 * MiB, 11);
  const ms = await startMs(t);
  // The bandwidth limit paces the bytes put, and a checkpoint follows the packs it covers: 32 slots give each run a
  // budget of 768 KiB, so packs of ~320 KiB, stored and checkpointed one by one at 512 KiB/s.
  const { agent, stateDir } = await startAgent(t, ms, dir, { slots: 32 });
  await ms.waitFor(() => ms.nodes.get(agent.nodeId)?.connected, 10_000, 'registration');
  const storeUrl = path.join(dir, 'store');
  const job = {
    jobId: 'j-cancel',
    kind: 'replicate' as const,
    store: { url: storeUrl },
    disks: [{ disk: 'd0', source: { location: img } }],
    chunkSize: 64 * KiB,
    bandwidth: 512 * KiB,
    checkpointSeconds: 0.2,
  };
  ms.startJob(job);
  await ms.waitFor(() => pendingCheckpoints(storeUrl, 'd0').some((ck) => ck.nextIndex > 0), 10_000, 'a checkpoint');
  const p = (
    await ms.waitFor(
      () => ms.progress.find((x) => x.msg.jobId === 'j-cancel' && x.msg.phase === 'scan' && Number(x.msg.rate) > 0),
      10_000,
      'progress',
    )
  ).msg;
  t.notOk(ms.jobs.get('j-cancel')?.completed, 'still running');
  t.ok(Number(p.rate) > 0 && (p.etaSeconds === null || Number(p.etaSeconds) >= 0), 'progress carries rate and ETA');
  const cancelAt = Date.now();
  ms.cancelJob('j-cancel');
  const failed = await ms.waitFor(() => ms.jobs.get('j-cancel')?.failed, 5000, 'job.failed');
  t.ok(Date.now() - cancelAt < 2000, `stopped promptly (${Date.now() - cancelAt} ms)`);
  t.match(failed, { code: 'RNODE_CANCELLED', cancelled: true, disk: 'd0' });
  const store = fsStore(storeUrl);
  t.same(await listPoints(store, 'd0'), [], 'no point committed');
  const lease = JSON.parse((await store.get(layout.lease('d0'))).toString());
  t.ok(Date.parse(lease.expiresAt) <= Date.now(), 'the lease was released');
  t.equal(await metricValue(agent.metrics.errors, { code: 'RNODE_CANCELLED' }), 1, 'counted by code');

  const readBefore = await metricValue(agent.metrics.bytesRead, {});
  ms.startJob({ ...job, jobId: 'j-again', bandwidth: undefined });
  const done = await ms.waitFor(() => ms.jobs.get('j-again')?.completed, 10_000, 'the second run');
  const r = (done.results as any[])[0];
  // The bytes this run read, not the whole point's (the cancelled run's were counted once already).
  t.equal((await metricValue(agent.metrics.bytesRead, {})) - readBefore, r.sourceBytesRead, 'rnode_bytes_read_total grows by what it read');
  t.match(r, { point: 1, resumed: true }, 'continued from the checkpoint the cancelled run left');
  t.ok(r.sourceBytesRead < 8 * MiB && r.sourceBytesRead > 0, `read less than the disk (${r.sourceBytesRead} of ${8 * MiB})`);
  await expectRestore(t, store, 'd0', 1, fingerprint(img), dir);

  // A resumed run keeps no change hashes; the next one compares by ids and keeps them in the node's state dir, and
  // the one after compares by them.
  const compared: unknown[] = [];
  for (const jobId of ['j-third', 'j-fourth']) {
    fs.writeFileSync(img, Buffer.alloc(64 * KiB, jobId), { flag: 'r+' });
    ms.startJob({ ...job, jobId, bandwidth: undefined });
    compared.push(((await ms.waitFor(() => ms.jobs.get(jobId)?.completed, 10_000, jobId)).results as any[])[0].comparedBy);
  }
  t.same(compared, ['chunk-ids', 'change-hashes'], 'the agent keeps change hashes and compares by them');
  t.equal(fs.readdirSync(path.join(stateDir, 'cache', 'change-hashes')).length, 1, 'in <state-dir>/cache');
  await expectRestore(t, store, 'd0', 3, fingerprint(img), dir, 'the point compared by change hashes');

  ms.cancelJob('j-again'); // no longer running
  const err = await ms.waitFor(() => ms.errors.find((e) => e.msg.code === 'RNODE_AGENT_UNKNOWN_JOB'), 5000, 'error reply');
  t.ok(err, 'cancelling a finished job is answered with an error');
});

// A small disk is read whole into the pipeline at once; its progress must then follow the writes, not stop at the
// first read until the commit (the server saw one report at 0 bytes, then the end).
t.test('progress follows the bytes stored, after the reader has run ahead', async (t) => {
  const dir = tmpDir(t, 'agent-progress');
  const img = await makeDisk(dir, 'd0', 1 * MiB, 12);
  const storeUrl = path.join(dir, 'store');
  // Packs of 64 KiB: the ~0.5 MiB of data is stored (and settles) in ~8 steps, one every ~0.25 s at 256 KiB/s.
  await Domain.openOrCreate(fsStore(storeUrl), undefined, 64 * KiB);
  const ms = await startMs(t);
  const { agent } = await startAgent(t, ms, dir);
  await ms.waitFor(() => ms.nodes.get(agent.nodeId)?.connected, 10_000, 'registration');
  ms.startJob({
    jobId: 'j-progress',
    kind: 'replicate',
    store: { url: storeUrl },
    disks: [{ disk: 'd0', source: { location: img } }],
    chunkSize: 64 * KiB,
    bandwidth: 256 * KiB,
  });
  await ms.waitFor(() => ms.jobs.get('j-progress')?.completed, 20_000, 'the run');
  const scan = ms.progress.filter((x) => x.msg.jobId === 'j-progress' && x.msg.phase === 'scan').map((x) => Number(x.msg.bytesWritten));
  const steps = new Set(scan.filter((b) => b > 0));
  t.ok(steps.size >= 3, `reports while the data was stored: bytes written ${scan.join(', ')}`);
  t.same(
    scan,
    [...scan].sort((a, b) => a - b),
    'and they only go up',
  );
});

t.test('VM job, recover, verify, prune; an encryption key missing on the node refused', async (t) => {
  const dir = tmpDir(t, 'agent-jobs');
  const imgs = [await makeDisk(dir, 'vm1-a', 1 * MiB, 21), await makeDisk(dir, 'vm1-b', 512 * KiB + 4096, 22)];
  const ms = await startMs(t);
  const { agent } = await startAgent(t, ms, dir);
  await ms.waitFor(() => ms.nodes.get(agent.nodeId)?.connected, 10_000, 'registration');
  const store = { url: path.join(dir, 'store') };
  const disks = imgs.map((img, i) => ({ disk: `vm1-${'ab'[i]}`, source: { location: img } }));
  ms.startJob({ jobId: 'vm1-1', kind: 'replicate', vm: 'vm1', store, disks, chunkSize: 64 * KiB });
  const c1 = await ms.waitFor(() => ms.jobs.get('vm1-1')?.completed, 10_000, 'VM job');
  t.same(
    (c1.results as any[]).map((r) => [r.disk, r.point]),
    [
      ['vm1-a', 1],
      ['vm1-b', 1],
    ],
    'one point per disk',
  );
  ms.startJob({ jobId: 'vm1-2', kind: 'replicate', vm: 'vm1', store, disks });
  await ms.waitFor(() => ms.jobs.get('vm1-2')?.completed, 10_000, 'second VM job');

  const out = path.join(dir, 'restored-b.img');
  ms.startJob({ jobId: 'rec', kind: 'recover', store, disk: 'vm1-b', point: '1', out });
  const rec = await ms.waitFor(() => ms.jobs.get('rec')?.completed, 10_000, 'recover');
  t.match((rec.results as any[])[0], { disk: 'vm1-b', point: 1, out });
  t.equal(sha256File(out), sha256File(imgs[1]), 'recover job restored byte-exact');

  ms.startJob({ jobId: 'ver', kind: 'verify', store, disk: 'vm1-a', point: 'all' });
  const ver = await ms.waitFor(() => ms.jobs.get('ver')?.completed, 10_000, 'verify');
  t.match((ver.results as any[])[0], { ok: true, problems: 0 });

  ms.startJob({ jobId: 'pr', kind: 'prune', store, disk: 'vm1-a', keep: 1 });
  const pr = await ms.waitFor(() => ms.jobs.get('pr')?.completed, 10_000, 'prune');
  t.match((pr.results as any[])[0], { kept: [2], deleted: [1] });

  // A verify that finds damage fails the job with the problem's code.
  // Repository v2: a chunk lives in a pack; remove the pack holding vm1-b's first chunk (located through the index).
  const victim = await blobPlace(store.url, 'vm1-b', 1, 0);
  fs.rmSync(victim.file);
  ms.startJob({ jobId: 'ver2', kind: 'verify', store, disk: 'vm1-b', point: 'all' });
  const vf = await ms.waitFor(() => ms.jobs.get('ver2')?.failed, 10_000, 'failed verify');
  t.equal(vf.code, 'RNODE_CHUNK_MISSING');

  ms.startJob({ jobId: 'enc', kind: 'replicate', store, disks: [disks[0]], encryption: { mode: 'aes-256-gcm', key: { secretRef: 'env:NOPE' } } });
  const enc = await ms.waitFor(() => ms.jobs.get('enc')?.failed, 10_000, 'refused encryption');
  t.match(enc, { code: 'RNODE_AGENT_SECRET', message: /NOPE/ });
  t.equal((await listPoints(fsStore(store.url), 'vm1-a')).length, 1, 'nothing written for it');
});

t.test('store credentials by reference: resolved on the node, never reported or logged', async (t) => {
  const dir = tmpDir(t, 'agent-secret');
  const img = await makeDisk(dir, 'd0', 256 * KiB, 31);
  const ms = await startMs(t);
  const { agent, logs, stateDir } = await startAgent(t, ms, dir);
  await ms.waitFor(() => ms.nodes.get(agent.nodeId)?.connected, 10_000, 'registration');
  const secret = 'super-secret-access-key-value';
  fs.writeFileSync(path.join(stateDir, 'secrets', 'fake-key'), secret);
  ms.startJob({
    jobId: 'sec',
    kind: 'replicate',
    store: { url: path.join(dir, 'store'), env: { FAKE_SECRET_KEY: { secretRef: 'file:fake-key' } } },
    disks: [{ disk: 'd0', source: { location: img } }],
  });
  await ms.waitFor(() => ms.jobs.get('sec')?.completed, 10_000, 'job');
  ms.startJob({
    jobId: 'sec2',
    kind: 'replicate',
    store: { url: path.join(dir, 'store'), env: { X: { secretRef: 'env:RNODE_TEST_UNSET_SECRET' } } },
    disks: [{ disk: 'd0', source: { location: img } }],
  });
  const f = await ms.waitFor(() => ms.jobs.get('sec2')?.failed, 10_000, 'missing secret');
  t.match(f, { code: 'RNODE_AGENT_SECRET', message: /RNODE_TEST_UNSET_SECRET/ });
  t.notOk(
    logs.some((l) => l.includes(secret)),
    'the secret is in no log line',
  );
  t.notOk(JSON.stringify(ms.reports).includes(secret), 'nor in any report');
});

// job.cancel and at once job.start of the same job with attempt 2 (what a server does after a network blip): attempt 2
// was refused with RNODE_AGENT_DUPLICATE_JOB while attempt 1 stopped, so attempt 1 ended cancelled and 2 never ran.
t.test('a newer attempt of a job being cancelled runs once the cancelled one has stopped; a same attempt stays a duplicate', async (t) => {
  const dir = tmpDir(t, 'agent-reattempt');
  const img = await makeDisk(dir, 'd0', 8 * MiB, 12);
  const ms = await startMs(t, { nodeTimeoutMs: 60_000 });
  const { agent } = await startAgent(t, ms, dir, { slots: 32 });
  await ms.waitFor(() => ms.nodes.get(agent.nodeId)?.connected, 10_000, 'registration');
  const storeUrl = path.join(dir, 'store');
  const job = {
    jobId: 'j1',
    kind: 'replicate' as const,
    store: { url: storeUrl },
    disks: [{ disk: 'd0', source: { location: img } }],
    chunkSize: 64 * KiB,
    bandwidth: 1024 * KiB,
    checkpointSeconds: 0.2,
  };
  ms.startJob(job, agent.nodeId);
  await ms.waitFor(() => pendingCheckpoints(storeUrl, 'd0').some((ck) => ck.nextIndex > 0), 10_000, 'a checkpoint');

  ms.send(agent.nodeId, { type: 'job.start', job: { ...job, attempt: 1 } });
  await ms.waitFor(() => ms.errors.length === 1, 5000, 'the refusal');
  t.match(ms.errors[0].msg, { code: 'RNODE_AGENT_DUPLICATE_JOB' }, 'the same attempt of a running job is a duplicate');

  ms.send(agent.nodeId, { type: 'job.cancel', jobId: 'j1' });
  const rec = ms.startJob({ ...job, attempt: 2, bandwidth: undefined }, agent.nodeId);
  const done = await ms.waitFor(() => rec.completed, 15_000, 'attempt 2 completed');
  t.equal(ms.errors.length, 1, 'attempt 2 was not refused');
  t.same(
    ms.reports.filter((r) => r.msg.jobId === 'j1').map((r) => [r.msg.type, r.msg.attempt, r.msg.code]),
    [
      ['job.accepted', 1, undefined],
      ['job.accepted', 2, undefined],
      ['job.failed', 1, 'RNODE_CANCELLED'],
      ['job.completed', 2, undefined],
    ],
    'attempt 1 ended cancelled before attempt 2 ran',
  );
  t.match((done.results as any[])[0], { point: 1, resumed: true }, 'attempt 2 continued the checkpoint of attempt 1');
  t.equal(rec.state, 'completed');
});

// Jobs that arrived together on a node with two slots: the third waited for a slot without a word (no progress phase
// "queued", which the docs promise), because the check ran before the first two had taken their slots.
t.test('a job that waits for a slot says so with progress phase queued', async (t) => {
  const dir = tmpDir(t, 'agent-queued');
  const ms = await startMs(t);
  const { agent } = await startAgent(t, ms, dir, { slots: 2 });
  await ms.waitFor(() => ms.nodes.get(agent.nodeId)?.connected, 10_000, 'registration');
  const ids = ['q1', 'q2', 'q3'];
  const imgs = await Promise.all(ids.map((id, i) => makeDisk(dir, id, 1 * MiB, 30 + i)));
  // Sent together, as a server dispatches a batch.
  for (const [i, jobId] of ids.entries()) {
    const img = imgs[i];
    ms.startJob(
      {
        jobId,
        kind: 'replicate',
        store: { url: path.join(dir, `store-${jobId}`) },
        disks: [{ disk: 'd0', source: { location: img } }],
        chunkSize: 64 * KiB,
        bandwidth: 256 * KiB,
      },
      agent.nodeId,
    );
  }
  await ms.waitFor(() => ids.every((id) => ms.jobs.get(id)?.completed), 30_000, 'all three completed');
  const queued = ids.filter((id) => ms.progress.some((p) => p.msg.jobId === id && p.msg.phase === 'queued'));
  t.equal(queued.length, 1, `one job waited for a slot and said so (${queued.join(', ')})`);
});

// source.options of a job were passed through unchecked: a raw source read only `direct`, so {"blockSize": -1} or a
// "__proto__" member completed as if nothing had been asked, and options beside a VMware sourceConfig were dropped.
t.test('source options a source does not take, or cannot use, fail the run with RNODE_BAD_SOURCE', async (t) => {
  const dir = tmpDir(t, 'agent-options');
  const img = await makeDisk(dir, 'd0', 1 * MiB, 13);
  const ms = await startMs(t);
  const { agent } = await startAgent(t, ms, dir);
  await ms.waitFor(() => ms.nodes.get(agent.nodeId)?.connected, 10_000, 'registration');
  const run = async (jobId: string, options: string) => {
    const job = `{"jobId":"${jobId}","kind":"replicate","store":{"url":${JSON.stringify(path.join(dir, 'store'))}},"disks":[{"disk":"d0","source":{"location":${JSON.stringify(img)},"options":${options}}}]}`;
    ms.jobs.set(jobId, { job: JSON.parse(job), nodeId: agent.nodeId, state: 'dispatched', attempt: 1, attempts: [] });
    ms.sendRaw(agent.nodeId, `{"v":1,"type":"job.start","id":"s-${jobId}","job":${job}}`);
    const rec = await ms.waitFor(
      () => (ms.jobs.get(jobId)!.state !== 'dispatched' && ms.jobs.get(jobId)!.state !== 'accepted' ? ms.jobs.get(jobId) : undefined),
      10_000,
      jobId,
    );
    return rec.failed ?? rec.completed;
  };
  t.match(await run('o1', '{"blockSize":-1}'), {
    type: 'job.failed',
    code: 'RNODE_BAD_SOURCE',
    message: /source option "blockSize" is not one a file or device source takes/,
  });
  t.match(await run('o2', '{"__proto__":{"direct":true}}'), { type: 'job.failed', code: 'RNODE_BAD_SOURCE', message: /"__proto__"/ });
  t.match(await run('o3', '{"direct":"yes"}'), { type: 'job.failed', code: 'RNODE_BAD_SOURCE', message: /direct must be true or false/ });
  t.match(await run('o4', '{"direct":false}'), { type: 'job.completed' }, 'an option the source takes');

  await t.rejects(openSource('nbd+unix:///?socket=/nowhere.sock', { timeoutMs: 5 }), {
    code: 'RNODE_BAD_SOURCE',
    message: /"timeoutMs" is not one it takes/,
  });
  t.throws(() => vmwareConfigFor('vddk://h/vm-1?disk=2000', { sourceConfig: path.join(dir, 'vc.json'), quiesce: true }), {
    code: 'RNODE_BAD_SOURCE',
    message: /either sourceConfig or the settings, not both \("quiesce"/,
  });
});

// A node stopping (SIGTERM: an upgrade, a reboot) ended its running jobs as the server's own cancel does: cancelled,
// not retryable, so a server never sent them again. They end as a killed node's do: RNODE_AGENT_RESTARTED, retryable.
t.test('a job the node stops for its own shutdown is reported retryable (RNODE_AGENT_RESTARTED), not cancelled', async (t) => {
  const dir = tmpDir(t, 'agent-stop-job');
  const img = await makeDisk(dir, 'd0', 8 * MiB, 5);
  const ms = await startMs(t);
  // 32 slots: small packs, checkpointed one by one at 512 KiB/s (as in the cancel test above).
  const { agent, stateDir } = await startAgent(t, ms, dir, { slots: 32 });
  await ms.waitFor(() => ms.nodes.get(agent.nodeId)?.connected, 10_000, 'registration');
  const storeUrl = path.join(dir, 'store');
  const job = { jobId: 'j-stop', kind: 'replicate' as const, store: { url: storeUrl }, disks: [{ disk: 'd0', source: { location: img } }] };
  ms.startJob({ ...job, chunkSize: 64 * KiB, bandwidth: 512 * KiB, checkpointSeconds: 0.2 });
  await ms.waitFor(() => pendingCheckpoints(storeUrl, 'd0').some((ck) => ck.nextIndex > 0), 10_000, 'a checkpoint');
  await agent.stop();
  // Its report went out before the link closed, or is delivered by the next start on the same state dir.
  const again = await startAgent(t, ms, dir, { stateDir, slots: 32 });
  const failed = await ms.waitFor(() => ms.jobs.get('j-stop')?.failed, 10_000, 'job.failed');
  t.match(failed, { code: 'RNODE_AGENT_RESTARTED', cancelled: false, retryable: true });
  t.match(String(failed.message), /the node stopped while the job ran .*the server may dispatch the job again/);
  t.equal(ms.reports.filter((r) => r.msg.jobId === 'j-stop' && r.msg.type === 'job.failed').length, 1, 'reported once');
  await again.agent.stop();
});
