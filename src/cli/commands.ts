// The rnode commands: parse, validate, call the library, print. No policy lives here.
import { ErrorCodes, RnodeError } from '../errors.js';
import { fileUrlPath } from '../file-url.js';
import { codecByName } from '../format/codecs.js';
import { validateDiskId, validateNewDiskId } from '../repository/names.js';
import { isStoreFull } from '../store/common.js';
import { isVirtualFsPath, unusablePath } from '../store/fs/dirs.js';
import { parseSize, validateChunkSize } from '../pipeline/grid.js';
import type { StageTimes } from '../pipeline/stages.js';
import type { CheckpointState } from '../jobs/replicate.js';
import { ENCRYPTION_OPTIONS, ENCRYPTION_USAGE, encryptionKeyFrom, parse, parseDuration, required, str } from './args.js';
import { agentCommand } from './agent.js';
import type { Command, Io } from './command.js';
import { exportCmd } from './export.js';
import { serveCmd } from './serve.js';
import {
  isRemoteLocation,
  maintainedWhereStored,
  remotePruneSweeps,
  REMOTE_OPTIONS,
  REMOTE_USAGE,
  remoteReplicateOptions,
  withStore,
} from './store-flags.js';
import { bytes, failureLine, rate, secs } from './format.js';
import { ProgressBar } from './progress.js';
import { stoppable, untilStopped } from './signals.js';
import {
  checkVmForm,
  isVmwareSource,
  vmPointOptions,
  vmwareReplicateOptions,
  VM_POINTS_USAGE,
  VM_PRUNE_USAGE,
  VM_RECOVER_USAGE,
  VMWARE_REPLICATE_USAGE,
} from './vmware-flags.js';
import os from 'node:os';
import path from 'node:path';

export type { Command, Io } from './command.js';

// Each command loads what it runs when it runs (a dynamic import in run()): `rnode recover` from a local store then
// starts without the peer transport, the VMware and cloud code, the export server and the other jobs, which cost
// about 0.5 s of CPU at every start.

/** What verify, check and stats say when a signal stopped them: they only read. */
const READ_ONLY_STOP = 'nothing was changed: run it again';

/** What a stopped replicate kept, as the job found it (details.checkpoint): only a checkpoint written is claimed. */
function replicateStopNote(err: RnodeError): string {
  switch (err.details.checkpoint as CheckpointState | undefined) {
    case 'all':
      return 'the chunks stored so far are checkpointed: run the same command again to resume';
    case 'earlier':
      return 'its last checkpoint is kept (the chunks stored after it are not in it): run the same command again to resume from there';
    case 'none':
      if (typeof err.details.startsOver === 'string') return `${err.details.startsOver}: run the same command again`;
      return 'no checkpoint was written: the same command run again starts the point over';
    default:
      return 'run the same command again: it resumes from the last checkpoint, if one was written';
  }
}

const print = (io: Io, json: boolean, obj: unknown, human: () => string[]) => {
  if (json) io.out(JSON.stringify(obj));
  else for (const l of human()) io.out(l);
};

const replicateCmd: Command = {
  summary: 'create one recovery point of a disk',
  usage: `rnode replicate --source <path> --target <store> [--disk <id>] [--chunk-size <bytes|64KiB..16MiB>] [--compression lz4|lz4-blocks|none] [--pack-size <bytes|64KiB..256MiB>] [--full] [--concurrency <n>] [--bandwidth <bytes/s>] [--cache-dir <dir>|none] ${ENCRYPTION_USAGE} ${REMOTE_USAGE} [--json]\n       ${VMWARE_REPLICATE_USAGE}`,
  options: {
    source: { type: 'string' },
    target: { type: 'string' },
    disk: { type: 'string' },
    'chunk-size': { type: 'string' },
    compression: { type: 'string' },
    'pack-size': { type: 'string' },
    full: { type: 'boolean' },
    concurrency: { type: 'string' },
    bandwidth: { type: 'string' },
    'cache-dir': { type: 'string' },
    ...ENCRYPTION_OPTIONS,
    ...REMOTE_OPTIONS,
    ...vmwareReplicateOptions,
  },
  async run(v, io) {
    if (isVmwareSource(v)) return (await import('./vmware.js')).replicateVmwareCommand(v, io);
    if (v['disk-parallelism'] !== undefined) {
      throw new RnodeError(ErrorCodes.USAGE, '--disk-parallelism is for a VMware source (its disks at once); a disk or image source has one disk');
    }
    required(v, 'replicate', 'source', 'target');
    const sourceArg = str(v, 'source')!;
    // An NBD URL has no file name to take an id from: every qemu-nbd socket's default export would be one disk.
    if (v.disk === undefined && /^nbd(\+unix)?:\/\//i.test(sourceArg)) {
      throw new RnodeError(
        ErrorCodes.USAGE,
        `an NBD source needs --disk: its URL names no file to take a disk id from, and two exports given one id would be stored as one disk; pass --disk <id>, the same id on every run of this disk`,
      );
    }
    const disk = validateNewDiskId(str(v, 'disk') ?? defaultDiskId(sourceArg));
    const chunkSize = v['chunk-size'] !== undefined ? validateChunkSize(str(v, 'chunk-size')!) : undefined;
    const codec = v.compression !== undefined ? codecByName(str(v, 'compression')!) : undefined;
    const { validatePackSize } = await import('../repository/domain.js');
    const packSize = v['pack-size'] !== undefined ? validatePackSize(parseSizeArg(str(v, 'pack-size')!, 'pack-size')) : undefined;
    const concurrency = v.concurrency !== undefined ? positiveInt(str(v, 'concurrency')!, 'concurrency') : undefined;
    const encryption = encryptionKeyFrom(v);
    // One limit for every kind of target (directory, cloud, ws://): the store's puts are paced, lease writes exempt.
    const bandwidth = v.bandwidth !== undefined ? (await import('../transport/index.js')).parseBandwidth(str(v, 'bandwidth')!) : undefined;
    const { replicate, SOURCE_CHANGED_WARNING } = await import('../jobs/replicate.js');
    // A file's absolute path goes into the point: what a later run without --disk compares against (plan.ts).
    const cache = changeHashDir(str(v, 'cache-dir'));
    const { openSource } = await import('../source/index.js');
    const target = str(v, 'target')!;
    const bar = new ProgressBar({ label: `replicate ${disk}`, enabled: v.json !== true });
    // The source opens under the stop signal too: an NBD handshake waits up to 30 s for a busy server.
    const r = await stoppable('replicate', replicateStopNote, async (signal) => {
      const opening = openSource(isUrlSource(sourceArg) ? sourceArg : path.resolve(sourceArg));
      const source = await untilStopped(opening, signal, 'opening the source', (s) => s.close());
      try {
        return await withStore(
          target,
          (store) =>
            replicate({
              store,
              source,
              disk,
              chunkSize,
              codec,
              packSize,
              concurrency,
              encryption,
              forceFull: v.full === true,
              signal,
              onProgress: (p) => bar.update(p.position, p.diskSize),
              ...cache,
              // On stderr, with --json too: the point is made, but every later incremental is slower, and only this says why.
              onChangeHashesNotKept: (err) => io.err(`rnode: warning: ${cacheNotKept(cache, err)}`),
              diskNamedAfterSource: v.disk === undefined,
              ...(isRemoteLocation(target) ? remoteReplicateOptions(concurrency, chunkSize) : {}),
              ...(packSize !== undefined ? { packSize } : {}),
            }),
          v,
          { bandwidth, creates: true, flag: '--target', signal },
        );
      } finally {
        await source.close();
      }
    }).finally(() => bar.done());
    // On stderr, with --json too (which carries sourceChangedWhileRead): the point is made, and may not be consistent.
    if (r.sourceChangedWhileRead) io.err(`rnode: warning: point ${r.point} of disk ${r.disk}: ${SOURCE_CHANGED_WARNING}`);
    print(io, v.json === true, r, () => [
      `point ${r.point} of disk ${r.disk}: ${r.full ? 'full' : `incremental on point ${r.rebasedFrom ?? r.parent}`}${r.resumed ? ' (resumed)' : ''}` +
        (r.rebasedFrom !== undefined ? ' (its table stands alone: the chain of deltas was at its length limit)' : '') +
        (r.fullReason ? ` (${r.fullReason})` : '') +
        (r.rescanReason ? ` (read in full: ${r.rescanReason})` : ''),
      // A resumed run's figures are the whole point's (its checkpoints carry them); its seconds are its own.
      r.resumed
        ? `  read     ${bytes(r.bytesRead)} of a ${bytes(r.diskSize)} disk for the whole point, with the interrupted run's; this run took ${secs(r.seconds)}`
        : `  read     ${bytes(r.bytesRead)} of a ${bytes(r.diskSize)} disk in ${secs(r.seconds)} (${rate(r.diskSize, r.seconds)} of disk)`,
      `  chunks   ${r.chunksChanged} changed, ${r.chunksZero} zero, ${r.chunksTotal} in all (${bytes(r.chunkSize)} each)`,
      `  dedup    ${r.chunksDeduplicated} chunks (${bytes(r.bytesDeduplicated)}) already in the repository; ${r.packsWritten} packs written`,
      `  stored   ${bytes(r.bytesWritten)}${r.encryption ? ` (encrypted, ${r.encryption.alg}, key id ${r.encryption.keyId})` : ''}`,
      ...(r.stages ? [stagesLine(r.stages)] : []),
    ]);
    return 0;
  },
};

/** Where a replicate's time went; stage sums of concurrent chunks may exceed the wall time. */
/**
 * Where replicate keeps this node's change hashes (src/jobs/replicate/change-hashes.ts): --cache-dir, else
 * $RNODE_CACHE_DIR, else $XDG_CACHE_HOME/rnode or ~/.cache/rnode; "none" keeps none. `from` names which, for messages.
 */
function changeHashDir(flag: string | undefined): { changeHashDir?: string; changeHashDirFrom?: string } {
  const from = flag !== undefined ? '--cache-dir' : process.env.RNODE_CACHE_DIR ? 'RNODE_CACHE_DIR' : undefined;
  const dir = flag ?? (process.env.RNODE_CACHE_DIR || undefined);
  if (dir === 'none') return {};
  if (dir && isVirtualFsPath(dir)) {
    throw new RnodeError(
      ErrorCodes.PATH_UNUSABLE,
      `cache folder ${dir}${from === 'RNODE_CACHE_DIR' ? ' (from RNODE_CACHE_DIR)' : ''} is on a kernel virtual filesystem (/proc, /sys), which holds no files; ` +
        `choose another folder, or ${from === '--cache-dir' ? '--cache-dir none' : 'RNODE_CACHE_DIR=none'}`,
    );
  }
  if (dir) return { changeHashDir: path.resolve(dir), changeHashDirFrom: from };
  // The XDG spec: a relative path in XDG_CACHE_HOME is invalid and ignored (it would name a folder under whatever
  // folder the command happens to run in).
  const xdg = path.isAbsolute(process.env.XDG_CACHE_HOME ?? '') ? process.env.XDG_CACHE_HOME : undefined;
  return {
    changeHashDir: path.join(xdg || path.join(os.homedir(), '.cache'), 'rnode'),
    changeHashDirFrom: xdg ? 'XDG_CACHE_HOME' : 'cache folder',
  };
}

/** Why a replicate kept no change hashes, and what to do: one line naming the folder. */
function cacheNotKept(cache: { changeHashDir?: string; changeHashDirFrom?: string }, err: unknown): string {
  const from = cache.changeHashDirFrom;
  const what = `cache folder ${cache.changeHashDir}${from === 'RNODE_CACHE_DIR' ? ' (from RNODE_CACHE_DIR)' : ''}`;
  const fix =
    from === 'RNODE_CACHE_DIR'
      ? 'choose another folder, or RNODE_CACHE_DIR=none'
      : `choose another folder${from === '--cache-dir' ? '' : ' with --cache-dir'}, or --cache-dir none`;
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  const why =
    unusablePath(what, err, fix)?.message ?? `${what} could not be written (${code ?? (err instanceof Error ? err.message : String(err))}); ${fix}`;
  return `no change hashes of this point were kept, so the next incremental compares its chunks by id (slower): ${why}`;
}

function stagesLine(s: StageTimes): string {
  const f = (x: number) => `${x.toFixed(2)} s`;
  return (
    `  time     read ${f(s.read)}, hash ${f(s.hash)}, compress ${f(s.compress)}, encrypt ${f(s.encrypt)}, ` +
    `write ${f(s.write)} (summed over chunks in flight); reader waited ${f(s.wait)} ` +
    `(${f(s.waitFor.encode)} for encoding, ${f(s.waitFor.write)} for the store)`
  );
}

const pointsCmd: Command = {
  summary: 'list the committed points of a disk, oldest first',
  usage: `rnode points --store <store> --disk <id> [--encryption-key-file <path>] ${REMOTE_USAGE} [--json]\n       ${VM_POINTS_USAGE}`,
  options: { store: { type: 'string' }, disk: { type: 'string' }, ...ENCRYPTION_OPTIONS, ...REMOTE_OPTIONS, ...vmPointOptions },
  async run(v, io) {
    checkVmForm('points', v, ['disk']);
    if (v.vm !== undefined) return (await import('./vmware.js')).vmPointsCommand(v, io);
    const { listPointsOf } = await import('../repository/points.js');
    required(v, 'points', 'store', 'disk');
    const disk = validateDiskId(str(v, 'disk')!);
    // An encrypted disk's v2 points have keyed names: they are listed with its key only.
    const key = encryptionKeyFrom(v);
    const { points, problems } = await withStore(str(v, 'store')!, (store) => listPointsOf(store, disk, key), v);
    const rows = points.map((m) => ({
      point: m.point,
      parent: m.parent,
      full: m.full,
      createdAt: m.createdAt,
      diskSize: m.diskSize,
      chunkSize: m.chunkSize,
      chunksChanged: m.stats.chunksChanged,
      bytesWritten: m.stats.bytesWritten,
      source: m.source,
      ...(m.encryption ? { encryption: m.encryption } : {}),
    }));
    print(io, v.json === true, { disk, points: rows, problems }, () => [
      ...(rows.length === 0
        ? [problems.length ? `disk ${disk} has no readable points` : `disk ${disk} has no points`]
        : [
            'point  parent  kind         created                   disk size   changed  stored      encryption key id',
            ...rows.map(
              (r) =>
                `${String(r.point).padEnd(6)} ${String(r.parent ?? '-').padEnd(7)} ${(r.full ? 'full' : 'incremental').padEnd(12)} ` +
                `${r.createdAt.padEnd(25)} ${bytes(r.diskSize).padEnd(11)} ${String(r.chunksChanged).padEnd(8)} ${bytes(r.bytesWritten).padEnd(11)} ${r.encryption?.keyId ?? '-'}`,
            ),
          ]),
      ...problems.map((p) => `point ${p.point} cannot be read: ${p.code}: ${p.message}`),
    ]);
    // Exit 1 with every readable point listed, as `disks` does: a caller that only reads the exit code learns of the damage.
    if (problems.length && v.json !== true) {
      io.err(failureLine(problems[0].code, `${problems.length} point(s) of disk ${disk} cannot be read, named above; the others are listed`));
    }
    return problems.length ? 1 : 0;
  },
};

/** The disks of a store, each with its points: what an operator who holds only the store needs first. */
const disksCmd: Command = {
  summary: 'list the disks of a store, each with its number of points and its latest one',
  usage: `rnode disks --store <store> [--encryption-key-file <path>] ${REMOTE_USAGE} [--json]`,
  options: { store: { type: 'string' }, ...ENCRYPTION_OPTIONS, ...REMOTE_OPTIONS },
  async run(v, io) {
    required(v, 'disks', 'store');
    return disksOfStore(v, io);
  },
};

async function disksOfStore(v: Record<string, string | boolean | undefined>, io: Io): Promise<number> {
  const { listDisks } = await import('../jobs/disks.js');
  const key = encryptionKeyFrom(v);
  const r = await withStore(str(v, 'store')!, (store) => listDisks(store, key), v);
  print(io, v.json === true, r, () => [
    ...(r.disks.length === 0
      ? [r.unlisted.length ? 'no disk can be listed without a key' : r.problems.length ? 'no disk could be read' : 'the store holds no disks']
      : [
          'disk                              points  latest  created                   disk size   encryption key id',
          ...r.disks.map(
            (d) =>
              `${d.disk.padEnd(33)} ${String(d.points).padEnd(7)} ${String(d.latest).padEnd(7)} ${d.createdAt.padEnd(25)} ` +
              `${bytes(d.diskSize).padEnd(11)} ${d.encryption?.keyId ?? '-'}`,
          ),
        ]),
    ...r.unlisted.map(
      (u) =>
        `not listed: ${u.disks} disk${u.disks === 1 ? '' : 's'} of ${u.domain === 'legacy' ? 'the legacy format' : `repository ${u.domain}`}, ` +
        `encrypted with ${key ? 'another key' : 'a key'}; pass it with --encryption-key-file`,
    ),
    ...r.problems.map((p) => `${p.disk}: ${p.code}: ${p.message}`),
    ...(r.disks.length ? ['points of one disk: rnode points --store <store> --disk <id>'] : []),
  ]);
  if (r.problems.length && v.json !== true)
    io.err(failureLine(r.problems[0].code, `${r.problems.length} disk(s) could not be read; first: ${r.problems[0].message}`));
  return r.problems.length ? 1 : 0;
}

const recoverCmd: Command = {
  summary: 'write a disk as it was at a point, verified and byte-exact',
  usage: `rnode recover --store <store> --disk <id> [--point <n>|latest] --out <path|s3://bucket/key|azblob://container/name.vhd|gs://bucket/name.tar.gz> ${ENCRYPTION_USAGE} ${REMOTE_USAGE} [--json]\n       ${VM_RECOVER_USAGE}`,
  options: {
    store: { type: 'string' },
    disk: { type: 'string' },
    point: { type: 'string' },
    out: { type: 'string' },
    ...ENCRYPTION_OPTIONS,
    ...REMOTE_OPTIONS,
    ...vmPointOptions,
    'out-dir': { type: 'string' },
  },
  async run(v, io) {
    checkVmForm('recover', v, ['disk', 'out']);
    if (v.vm !== undefined) return (await import('./vmware.js')).vmRecoverCommand(v, io);
    const { recover } = await import('../jobs/restore.js');
    required(v, 'recover', 'store', 'disk', 'out');
    const disk = validateDiskId(str(v, 'disk')!);
    const encryption = encryptionKeyFrom(v);
    const bar = new ProgressBar({ label: `recover ${disk}`, enabled: v.json !== true });
    const r = await stoppable('recover', 'run the same command again to recover the point', (signal) =>
      withStore(
        str(v, 'store')!,
        (store) =>
          recover({
            store,
            disk,
            point: str(v, 'point'),
            out: str(v, 'out')!,
            encryption,
            signal,
            onProgress: (p) => bar.update(p.bytesWritten, p.diskSize),
          }),
        v,
      ),
    ).finally(() => bar.done());
    print(io, v.json === true, r, () => [
      `recovered point ${r.point} of disk ${r.disk} to ${r.out}`,
      `  ${bytes(r.diskSize)} disk, ${r.chunksRestored} chunks verified, ${bytes(r.bytesWritten)} written (zeros skipped where the output is sparse) in ${secs(r.seconds)} (${rate(r.diskSize, r.seconds)})`,
    ]);
    return 0;
  },
};

const verifyCmd: Command = {
  summary: 'check that points and every chunk they reference are intact',
  usage: `rnode verify --store <store> --disk <id> [--point <n>|latest|all] ${ENCRYPTION_USAGE} ${REMOTE_USAGE} [--json]`,
  options: { store: { type: 'string' }, disk: { type: 'string' }, point: { type: 'string' }, ...ENCRYPTION_OPTIONS, ...REMOTE_OPTIONS },
  async run(v, io) {
    required(v, 'verify', 'store', 'disk');
    const { verify } = await import('../jobs/verify.js');
    const disk = validateDiskId(str(v, 'disk')!);
    const encryption = encryptionKeyFrom(v);
    const r = await stoppable('verify', READ_ONLY_STOP, (signal) =>
      withStore(str(v, 'store')!, (store) => verify({ store, disk, point: str(v, 'point'), encryption, signal }), v),
    );
    print(io, v.json === true, r, () => [
      `${r.ok ? 'ok' : 'FAILED'}: point${r.points.length > 1 ? 's' : ''} ${r.points.join(', ')} of disk ${r.disk}, ${r.chunksChecked} chunks (${bytes(r.bytesChecked)}) checked in ${secs(r.seconds)}`,
      ...(r.checked === 'stored-bytes'
        ? [
            '  encrypted and no --encryption-key-file: checked chunk headers and the xxh64 of every stored object only, not the contents; pass the key to decrypt and check them',
          ]
        : r.encrypted
          ? ['  encrypted: every chunk decrypted (AES-256-GCM tag) and its keyed digests checked']
          : []),
      ...(r.removed.length
        ? [
            `  point${r.removed.length > 1 ? 's' : ''} ${r.removed.join(', ')} skipped: deleted by a concurrent prune after being listed (not a problem)`,
          ]
        : []),
      ...r.problems.map((p) => `  ${p.code}: ${p.message}`),
    ]);
    if (!r.ok && v.json !== true) io.err(failureLine(r.problems[0].code, `${r.problems.length} problem(s) found; first: ${r.problems[0].message}`));
    return r.ok ? 0 : 1;
  },
};

const pruneCmd: Command = {
  summary: 'keep the newest points of a disk; delete what no kept point uses (two phases), repack, compact indexes',
  usage: `rnode prune --store <store> [--disk <id> --keep <n>] [--grace <duration>] [--max-unused <percent>] [--reset-marks] ${ENCRYPTION_USAGE} ${REMOTE_USAGE} [--json]\n       ${VM_PRUNE_USAGE}`,
  options: {
    store: { type: 'string' },
    disk: { type: 'string' },
    keep: { type: 'string' },
    grace: { type: 'string' },
    'max-unused': { type: 'string' },
    'reset-marks': { type: 'boolean' },
    ...ENCRYPTION_OPTIONS,
    ...REMOTE_OPTIONS,
    ...vmPointOptions,
  },
  async run(v, io) {
    checkVmForm('prune', v, ['disk']);
    if (v.vm !== undefined) return (await import('./vmware.js')).vmPruneCommand(v, io);
    const { DEFAULT_GRACE_MS, DEFAULT_MAX_UNUSED, pruneStore } = await import('../jobs/prune-v2.js');
    required(v, 'prune', 'store');
    if ((v.disk === undefined) !== (v.keep === undefined)) {
      throw new RnodeError(
        ErrorCodes.USAGE,
        '"rnode prune" takes --disk and --keep together (or neither: maintenance only); see "rnode prune --help"',
      );
    }
    const disk = v.disk !== undefined ? validateDiskId(str(v, 'disk')!) : undefined;
    const keep = v.keep !== undefined ? positiveInt(str(v, 'keep')!, 'keep') : undefined;
    const graceMs = v.grace !== undefined ? parseDuration(str(v, 'grace')!, 'grace') : DEFAULT_GRACE_MS;
    const maxUnused = v['max-unused'] !== undefined ? parsePercent(str(v, 'max-unused')!, 'max-unused') : DEFAULT_MAX_UNUSED;
    const encryption = encryptionKeyFrom(v);
    const sweep = remotePruneSweeps(str(v, 'store')!, disk !== undefined);
    const r = await stoppable(
      'prune',
      'the repository is consistent (prune stops only between two steps) and what it deleted stays ' +
        'deleted: run the same command again to continue',
      (signal) =>
        withStore(
          str(v, 'store')!,
          (store) =>
            pruneStore({
              store,
              disk,
              keep,
              encryption,
              graceMs,
              maxUnused,
              resetMarks: v['reset-marks'] === true,
              sweep,
              retentionRefused: sweep ? undefined : () => maintainedWhereStored(str(v, 'store')!, 'prune'),
              reportSkipped: true,
              signal,
            }),
          v,
        ),
    ).catch((err: unknown) => {
      // Repack writes new packs before it deletes the old: on a full store the way out is a prune without it.
      if (!isStoreFull(err) || maxUnused === 0) throw err;
      throw new RnodeError(
        err.code,
        `${err.message}; or add --max-unused 0 to free what needs no repack (a repack writes new packs before it deletes old ones)`,
        {
          cause: err,
          retryable: err.retryable,
          details: err.details,
        },
      );
    });
    print(io, v.json === true, r, () => [
      ...(r.disk !== undefined
        ? [
            `kept point${r.kept.length > 1 ? 's' : ''} ${r.kept.join(', ')} of disk ${r.disk}; deleted ${r.deleted.length ? r.deleted.join(', ') : 'none'}`,
            `  ${r.chunksDeleted} chunks and ${r.objectsDeleted} other objects deleted in ${secs(r.seconds)}`,
          ]
        : []),
      ...r.domains.map((d) =>
        d.sweptBy !== undefined
          ? `  repository ${d.domain}: not swept: ${d.deferred}`
          : `  repository ${d.domain}: ${d.packs} packs; ${d.packsSeen} newly unused, ${d.packsMarked} marked, ${d.packsUnmarked} in use again, ` +
            `${d.packsDeleted} deleted (${bytes(d.bytesDeleted)}); ${d.packsRepacked} repacked (${bytes(d.bytesRewritten)} rewritten); ` +
            `${d.indexesDeleted} index objects merged into ${d.indexesWritten}` +
            (d.tableObjectsDeleted ? `; ${d.tableObjectsDeleted} tables and checkpoints no point needs deleted` : '') +
            `${d.missingChunks ? `; ${d.missingChunks} referenced chunks MISSING (run "rnode check")` : ''}` +
            (d.deferred ? `; nothing deleted: ${d.deferred}` : ''),
      ),
      ...r.skipped.map(
        (s) =>
          `  repository ${s.domain}: not swept (${s.code}: encrypted, ${encryption ? 'with another key' : 'no key given'}); ` +
          'pass its key with --encryption-key-file to sweep it',
      ),
    ]);
    // Chunks the points use that no index object locates: the repository is damaged (the sweep deleted nothing).
    return r.domains.some((d) => d.missingChunks > 0) ? 1 : 0;
  },
};

const statsCmd: Command = {
  summary: 'what a store holds: disks, points, logical and stored size, dedup ratio, packs, unused bytes',
  usage: `rnode stats --store <store> ${ENCRYPTION_USAGE} ${REMOTE_USAGE} [--json]`,
  options: { store: { type: 'string' }, ...ENCRYPTION_OPTIONS, ...REMOTE_OPTIONS },
  async run(v, io) {
    required(v, 'stats', 'store');
    const { stats } = await import('../jobs/stats.js');
    const encryption = encryptionKeyFrom(v);
    const r = await stoppable('stats', READ_ONLY_STOP, (signal) => withStore(str(v, 'store')!, (store) => stats({ store, encryption, signal }), v));
    print(io, v.json === true, r, () => [
      `${r.disks} disks, ${r.points} points, logical size ${bytes(r.logicalBytes)}, stored ${bytes(r.storedBytes)}` +
        (r.dedupRatio !== null ? `, dedup ratio ${r.dedupRatio.toFixed(2)}` : '') +
        `, ${r.packs} packs, ${bytes(r.unusedBytes)} unused` +
        (r.pendingBytes > 0 ? `, ${bytes(r.pendingBytes)} in points being written` : ''),
      ...r.domains.map((d) =>
        d.readable
          ? `  repository ${d.domain}${d.encrypted ? ' (encrypted)' : ''}: ${d.disks} disks, ${d.points} points, logical ${bytes(d.logicalBytes!)}, ` +
            `data ${bytes(d.dataBytes!)}, unique ${bytes(d.uniqueBytes!)}, dedup ratio ${d.dedupRatio!.toFixed(2)}, stored ${bytes(d.storedBytes)} ` +
            `in ${d.objects} objects (${d.packs} packs, ${d.indexObjects} index objects), unused ${bytes(d.unusedBytes!)}` +
            (d.pendingBytes! > 0 ? `, in points being written ${bytes(d.pendingBytes!)}` : '')
          : r.sealedWithoutKey.includes(d.domain)
            ? `  repository ${d.domain} (encrypted, ${encryption ? 'with another key' : 'no key given'}): ${d.objects} objects, ${bytes(d.storedBytes)} (${d.packs} packs); pass its key with --encryption-key-file for the rest`
            : `  repository ${d.domain}${d.encrypted ? ' (encrypted)' : ''}: ${d.objects} objects, ${bytes(d.storedBytes)} (${d.packs} packs); the rest cannot be read, named below`,
      ),
      ...(r.legacy.objects > 0
        ? [
            `  legacy format: ${r.legacy.disks} disks, ${r.legacy.points} points, logical ${bytes(r.legacy.logicalBytes)}, stored ${bytes(r.legacy.storedBytes)} in ${r.legacy.objects} objects`,
          ]
        : []),
      ...r.problems.map(
        (p) => `${p.domain !== undefined ? `repository ${p.domain}` : `legacy disk ${p.disk}`} cannot be read: ${p.code}: ${p.message}`,
      ),
    ]);
    // Exit 1 with every readable figure printed, as `points` does: a caller that only reads the exit code learns of the damage.
    if (r.problems.length && v.json !== true) {
      io.err(
        failureLine(r.problems[0].code, `${r.problems.length} repository(ies) or legacy disk(s) cannot be read, named above; the others are counted`),
      );
    }
    return r.problems.length ? 1 : 0;
  },
};

/** What a prune running beside check or verify deleted after it was listed: said, not counted as a problem. */
function removedNote(r: { packs: number; indexObjects: number; points: number }): string {
  const what = [
    ...(r.packs ? [`${r.packs} pack${r.packs === 1 ? '' : 's'}`] : []),
    ...(r.indexObjects ? [`${r.indexObjects} index object${r.indexObjects === 1 ? '' : 's'}`] : []),
    ...(r.points ? [`${r.points} point${r.points === 1 ? '' : 's'}`] : []),
  ];
  return what.length ? `; ${what.join(', ')} deleted by a concurrent prune after being listed (not a problem)` : '';
}

const checkCmd: Command = {
  summary: "check the whole repository's structure (and with --read-data every byte)",
  usage: `rnode check --store <store> [--read-data [--repair]] ${ENCRYPTION_USAGE} ${REMOTE_USAGE} [--json]`,
  options: { store: { type: 'string' }, 'read-data': { type: 'boolean' }, repair: { type: 'boolean' }, ...ENCRYPTION_OPTIONS, ...REMOTE_OPTIONS },
  async run(v, io) {
    required(v, 'check', 'store');
    // --repair rewrites packs and merges indexes, deleting what they replace, which a receiving node refuses over the
    // link: the repair failed half done, every index entry left doubled. Refused before anything is written.
    if (v.repair === true && isRemoteLocation(str(v, 'store')!)) throw maintainedWhereStored(str(v, 'store')!, 'check --read-data --repair');
    const { check } = await import('../jobs/check.js');
    const encryption = encryptionKeyFrom(v);
    const r = await stoppable('check', READ_ONLY_STOP, (signal) =>
      withStore(str(v, 'store')!, (store) => check({ store, encryption, readData: v['read-data'] === true, repair: v.repair === true, signal }), v),
    );
    print(io, v.json === true, r, () => [
      `${r.ok ? 'ok' : 'FAILED'}: ${r.domains.length} repositor${r.domains.length === 1 ? 'y' : 'ies'}, ${r.legacy.disks} legacy disks checked` +
        `${r.readData ? ', every blob read' : ''} in ${secs(r.seconds)}`,
      ...r.domains.map(
        (d) =>
          `  repository ${d.domain}: ${d.disks} disks, ${d.points} points, ${d.chunksReferenced} chunk references, ${d.packs} packs, ` +
          `${d.indexObjects} index objects (${d.indexEntries} entries${d.danglingIndexEntries ? `, ${d.danglingIndexEntries} of deleted packs` : ''})` +
          (d.unreferencedTableSegments ? `, ${d.unreferencedTableSegments} table segments no point uses (the next prune deletes them)` : '') +
          (r.readData ? `, ${d.blobsRead} blobs (${bytes(d.bytesRead)}) read` : '') +
          removedNote(d.removedDuringCheck),
      ),
      ...r.skipped.map((s) => `  repository ${s.domain}: not checked (${s.code}: encrypted with another key)`),
      ...r.problems.map((p) => `  ${p.code}: ${p.message}`),
      ...r.domains.flatMap((d) => [
        ...(d.repair && d.repair.dropped.length > 0
          ? [
              `  repaired repository ${d.domain}: ${d.repair.packsRepaired} pack(s) rewritten without their ${d.repair.dropped.length} damaged chunk(s) ` +
                `(${d.repair.blobsCopied} intact chunks copied); replicate the disks that held them again: every point that uses them restores once ` +
                'a replicate has stored them anew (--full where the source has not changed there)',
            ]
          : []),
        // Packs whose only damage was their trailer: every chunk was copied, nothing is left to replicate again.
        ...(d.repair && d.repair.packsRepaired > 0 && d.repair.dropped.length === 0
          ? [`  repaired repository ${d.domain}: ${d.repair.packsRepaired} pack(s) rewritten whole (${d.repair.blobsCopied} intact chunks copied)`]
          : []),
        ...(d.repair && (d.repair.blobsIndexed > 0 || d.repair.damagedIndexesDeleted > 0)
          ? [
              `  repaired repository ${d.domain}: ${d.repair.blobsIndexed} intact chunk(s) that no index object named indexed again from their packs, ` +
                `${d.repair.damagedIndexesDeleted} damaged index object(s) deleted; run check again to confirm`,
            ]
          : []),
      ]),
    ]);
    if (!r.ok && v.json !== true) io.err(failureLine(r.problems[0].code, `${r.problems.length} problem(s) found; first: ${r.problems[0].message}`));
    return r.ok ? 0 : 1;
  },
};

export const commands: Record<string, Command> = {
  replicate: replicateCmd,
  disks: disksCmd,
  points: pointsCmd,
  recover: recoverCmd,
  verify: verifyCmd,
  prune: pruneCmd,
  stats: statsCmd,
  check: checkCmd,
  agent: agentCommand,
  serve: serveCmd,
  export: exportCmd,
};

export function positiveInt(text: string, flag: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(n) || n < 1) {
    throw new RnodeError(ErrorCodes.USAGE, `--${flag} must be a whole number of at least 1 (got "${text}")`);
  }
  return n;
}

/** "25", "25%" -> 0.25; 0 allowed (never). */
export function parsePercent(text: string, flag: string): number {
  const m = /^(\d+(?:\.\d+)?)%?$/.exec(text.trim());
  const n = m ? Number(m[1]) : NaN;
  if (!(n >= 0 && n <= 100)) throw new RnodeError(ErrorCodes.USAGE, `--${flag} must be a percentage from 0 to 100, 0 meaning never (got "${text}")`);
  return n / 100;
}

/** An nbd://, vddk://, http:// ... source, not a file path. */
function isUrlSource(source: string): boolean {
  return /^[a-z][a-z0-9+.-]*:\/\//i.test(source);
}

/** The source file's base name, made into a valid disk id. */
export function defaultDiskId(source: string): string {
  // A URL's query and fragment are not its name (nbd://host/export?tls=...); a file's name may hold '?' and '#'. A
  // file:// URL names the file its decoded path names (file:///vm/my%20vm.img is my vm.img), as its path does.
  const name = /^file:/i.test(source) ? fileUrlName(source) : isUrlSource(source) ? source.replace(/[?#].*$/, '') : source;
  const base = path
    .basename(name.replace(/\/+$/, ''))
    .replace(/[^A-Za-z0-9._-]/g, '_')
    .replace(/^[._-]+/, '');
  return base.slice(0, 128) || 'disk';
}

/** The path of a file:// source, or the URL as written when it has none (opening it then says why). */
function fileUrlName(source: string): string {
  try {
    return fileUrlPath(source);
  } catch {
    return source.replace(/[?#].*$/, '');
  }
}

export { parse };

function parseSizeArg(text: string, flag: string): number {
  const n = parseSize(text);
  if (n === undefined) throw new RnodeError(ErrorCodes.USAGE, `--${flag} "${text}" is not a size; pass bytes or a size such as 16MiB`);
  return n;
}
