// The small files a user names on the command line (tokens, certificates, keys) are read whole. A FIFO, a socket or a
// character device given there made open() or read() wait for a writer that never came: the command (or the agent's
// whole event loop) hung without a word. Opened O_NONBLOCK, such a file opens at once and is refused as what it is.
import fs from 'node:fs';

/** The most a file named for a token, certificate or config may hold: a wrong path (a disk image) is not read whole. */
const MAX_BYTES = 16 * 1024 * 1024;

/**
 * The bytes of a regular file and its stat, read through one fd (what was checked is what was read). Throws the
 * errno error of open or read, or an Error without a code whose message says what is wrong (not a regular file, too
 * large).
 */
export function readRegularFile(file: string): { data: Buffer; stat: fs.Stats } {
  const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  try {
    const stat = fs.fstatSync(fd);
    if (!stat.isFile()) throw new Error(`not a regular file (${kindOf(stat)})`);
    if (stat.size > MAX_BYTES) throw new Error(`${stat.size} bytes, more than such a file holds (${MAX_BYTES})`);
    return { data: fs.readFileSync(fd), stat };
  } finally {
    fs.closeSync(fd);
  }
}

function kindOf(st: fs.Stats): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isSocket()) return 'a socket';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  return 'not a file';
}
