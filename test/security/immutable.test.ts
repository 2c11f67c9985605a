// Bug: a peer with the node's token overwrote committed objects. It read one encrypted disk's pack (or index object,
// or table segment) and put those bytes under another disk's key without if-none-match; the node checked their shape
// and stored them over the original: `verify` of that disk then reported 48 x RNODE_CHUNK_CORRUPT, `check`
// METADATA_FORGED, and later replicates deduplicated into the overwritten pack. The node now stores objects that are
// written once create-only whatever the peer asked: other bytes are refused and the original stays; the same bytes
// again (a retry after a cut) succeed; an uncommitted point's table segment, which a resumed run writes again, and
// checkpoints can still be rewritten.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { EncryptionKey } from '../../src/crypto/keys.js';
import { verify } from '../../src/jobs/verify.js';
import { classify } from '../../src/repository/names.js';
import { TransportErrorCodes } from '../../src/transport/index.js';
import { ErrorCodes, RnodeError } from '../../src/errors.js';
import { aroundCalls } from '../helpers/around-puts.js';
import { KiB, expectRestore, fingerprint, fsStore, listFiles, randomData, snap, stopCodecWorkersAtEnd, tmpDir } from '../helpers/images.js';
import { remote, startNode } from '../transport/helpers.js';

stopCodecWorkersAtEnd(t);

const CHUNK = 64 * KiB;

t.test('a peer cannot overwrite a pack, an index object or a table segment of a committed encrypted point', async (t) => {
  const dir = tmpDir(t, 'sec-immutable');
  const { url, storeDir } = await startNode(t, dir);
  const rs = remote(t, url);
  const key = EncryptionKey.fromBytes(randomData(32, 41));
  // The objects each disk's point added to the store, by kind.
  const added = new Map<string, Map<string, string>>();
  const images = new Map<string, string>();
  for (const [n, disk] of ['e1', 'e2'].entries()) {
    const img = path.join(dir, `${disk}.img`);
    fs.writeFileSync(img, randomData(12 * CHUNK, 50 + n));
    images.set(disk, img);
    const before = new Set(listFiles(storeDir));
    t.match(await snap(rs, img, disk, { chunkSize: CHUNK, encryption: key }), { point: 1 }, `${disk}: point 1 over ws`);
    const byKind = new Map<string, string>();
    for (const f of listFiles(storeDir).filter((f) => !before.has(f))) {
      const h = classify(f);
      if (h && !byKind.has(h.kind)) byKind.set(h.kind, f);
    }
    added.set(disk, byKind);
  }
  const e1 = added.get('e1')!;
  const e2 = added.get('e2')!;
  for (const kind of ['pack', 'index', 'table']) {
    const victim = e1.get(kind)!;
    const other = e2.get(kind)!;
    t.ok(victim && other, `${kind}: each disk wrote one (${victim})`);
    const original = fs.readFileSync(path.join(storeDir, victim));
    await t.rejects(
      rs.put(victim, await rs.get(other)),
      {
        code: TransportErrorCodes.REJECTED,
        message: new RegExp(`${victim} is already on this node with other bytes; objects of its kind .*never replaced`),
      },
      `${kind}: e2's bytes over e1's are refused`,
    );
    t.ok(fs.readFileSync(path.join(storeDir, victim)).equals(original), `${kind}: e1's bytes are intact`);
    t.match(await rs.put(victim, original), { key: victim, size: original.length }, `${kind}: the same bytes again (a retry) succeed`);
  }

  // A table segment of a point not committed yet is a resumed run's to write again (the run below writes its own).
  const segment = e1.get('table')!.replace('/0000000001/', '/0000000002/');
  await rs.put(segment, await rs.get(e2.get('table')!));
  t.ok(await rs.put(segment, await rs.get(e1.get('table')!)), "an uncommitted point's table segment can be written again");

  const v = await verify({ store: rs, disk: 'e1', point: 'all', encryption: key });
  t.match(v, { ok: true, problems: [] }, 'verify of e1 finds nothing wrong');
  await expectRestore(t, rs, 'e1', 1, fingerprint(images.get('e1')!), dir, 'e1 point 1', { encryption: key });
  t.match(await snap(rs, images.get('e1')!, 'e1', { chunkSize: CHUNK, encryption: key }), { point: 2 }, 'e1 takes its next point over them');
  await expectRestore(t, rs, 'e1', 2, fingerprint(images.get('e1')!), dir, 'e1 point 2', { encryption: key });
});

t.test('an encryption marker is written once; a VM access marker is rewritten', async (t) => {
  const dir = tmpDir(t, 'sec-immutable-legacy');
  const { url } = await startNode(t, dir);
  const rs = remote(t, url);
  const marker = 'disks/m/encryption.json';
  const first = Buffer.from(JSON.stringify({ format: 'rnode-disk-encryption', disk: 'm', keyId: 'a', since: 1 }));
  await rs.put(marker, first);
  await t.rejects(
    rs.put(marker, Buffer.from(JSON.stringify({ format: 'rnode-disk-encryption', disk: 'm', keyId: 'b', since: 1 }))),
    { code: TransportErrorCodes.REJECTED },
    'another marker over it is refused',
  );
  t.ok((await rs.get(marker)).equals(first), 'the first marker stays');
  t.ok(await rs.put(marker, first), 'the same marker again succeeds');
  await rs.put('vms/v/access.json', Buffer.from('{"at":1}'));
  t.ok(await rs.put('vms/v/access.json', Buffer.from('{"at":2}')), 'an access marker is rewritten');
});

// A store that answers a create-only put "precondition failed" while another put of the key is still under way (S3's
// 409 ConditionalRequestConflict: a sender's retry while the node still stores what its cut session sent). The node
// compared bytes at once, found no object yet (STORE_NOT_FOUND) and failed the sender's run; it waits for it now.
t.test('a create-only put refused while another put of the key is under way waits for it, then compares', async (t) => {
  const dir = tmpDir(t, 'sec-immutable');
  let conflicts = 0;
  let other: Promise<unknown> = Promise.resolve();
  const racing = aroundCalls(fsStore(path.join(dir, 'recv')), 'put', ([key, , opts], put) => {
    if (conflicts > 0 || !key.includes('/packs/') || !opts?.ifNoneMatch) return put();
    conflicts++;
    // The other put lands 300 ms later; this one is refused meanwhile, the object not there yet.
    other = new Promise((r) => setTimeout(r, 300)).then(put).catch(() => undefined);
    return Promise.reject(new RnodeError(ErrorCodes.STORE_PRECONDITION, `put ${key}: conflicting conditional operation`, { details: { key } }));
  });
  const { url, storeDir } = await startNode(t, dir, { store: racing });
  const img = path.join(dir, 'd.img');
  fs.writeFileSync(img, randomData(12 * CHUNK, 61));
  t.match(await snap(remote(t, url), img, 'd', { chunkSize: CHUNK }), { point: 1 }, 'the replicate commits');
  t.equal(conflicts, 1, 'one put met the conflict');
  await other; // before the folder goes
  await expectRestore(t, fsStore(storeDir), 'd', 1, fingerprint(img), dir, 'the point');
});
