// Turns block status replies into the sorted, non-overlapping extents a BlockSource yields. The disk is asked
// about one bounded window at a time and runs are yielded as soon as they are known, so memory stays the size
// of one reply whatever the disk size.
import { ErrorCodes, RnodeError } from '../../errors.js';
import type { Extent } from '../types.js';

/** Block status of [offset, offset+length): raw descriptors, 8 bytes each (length, flags), in order. */
export type StatusQuery = (offset: number, length: number) => Promise<Buffer>;

export const DEFAULT_STATUS_WINDOW = 1024 * 1024 * 1024;

/**
 * Yields the merged runs of [0, size) whose status flags satisfy `pick`. Descriptors reaching past the window
 * are clipped (servers may round the last one up); a server that stops short is asked again from where it
 * stopped. Every descriptor has a non-zero length (checked by the connection), so each query makes progress.
 */
export async function* statusRuns(
  query: StatusQuery,
  size: number,
  pick: (flags: number) => boolean,
  window = DEFAULT_STATUS_WINDOW,
): AsyncGenerator<Extent> {
  let run: Extent | undefined;
  let pos = 0;
  while (pos < size) {
    const end = Math.min(size, pos + window);
    const d = await query(pos, end - pos);
    let at = pos;
    for (let i = 0; i + 8 <= d.length && at < end; i += 8) {
      const length = Math.min(d.readUInt32BE(i), end - at);
      if (pick(d.readUInt32BE(i + 4))) {
        if (run && run.offset + run.length === at) {
          run.length += length;
        } else {
          if (run) yield run;
          run = { offset: at, length };
        }
      }
      at += length;
    }
    if (at === pos)
      throw new RnodeError(
        ErrorCodes.SOURCE_IO,
        `the NBD server's block status at offset ${pos} described nothing; check the server, then run again`,
      );
    pos = at;
  }
  if (run) yield run;
}
