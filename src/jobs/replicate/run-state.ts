// What the parts of one replicate run share: its figures and its first failure, which stops the scan.
import type { RunStats } from './options.js';

export class RunState {
  /** Figures of the chunks settled in index order (a checkpoint holds exactly the work it covers), and bytes and packs once durable. */
  readonly stats: RunStats;
  /** Live figures for progress only (chunks still in flight included). */
  readonly live: { bytesRead: number; bytesWritten: number };
  /** The first error of any part of the run: the scan stops reading, and the run ends with it. */
  failure: unknown = undefined;
  private waiter?: () => void;

  constructor(resumed: RunStats) {
    this.stats = { ...resumed };
    this.live = { bytesRead: resumed.bytesRead, bytesWritten: resumed.bytesWritten };
  }

  get failed(): boolean {
    return this.failure !== undefined;
  }

  fail(err: unknown): void {
    this.failure ??= err;
    this.wake();
  }

  /** Durable bytes: counted in the run's figures and its progress. */
  stored(bytes: number): void {
    this.stats.bytesWritten += bytes;
    this.live.bytesWritten += bytes;
  }

  /** Resolves at the next settled chunk or failure (the reader waits here while its window is full). */
  change(): Promise<void> {
    return new Promise<void>((r) => {
      this.waiter = r;
    });
  }

  wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }
}
