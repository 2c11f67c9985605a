// Writes the seed corpus (test/fuzz/corpus/<target>/*): valid encodings made by the project's own encoders, so
// mutations start from inputs the parsers accept. Run once, commit the files: node --import=@tapjs/typescript/import test/fuzz/make-corpus.ts
import fs from 'node:fs';
import path from 'node:path';
import { encodeChunkHeader } from '../../src/format/chunk.js';
import { encodeManifest, MANIFEST_FORMAT, MANIFEST_VERSION, MANIFEST_VERSION_ENCRYPTED } from '../../src/format/manifest.js';
import { encodeSegment, TableFlag } from '../../src/format/table.js';
import { nbdProtocol as P } from '../../src/source/nbd/index.js';
import { encodeFrame, FrameFlag, FrameType } from '../../src/transport/frame.js';
import { Codec } from '../../src/format/codecs.js';
import { encodeConfig, Domain } from '../../src/repository/domain.js';
import { EnvelopeKind, sealEnvelope } from '../../src/repository/envelope.js';
import { encodeIndex } from '../../src/repository/index-file.js';
import { r2 } from '../../src/repository/names.js';
import { PackBuilder } from '../../src/repository/pack.js';
import { encodeTableV3, encodePendingV2 } from '../../src/repository/point-format.js';
import { CORPUS, FUZZ_CONTEXTS, FUZZ_KEY, FUZZ_OBJECT_ID, FUZZ_PLACE } from './targets.js';

const write = (target: string, name: string, data: Buffer | string) => {
  fs.mkdirSync(path.join(CORPUS, target), { recursive: true });
  fs.writeFileSync(path.join(CORPUS, target, name), data);
};

const header = (o: Partial<Parameters<typeof encodeChunkHeader>[0]> = {}) =>
  encodeChunkHeader({
    codec: 1,
    flags: 0,
    plainLength: 65536,
    payloadLength: 300,
    plainXxh64: 0x1234567890abcdefn,
    payloadXxh64: 0xfedcba0987654321n,
    index: 5,
    writer: 2,
    ...o,
  });
write('chunk-header', '01-lz4', header());
write('chunk-header', '02-encrypted', header({ flags: 1, codec: 0, payloadLength: 65536 + 28 }));

const entry = (index: number, o = {}) => ({
  index,
  xxh64: (BigInt(index) * 0x9e3779b97f4a7c15n) & 0xffffffffffffffffn,
  strong: Buffer.alloc(16, index),
  writer: 1,
  plainLength: 65536,
  storedLength: 4000,
  flags: 0,
  codec: 2,
  ...o,
});
write(
  'table',
  '01-three',
  encodeSegment([entry(0), entry(3), entry(9, { flags: TableFlag.ZERO, storedLength: 0, xxh64: 0n, strong: Buffer.alloc(16), writer: 0, codec: 0 })]),
);
write('table', '02-empty', encodeSegment([]));

const manifest = {
  format: MANIFEST_FORMAT,
  version: MANIFEST_VERSION,
  disk: 'd0',
  point: 2,
  parent: 1,
  full: false,
  createdAt: '2026-01-01T00:00:00.000Z',
  diskSize: 1048576,
  chunkSize: 65536,
  source: { kind: 'raw', location: '/x/d0.img' },
  table: { generation: 0, records: 2, segments: [{ key: 'disks/d0/tables/0000000002/g0000-000000', records: 2, first: 0, last: 3 }] },
  fence: 3,
  stats: { chunksTotal: 16, chunksChanged: 2, chunksZero: 1, bytesRead: 1048576, bytesWritten: 9000, seconds: 0.1 },
};
write('manifest', '01-plain.json', encodeManifest(manifest as any));
write(
  'manifest',
  '02-encrypted.json',
  encodeManifest({
    ...manifest,
    version: MANIFEST_VERSION_ENCRYPTED,
    encryption: { alg: 'aes-256-gcm', keyId: '0123456789abcdef0123456789abcdef' },
  } as any),
);

write('frame', '01-control', encodeFrame({ type: FrameType.CONTROL, stream: 0, seq: 1, meta: { op: 'hello', token: 'x', version: 1 } }));
write(
  'frame',
  '02-put',
  encodeFrame({
    type: FrameType.PUT,
    stream: 3,
    seq: 7,
    flags: FrameFlag.CHUNK,
    diskOffset: 65536,
    plainXxh64: 5n,
    meta: { key: 'disks/d0/chunks/0000000001/000000000001' },
    payload: header({ index: 1, writer: 1, payloadLength: 16 }),
  }),
);

// validate: "<key>\n<object>"
const chunkKey = 'disks/d0/chunks/0000000002/000000000005';
write(
  'validate',
  '01-chunk',
  Buffer.concat([Buffer.from(chunkKey + '\n'), header({ codec: 0, plainLength: 16, payloadLength: 16 }), Buffer.alloc(16, 7)]),
);
write('validate', '02-segment', Buffer.concat([Buffer.from('disks/d0/tables/0000000002/g0000-000000\n'), encodeSegment([entry(0), entry(3)])]));
write('validate', '03-manifest', Buffer.concat([Buffer.from('disks/d0/points/0000000002.json\n'), encodeManifest(manifest as any)]));
write(
  'validate',
  '04-pending',
  Buffer.from(
    'disks/d0/pending/0000000002.json\n' +
      JSON.stringify({
        format: 'rnode-pending',
        point: 2,
        parent: 1,
        scan: true,
        diskSize: 1048576,
        chunkSize: 65536,
        source: { kind: 'raw', location: '/x' },
        segments: [],
        records: 0,
        nextIndex: 4,
        stats: { bytesRead: 0, bytesWritten: 0, chunksChanged: 0, chunksZero: 0, chunksData: 0 },
      }),
  ),
);
write(
  'validate',
  '05-lease',
  Buffer.from(
    'disks/d0/lease.json\n' +
      JSON.stringify({
        format: 'rnode-lease',
        disk: 'd0',
        holder: 'n/1/a',
        token: 3,
        acquiredAt: '2026-01-01T00:00:00Z',
        expiresAt: '2026-01-01T00:01:00Z',
      }),
  ),
);

// NBD: a reply stream, and a server's side of a handshake.
const simple = (handle: bigint, error: number, data = Buffer.alloc(0)) => {
  const h = Buffer.alloc(16);
  h.writeUInt32BE(P.SIMPLE_REPLY_MAGIC, 0);
  h.writeUInt32BE(error, 4);
  h.writeBigUInt64BE(handle, 8);
  return Buffer.concat([h, data]);
};
const chunk = (handle: bigint, type: number, flags: number, payload: Buffer) => {
  const h = Buffer.alloc(20);
  h.writeUInt32BE(P.STRUCTURED_REPLY_MAGIC, 0);
  h.writeUInt16BE(flags, 4);
  h.writeUInt16BE(type, 6);
  h.writeBigUInt64BE(handle, 8);
  h.writeUInt32BE(payload.length, 16);
  return Buffer.concat([h, payload]);
};
const errPayload = Buffer.alloc(6 + 5 + 8);
errPayload.writeUInt32BE(5, 0);
errPayload.writeUInt16BE(5, 4);
errPayload.write('oops!', 6);
errPayload.writeBigUInt64BE(4096n, 11);
write(
  'nbd-replies',
  '01-mixed',
  Buffer.concat([
    simple(2n, 0, Buffer.alloc(64, 1)),
    simple(3n, 5),
    chunk(7n, P.ReplyType.OFFSET_DATA, 0, Buffer.alloc(24, 2)),
    chunk(7n, P.ReplyType.ERROR_OFFSET, 0, errPayload),
    chunk(7n, P.ReplyType.NONE, P.REPLY_FLAG_DONE, Buffer.alloc(0)),
    chunk(9n, P.ReplyType.BLOCK_STATUS, 1, Buffer.alloc(12, 3)),
  ]),
);

const u16 = (n: number) => {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
};
const u32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
};
const u64 = (n: bigint) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(n);
  return b;
};
const optReply = (opt: number, type: number, data = Buffer.alloc(0)) =>
  Buffer.concat([u64(P.OPTION_REPLY_MAGIC), u32(opt), u32(type), u32(data.length), data]);
const greeting = Buffer.concat([u64(P.NBDMAGIC), u64(P.IHAVEOPT), u16(P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES)]);
const exportInfo = Buffer.concat([u16(P.Info.EXPORT), u64(1048576n), u16(P.TFLAG_HAS_FLAGS | P.TFLAG_READ_ONLY)]);
const blockInfo = Buffer.concat([u16(P.Info.BLOCK_SIZE), u32(512), u32(4096), u32(33554432)]);
write(
  'nbd-handshake',
  '01-go',
  Buffer.concat([
    greeting,
    optReply(P.Opt.STRUCTURED_REPLY, P.Rep.ACK),
    optReply(P.Opt.LIST_META_CONTEXT, P.Rep.META_CONTEXT, Buffer.concat([u32(1), Buffer.from('qemu:dirty-bitmap:b0')])),
    optReply(P.Opt.LIST_META_CONTEXT, P.Rep.ACK),
    optReply(P.Opt.SET_META_CONTEXT, P.Rep.META_CONTEXT, Buffer.concat([u32(1), Buffer.from('base:allocation')])),
    optReply(P.Opt.SET_META_CONTEXT, P.Rep.ACK),
    optReply(P.Opt.GO, P.Rep.INFO, exportInfo),
    optReply(P.Opt.GO, P.Rep.INFO, blockInfo),
    optReply(P.Opt.GO, P.Rep.ACK),
  ]),
);

write(
  'xml',
  '01-soap.xml',
  `<?xml version="1.0" encoding="UTF-8"?>\n<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<soapenv:Body><RetrievePropertiesExResponse xmlns="urn:vim25"><returnval><objects><obj type="VirtualMachine">vm-42</obj>
<propSet><name>config.hardware.device</name><val xsi:type="ArrayOfVirtualDevice"><VirtualDevice xsi:type="VirtualDisk"><key>2000</key>
<capacityInBytes>1073741824</capacityInBytes><backing xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>[ds1] vm/vm.vmdk</fileName>
<changeId>52 de 2f 9c/4</changeId></backing></VirtualDevice></val></propSet></objects></returnval></RetrievePropertiesExResponse></soapenv:Body></soapenv:Envelope>`,
);
write(
  'xml',
  '02-fault.xml',
  `<?xml version="1.0"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode>
<faultstring>Cannot complete login &amp; &lt;retry&gt; &#x41;&#66;</faultstring><detail><InvalidLoginFault xmlns="urn:vim25" xsi:type="InvalidLogin"/></detail>
<!-- a comment --><![CDATA[raw <text>]]></soapenv:Fault></soapenv:Body></soapenv:Envelope>`,
);

const job = {
  jobId: 'j1',
  kind: 'replicate',
  store: { url: '/srv/store', env: { AWS_SECRET_ACCESS_KEY: { secretRef: 's3' } } },
  disks: [{ disk: 'd0', source: { location: '/x/d0.img' } }],
  chunkSize: 65536,
  bandwidth: 1000000,
};
write('control', '01-job-start.json', JSON.stringify({ v: 1, type: 'job.start', id: 's-1', job }));
write(
  'control',
  '02-policy.json',
  JSON.stringify({
    v: 1,
    type: 'policy.sync',
    id: 's-2',
    policies: [
      {
        group: 'g',
        revision: 3,
        rpoSeconds: 60,
        retention: { keep: 3 },
        store: { url: 's3://b/p' },
        disks: job.disks,
        encryption: { mode: 'aes-256-gcm', key: { secretRef: 'k' } },
      },
    ],
  }),
);
write(
  'control',
  '03-report.json',
  JSON.stringify({
    v: 1,
    type: 'job.completed',
    id: 'a-3',
    seq: 4,
    at: '2026-01-01T00:00:00Z',
    jobId: 'j1',
    kind: 'replicate',
    seconds: 1.5,
    results: [{ disk: 'd0', point: 3, parent: 2, full: false, resumed: true, bytesRead: 10 }],
  }),
);
write(
  'control',
  '04-hello.json',
  JSON.stringify({
    v: 1,
    type: 'hello',
    id: 'a-1',
    token: 'tok',
    protocols: [1],
    node: { id: 'n1', name: 'n', version: '0.1.0', hostname: 'h', pid: 1 },
    capabilities: { sources: ['raw'], stores: ['dir'], codecs: ['lz4'], jobs: ['replicate'], encryption: ['none'] },
    capacity: { slots: 2, bandwidth: 0 },
  }),
);
write(
  'control',
  '05-heartbeat.json',
  JSON.stringify({
    v: 1,
    type: 'heartbeat',
    id: 'a-2',
    health: { ready: true, inFlight: 0, queued: 0, slots: 2, load1: 0.1, rssBytes: 1, uptimeSeconds: 1, reportsQueued: 0, policies: 0, disks: 0 },
  }),
);
// Repository v2: envelopes, a pack, an index, a v3 segment (unsealed, deterministic; one sealed of each where a
// key matters, made once: their nonces are random), and the receiving node's view of each as "<key>\n<object>".
const plain = Domain.of(undefined);
const sealed = Domain.of(FUZZ_KEY);
write(
  'envelope',
  '01-manifest-body',
  sealEnvelope(EnvelopeKind.MANIFEST, FUZZ_CONTEXTS.envelope, Buffer.from(JSON.stringify({ format: 'rnode-point', version: 4 }))),
);
write('envelope', '02-empty-body', sealEnvelope(EnvelopeKind.TABLE, FUZZ_CONTEXTS.envelope, Buffer.alloc(0)));
const packOf = (d: Domain) => {
  const b = new PackBuilder(d.name, 1 << 20, d.key, FUZZ_OBJECT_ID);
  for (let i = 0; i < 3; i++) {
    const plainBytes = Buffer.alloc(64 + i, i + 1);
    b.add(d.key ? Buffer.alloc(plainBytes.length + 28, 0xc0 + i) : plainBytes, {
      id: d.chunkId(plainBytes),
      plainLength: plainBytes.length,
      codec: Codec.NONE,
    });
  }
  return b;
};
const plainPack = packOf(plain);
write('pack', '01-plain', plainPack.finish());
write('pack', '02-sealed', packOf(sealed).finish());
const locations = plainPack.entries.map((entry) => ({ packId: FUZZ_OBJECT_ID, entry }));
write('index', '01-plain', encodeIndex(plain, FUZZ_OBJECT_ID, locations));
write(
  'index',
  '02-sealed',
  encodeIndex(
    sealed,
    FUZZ_OBJECT_ID,
    packOf(sealed).entries.map((entry) => ({ packId: FUZZ_OBJECT_ID, entry })),
  ),
);
const v3 = [0, 3].map((index) => ({
  index,
  xxh64: 0n,
  strong: Buffer.alloc(16),
  writer: 2,
  plainLength: 65536,
  storedLength: 0,
  flags: 0,
  codec: 0,
  id: plain.chunkId(Buffer.from([index])),
}));
write('table-v3', '01-plain', encodeTableV3(plain, FUZZ_PLACE, [...v3, { ...v3[0], index: 9, flags: TableFlag.ZERO, id: undefined }]));
write(
  'table-v3',
  '02-sealed',
  encodeTableV3(
    sealed,
    FUZZ_PLACE,
    v3.map((e) => ({ ...e, id: sealed.chunkId(Buffer.from([e.index])) })),
  ),
);
const cfg = { format: 'rnode-repository' as const, version: 2 as const, domain: 'plain', packSize: 1 << 24, createdAt: '2026-01-01T00:00:00.000Z' };
write('validate', '06-r2-config', Buffer.concat([Buffer.from(r2.config('plain') + '\n'), encodeConfig(cfg)]));
write('validate', '07-r2-pack', Buffer.concat([Buffer.from(r2.pack('plain', FUZZ_OBJECT_ID) + '\n'), plainPack.finish()]));
write(
  'validate',
  '08-r2-index',
  Buffer.concat([Buffer.from(r2.index('plain', FUZZ_OBJECT_ID) + '\n'), encodeIndex(plain, FUZZ_OBJECT_ID, locations)]),
);
write('validate', '09-r2-table', Buffer.concat([Buffer.from(r2.segment('plain', 'd0', 2, 0, 0) + '\n'), encodeTableV3(plain, FUZZ_PLACE, v3)]));
write(
  'validate',
  '10-r2-pending',
  Buffer.concat([Buffer.from(r2.pending('plain', 'd0', 2) + '\n'), encodePendingV2(plain, 'd0', 2, { point: 2, nextIndex: 4 })]),
);
write('validate', '11-r2-sealed-pack', Buffer.concat([Buffer.from(r2.pack(sealed.name, FUZZ_OBJECT_ID) + '\n'), packOf(sealed).finish()]));
console.log('corpus written to', CORPUS);
