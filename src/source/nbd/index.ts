// NBD sources (nbd://, nbd+unix://): a qemu-nbd / nbdkit export read over node:net, with base:allocation for
// sparse full syncs and qemu dirty bitmaps for incrementals. The wire format, parser and connection are exported for tests.
export { NbdSource, openNbdSource, DEFAULT_MAX_READ, type NbdSourceOptions } from './nbd-source.js';
export { NbdConnection, type ConnectionOptions, type NbdTarget } from './connection.js';
export { negotiate, type HandshakeIo, type HandshakeRequest, type Negotiated } from './handshake.js';
export { ReplyParser, type ReplySink } from './reply-parser.js';
export { statusRuns, DEFAULT_STATUS_WINDOW, type StatusQuery } from './extents.js';
export { CoveredRanges } from './ranges.js';
export { parseNbdUrl, DEFAULT_NBD_PORT, type NbdUrl } from './url.js';
export * as nbdProtocol from './protocol.js';
