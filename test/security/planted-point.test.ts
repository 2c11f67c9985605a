// Bug: a peer with the node's token put a sealed-shaped random manifest (over a sealed-shaped table segment) for the
// next point of an encrypted disk; the node holds no key and checks shape only, so it stored them. From then on
// `points` and every `replicate` of that disk failed RNODE_METADATA_FORGED for good, with a message that said to
// restore from another point or store. The message of a forged newest manifest now names the object and says to
// delete it when no rnode run wrote it; once deleted, the disk's points list again and the next replicate commits
// (over the planted table segment, which an uncommitted point's run writes again).
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { EncryptionKey } from '../../src/crypto/keys.js';
import { ErrorCodes } from '../../src/errors.js';
import { ENVELOPE_MAGIC, ENVELOPE_VERSION, EnvelopeKind } from '../../src/repository/envelope.js';
import { classify, r2 } from '../../src/repository/names.js';
import { listPoints } from '../../src/repository/points.js';
import { KiB, expectRestore, fingerprint, listFiles, randomData, snap, stopCodecWorkersAtEnd, tmpDir } from '../helpers/images.js';
import { remote, startNode } from '../transport/helpers.js';

stopCodecWorkersAtEnd(t);

const CHUNK = 64 * KiB;

/** What the finder's peer sent: an envelope header of `kind`, sealed, then random nonce, body and tag. */
function sealedShaped(kind: number, body: Buffer): Buffer {
  return Buffer.concat([ENVELOPE_MAGIC, Buffer.from([ENVELOPE_VERSION, kind, 1, 0]), crypto.randomBytes(12), body, crypto.randomBytes(16)]);
}

t.test('a planted newest manifest of an encrypted disk: the error names it and says to delete it; then the disk works', async (t) => {
  const dir = tmpDir(t, 'sec-planted');
  const { url, storeDir } = await startNode(t, dir);
  const rs = remote(t, url);
  const key = EncryptionKey.fromBytes(randomData(32, 61));
  const img = path.join(dir, 'e.img');
  fs.writeFileSync(img, randomData(8 * CHUNK, 62));
  t.match(await snap(rs, img, 'e', { chunkSize: CHUNK, encryption: key }), { point: 1 }, 'point 1 over ws');
  const manifest1 = listFiles(storeDir).find((f) => classify(f)?.kind === 'manifest')!;
  const h = classify(manifest1) as { domain: string; dname: string };
  const planted = r2.point(h.domain, h.dname, 2);
  await rs.put(r2.segment(h.domain, h.dname, 2, 0, 0), sealedShaped(EnvelopeKind.TABLE, crypto.randomBytes(4 + 48)));
  await rs.put(planted, sealedShaped(EnvelopeKind.MANIFEST, crypto.randomBytes(200)), { ifNoneMatch: true });

  const says = new RegExp(`^manifest ${planted}, the newest point \\(2\\) of disk e, does not open under the key.*planted.*delete it from the store`);
  await t.rejects(listPoints(rs, 'e', key), { code: ErrorCodes.METADATA_FORGED, message: says, details: { key: planted } }, 'points: names it');
  await t.rejects(
    snap(rs, img, 'e', { chunkSize: CHUNK, encryption: key }),
    { code: ErrorCodes.METADATA_FORGED, message: says },
    'replicate: names it',
  );

  // Done on the receiving node, as the message says.
  fs.rmSync(path.join(storeDir, planted));
  t.match(
    (await listPoints(rs, 'e', key)).map((m) => m.point),
    [1],
    'the points before it list again',
  );
  t.match(await snap(rs, img, 'e', { chunkSize: CHUNK, encryption: key }), { point: 2 }, 'the next replicate commits point 2');
  await expectRestore(t, rs, 'e', 2, fingerprint(img), dir, 'point 2', { encryption: key });
});
