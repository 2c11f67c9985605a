// setTimeout and setInterval take at most 2^31 - 1 ms (about 24.8 days): Node runs a longer delay after 1 ms, with
// only a warning. So a timeout or lease given as "very long" by a user, a URL or a peer fired at once: every
// connection dropped, every request timed out, an export's lease ended as it started, heartbeats every 1 ms.

/** The longest delay a timer keeps. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** A delay a timer keeps as given: longer ones wait the longest a timer can (for a timeout, "never" in practice). */
export function timerDelay(ms: number): number {
  return Number.isFinite(ms) ? Math.min(MAX_TIMER_MS, Math.max(0, ms)) : MAX_TIMER_MS;
}
