// Graceful stop for the CLI's one-shot jobs (replicate, VMware replicate, recover, verify, prune, stats, check, demo
// and the --vm forms): the first SIGTERM or SIGINT aborts the job's signal, and the job stops at its next safe step
// (replicate checkpoints the chunks in flight, a VM run removes its snapshot, prune stops between deletes or phases,
// the read-only jobs between chunks or objects); a second one exits at once. Exit codes follow the shell: 128 + the
// signal's number (130 SIGINT, 143 SIGTERM). A run that fails on its own meanwhile (its store gone) ends with that
// error and its exit code. serve, export and the agent handle their own signals and exit 0: a requested stop of a
// service is a success.
import fs from 'node:fs';
import { constants } from 'node:os';
import { ErrorCodes, RnodeError, isRnodeError } from '../errors.js';

type StopSignal = 'SIGINT' | 'SIGTERM';

/** With --json, the exit on a second signal also prints its error as the command's one JSON document (main sets it). */
let stopsAsJson = false;
export function reportStopsAsJson(on: boolean): void {
  stopsAsJson = on;
}

/** The exit code of a run stopped by this signal. */
export function signalExitCode(signal: string): number {
  return 128 + (constants.signals[signal as StopSignal] ?? 15);
}

/**
 * Runs fn with an AbortSignal that the first SIGTERM/SIGINT aborts. When the job stopped for it (RNODE_CANCELLED),
 * its error is said again with `afterStop` (what was kept and how to go on; a function of the job's error when that
 * depends on how far it got) and details.signal, which the CLI turns into exit code 128 + signal.
 */
export async function stoppable<T>(
  job: string,
  afterStop: string | ((err: RnodeError) => string),
  fn: (signal: AbortSignal) => Promise<T>,
): Promise<T> {
  const controller = new AbortController();
  let received: StopSignal | undefined;
  const onSignal = (sig: StopSignal) => {
    if (received) {
      // The second signal: the user does not want to wait for the batch in flight.
      const message = `${job} stopped at once by a second ${sig}`;
      // Written synchronously: process.exit() does not wait for a pipe to take stdout's stream.
      if (stopsAsJson) fs.writeSync(1, `${JSON.stringify({ error: { code: ErrorCodes.CANCELLED, message } })}\n`);
      process.stderr.write(`rnode: ${ErrorCodes.CANCELLED}: ${message}\n`);
      process.exit(signalExitCode(sig));
    }
    received = sig;
    process.stderr.write(`rnode: ${sig}: stopping ${job} once the work in flight is done (send it again to stop at once)\n`);
    controller.abort(new RnodeError(ErrorCodes.CANCELLED, `${job} stopped by ${sig}`));
  };
  const onTerm = () => onSignal('SIGTERM');
  const onInt = () => onSignal('SIGINT');
  process.on('SIGTERM', onTerm);
  process.on('SIGINT', onInt);
  try {
    return await fn(controller.signal);
  } catch (err) {
    // Only the stop itself: a run that failed on its own before it got there (the node it writes to died, then the
    // operator pressed ^C) keeps its error, which says what is wrong, and its exit code.
    if (received && isRnodeError(err, ErrorCodes.CANCELLED)) {
      const kept = typeof afterStop === 'string' ? afterStop : afterStop(err);
      throw new RnodeError(ErrorCodes.CANCELLED, `${job} stopped by ${received}; ${kept}`, {
        cause: err,
        details: { ...err.details, signal: received },
      });
    }
    throw err;
  } finally {
    process.off('SIGTERM', onTerm);
    process.off('SIGINT', onInt);
  }
}

/**
 * p, or RNODE_CANCELLED as soon as the stop signal comes (a step that cannot be stopped itself, such as opening a
 * source, must not keep the stop waiting); what p yields after that is disposed of. Nothing was written yet:
 * details.checkpoint is none.
 */
export async function untilStopped<T>(p: Promise<T>, signal: AbortSignal, step: string, dispose: (v: T) => unknown): Promise<T> {
  if (!signal.aborted) {
    let onAbort = () => undefined as void;
    const stopped = new Promise<never>((_, reject) => {
      onAbort = () => reject(new RnodeError(ErrorCodes.CANCELLED, `stopped while ${step}`));
      signal.addEventListener('abort', onAbort, { once: true });
    });
    try {
      return await Promise.race([p, stopped]);
    } catch (err) {
      if (!signal.aborted) throw err;
    } finally {
      signal.removeEventListener('abort', onAbort);
    }
  }
  p.then(dispose, () => undefined);
  throw new RnodeError(ErrorCodes.CANCELLED, `stopped while ${step}`, { details: { checkpoint: 'none' } });
}
