// Where a replicate's time goes: per-stage sums the pipeline keeps as it runs (a few clock reads per chunk),
// so a run's result (and the bench) shows the bottleneck without a profiler.

/**
 * Seconds per stage. read and write are wall time summed over chunks in flight, so they may exceed the run's
 * wall time; hash, compress and encrypt are the codec workers' CPU time; encodeQueue is the rest of the encodes'
 * round trips (waiting for a free worker, or for a CPU); wait is wall time the reader stood still because the
 * pipeline was full, split by what it was full of.
 */
export interface StageTimes {
  read: number;
  hash: number;
  compress: number;
  encrypt: number;
  encodeQueue: number;
  write: number;
  wait: number;
  /** wait while every plaintext buffer was in reading or encoding (CPU-bound) or every object buffer in a put (store-bound). */
  waitFor: { encode: number; write: number };
}

/** What one chunk event covered, in performance.now() milliseconds: the timeline a test or a trace can check. */
export interface StageEvent {
  index: number;
  stage: 'read' | 'encode' | 'write';
  start: number;
  end: number;
}

export class StageClock {
  private readonly ms = { read: 0, hash: 0, compress: 0, encrypt: 0, encodeQueue: 0, write: 0, waitEncode: 0, waitWrite: 0 };

  constructor(private readonly onEvent?: (e: StageEvent) => void) {}

  /** Times fn as one stage of chunk index. */
  async time<T>(index: number, stage: 'read' | 'write', fn: () => Promise<T>): Promise<T> {
    const start = performance.now();
    try {
      return await fn();
    } finally {
      const end = performance.now();
      this.ms[stage] += end - start;
      this.onEvent?.({ index, stage, start, end });
    }
  }

  /** An encode's round trip [start, end], and the worker's own split of it. */
  encoded(index: number, start: number, cost: { hashMs: number; packMs: number; sealMs?: number }): void {
    const end = performance.now();
    const busy = cost.hashMs + cost.packMs + (cost.sealMs ?? 0);
    this.ms.hash += cost.hashMs;
    this.ms.compress += cost.packMs;
    this.ms.encrypt += cost.sealMs ?? 0;
    this.ms.encodeQueue += Math.max(0, end - start - busy);
    this.onEvent?.({ index, stage: 'encode', start, end });
  }

  /** Chunks a codec worker read itself (a full point's, or an incremental's scan, which also hashes): its CPU time. */
  readOnWorker(readMs: number, hashMs: number): void {
    this.ms.read += readMs;
    this.ms.hash += hashMs;
  }

  waited(on: 'encode' | 'write', ms: number): void {
    if (on === 'encode') this.ms.waitEncode += ms;
    else this.ms.waitWrite += ms;
  }

  get times(): StageTimes {
    const s = (ms: number) => Math.round(ms) / 1000;
    const m = this.ms;
    return {
      read: s(m.read),
      hash: s(m.hash),
      compress: s(m.compress),
      encrypt: s(m.encrypt),
      encodeQueue: s(m.encodeQueue),
      write: s(m.write),
      wait: s(m.waitEncode + m.waitWrite),
      waitFor: { encode: s(m.waitEncode), write: s(m.waitWrite) },
    };
  }
}
